"""The job's environment: what to export so SDKs find the sidecar, and what must not survive.

Static keys and profiles win over the sidecar in every SDK's credential chain, so they are
unset; AWS config files are pointed at /dev/null for the same reason (a node's
~/.aws/credentials would otherwise come first).
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence

# Re-exported for callers that write the job's files; private_files.py owns the safety rules.
from credsidecar.private_files import write_private_atomic

__all__ = [
    "AWS_UNSET", "AZURE_UNSET", "ENV_FILE_NAME", "GCP_UNSET", "render", "write_private_atomic",
]  # fmt: skip

# The file in the run directory that `credsidecar env` prints; here (not in daemon.py) so that
# command, run at the start of every job, imports no server code.
ENV_FILE_NAME = "env"

AWS_UNSET = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
    "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CREDENTIAL_EXPIRATION", "AWS_EC2_METADATA_DISABLED", "AWS_EC2_METADATA_V1_DISABLED",
)  # fmt: skip


GCP_UNSET = (
    "GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_OAUTH_ACCESS_TOKEN",
    "CLOUDSDK_AUTH_ACCESS_TOKEN_FILE", "CLOUDSDK_AUTH_CREDENTIAL_FILE_OVERRIDE", "NO_GCE_CHECK",
    "GCE_METADATA_ROOT",
    # google-cloud-storage turns anonymous when this is set (API_ENDPOINT_OVERRIDE is the way).
    "STORAGE_EMULATOR_HOST",
)  # fmt: skip


AZURE_UNSET = (
    # Each would win over managed identity in DefaultAzureCredential's chain or in az.
    "AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PATH", "AZURE_CLIENT_CERTIFICATE_PASSWORD",
    "AZURE_USERNAME", "AZURE_PASSWORD", "AZURE_FEDERATED_TOKEN_FILE", "AZURE_CLIENT_ID",
    "AZURE_TENANT_ID", "MSI_ENDPOINT", "MSI_SECRET", "IDENTITY_SERVER_THUMBPRINT",
    "AZURE_TOKEN_CREDENTIALS",
)  # fmt: skip


def render(exports: Mapping[str, str], unsets: Sequence[str]) -> str:
    """POSIX shell lines, safe to `source` or `eval`."""
    lines = [f"unset {name}" for name in unsets]
    lines += [f"export {name}={shlex.quote(value)}" for name, value in exports.items()]
    return "\n".join(lines) + "\n"
