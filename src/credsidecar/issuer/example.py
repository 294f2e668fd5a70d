"""A working example configuration: what `credsidecar dev` starts and the README shows."""

from __future__ import annotations

import socket
from pathlib import Path

from credsidecar.issuer.config import new_api_key

__all__ = ["EXAMPLE_POLICY", "free_port", "write_example"]

EXAMPLE_POLICY = """\
# Identity policy: users, workspaces, identities per provider, and grants.

[providers.aws]
audience = "sts.amazonaws.com"

[[users]]
id = "alice"
email = "alice@example.org"
name = "Alice"

[[users]]
id = "bob"
email = "bob@example.org"
name = "Bob"

[[users]]
id = "carol"
email = "carol@example.org"
name = "Carol (no grants yet)"
owner = true                     # manages HPC clusters (credsidecar hpc cluster ...)

[[workspaces]]
id = "genomics"
members = ["alice", "bob"]

[identities.aws.alice-data]
role_arn = "arn:aws:iam::123456789012:role/alice-data"

[identities.aws.bob-data]
role_arn = "arn:aws:iam::123456789012:role/bob-data"

[identities.aws.genomics-readonly]
role_arn = "arn:aws:iam::123456789012:role/genomics-readonly"
session_tags = { cost-center = "genomics" }

[identities.gcp.alice]
audience = "//iam.googleapis.com/projects/000000000000/locations/global/workloadIdentityPools/\
credsidecar/providers/sandbox"
service_account = "alice@sandbox-project.iam.gserviceaccount.com"
project_id = "sandbox-project"
project_number = "000000000000"

[identities.gcp.bob]
audience = "//iam.googleapis.com/projects/000000000000/locations/global/workloadIdentityPools/\
credsidecar/providers/sandbox"
service_account = "bob@sandbox-project.iam.gserviceaccount.com"
project_id = "sandbox-project"
project_number = "000000000000"

# Azure: user-assigned managed identities, each with one federated credential whose subject is
# "credsidecar:azure:NAME" (the default), so Entra tells them apart; the issuer decides who may
# use which.
[identities.azure.alice]
tenant_id = "00000000-0000-4000-8000-000000000001"
client_id = "00000000-0000-4000-8000-0000000000a2"
object_id = "00000000-0000-4000-8000-0000000000b2"
resource_id = "/subscriptions/00000000-0000-4000-8000-000000000002/\
resourceGroups/credsidecar-sandbox/providers/Microsoft.ManagedIdentity/\
userAssignedIdentities/alice"

[identities.azure.bob]
tenant_id = "00000000-0000-4000-8000-000000000001"
client_id = "00000000-0000-4000-8000-0000000000a3"
object_id = "00000000-0000-4000-8000-0000000000b3"
resource_id = "/subscriptions/00000000-0000-4000-8000-000000000002/\
resourceGroups/credsidecar-sandbox/providers/Microsoft.ManagedIdentity/\
userAssignedIdentities/bob"

[identities.azure.genomics-pipelines]
tenant_id = "00000000-0000-4000-8000-000000000001"
client_id = "00000000-0000-4000-8000-0000000000a1"
object_id = "00000000-0000-4000-8000-0000000000b1"
resource_id = "/subscriptions/00000000-0000-4000-8000-000000000002/\
resourceGroups/credsidecar-sandbox/providers/Microsoft.ManagedIdentity/\
userAssignedIdentities/genomics-pipelines"

[identities.hpc.sandbox-cluster]
scheduler = "slurm"
host = "127.0.0.1"
port = 2222
usernames = { alice = "alice", bob = "bob" }

[[grants]]
users = ["alice"]
provider = "aws"
identities = ["alice-data"]

[[grants]]
users = ["bob"]
provider = "aws"
identities = ["bob-data"]

[[grants]]
workspaces = ["genomics"]
provider = "aws"
identities = ["genomics-readonly"]

[[grants]]
users = ["alice"]
provider = "gcp"
identities = ["alice"]

[[grants]]
users = ["bob"]
provider = "gcp"
identities = ["bob"]

[[grants]]
users = ["alice"]
provider = "azure"
identities = ["alice"]

[[grants]]
users = ["bob"]
provider = "azure"
identities = ["bob"]

[[grants]]
workspaces = ["genomics"]
provider = "azure"
identities = ["genomics-pipelines"]

[[grants]]
workspaces = ["genomics"]
provider = "hpc"
identities = ["sandbox-cluster"]
"""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def write_example(directory: Path, port: int) -> tuple[Path, str]:
    """Writes issuer.toml and policy.toml; returns the config path and a fresh platform API key."""
    directory.mkdir(parents=True, exist_ok=True)
    key, digest = new_api_key()
    (directory / "policy.toml").write_text(EXAMPLE_POLICY, encoding="utf-8")
    config = directory / "issuer.toml"
    config.write_text(
        f"""\
issuer_url = "http://127.0.0.1:{port}"
listen = "127.0.0.1:{port}"
state_dir = "state"
policy = "policy.toml"
audit_log = "audit.jsonl"

[[platform_keys]]
name = "dev-platform"
sha256 = "{digest}"
""",
        encoding="utf-8",
    )
    return config, key
