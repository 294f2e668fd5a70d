"""The sandbox's seed data: users, buckets, roles and who may assume them.

The example policy (issuer/example.py) is generated from this data: alice and bob each own a
bucket and share a read-only reference bucket, in AWS (roles), GCP (service accounts) and Azure
(user-assigned managed identities and blob containers) alike. Each identity names the users the
issuer grants it; one held by every member of the genomics workspace is granted to the workspace.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ACCOUNT",
    "AWS_NODE_IDENTITIES",
    "AWS_NODE_ROLE",
    "AWS_NODE_SESSION",
    "AZURE_IDENTITIES",
    "AZURE_NODE",
    "AZURE_NODE_IDENTITIES",
    "AZURE_RESOURCE_GROUP",
    "AZURE_STORAGE_ACCOUNT",
    "AZURE_SUBSCRIPTION_ID",
    "AZURE_TENANT_ID",
    "BUCKETS",
    "GCP_AUDIENCE",
    "GCP_NODE_IDENTITIES",
    "GCP_NODE_SERVICE_ACCOUNT",
    "GCP_POOL_RESOURCE",
    "GCP_PROJECT_ID",
    "GCP_PROJECT_NUMBER",
    "GCP_PROVIDER_RESOURCE",
    "GCP_SERVICE_ACCOUNTS",
    "REFERENCE_BODY",
    "REFERENCE_KEY",
    "ROLES",
    "USERS",
    "WORKSPACE",
    "WORKSPACE_MEMBERS",
    "SandboxAwsNodeIdentity",
    "SandboxGcpNodeIdentity",
    "SandboxManagedIdentity",
    "SandboxNodeIdentity",
    "SandboxRole",
    "SandboxServiceAccount",
    "gcp_principal",
]

ACCOUNT = "123456789012"  # moto's default account
REFERENCE_KEY = "refs/genome.fa"
REFERENCE_BODY = b">chr1 sandbox reference\nACGTACGTACGTACGT\n"
BUCKETS = ("alice-data", "bob-data", "shared-refs")
USERS = ("alice", "bob")  # the users with data (the example policy adds carol, with no grants)
WORKSPACE = "genomics"
WORKSPACE_MEMBERS = USERS


@dataclass(frozen=True)
class SandboxRole:
    name: str
    read_write: tuple[str, ...]
    read_only: tuple[str, ...]
    subjects: tuple[str, ...]  # `sub` values the web-identity trust policy admits
    session_tags: tuple[tuple[str, str], ...] = ()  # the example policy's tags for its sessions

    @property
    def arn(self) -> str:
        return f"arn:aws:iam::{ACCOUNT}:role/{self.name}"


ROLES = (
    SandboxRole("alice-data", ("alice-data",), ("shared-refs",), ("alice",)),
    SandboxRole("bob-data", ("bob-data",), ("shared-refs",), ("bob",)),
    SandboxRole(
        "genomics-readonly", (), ("shared-refs",), ("alice", "bob"), (("cost-center", "genomics"),)
    ),
)


# The node the sidecar runs on (an EC2 instance) has an instance profile whose role,
# sandbox-node, reads shared-refs and may assume alice-data and bob-data (their trust policies
# admit its session); the node's IMDS stand-in (sandbox/aws/node_imds.py) serves that session's
# credentials. The issuer's policy (`source = "node"`) decides which user gets which.
AWS_NODE_ROLE = SandboxRole("sandbox-node", (), ("shared-refs",), ())
AWS_NODE_SESSION = "i-0sandboxnode"  # the instance ID, as EC2 names the profile's session
# A session policy the example narrows node-alice with: read and list only.
AWS_NODE_READ_ONLY = (
    '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":'
    '["s3:ListBucket","s3:GetObject","s3:GetBucketLocation"],"Resource":"*"}]}'
)


@dataclass(frozen=True)
class SandboxAwsNodeIdentity:
    name: str
    role_arn: str | None  # assumed from the instance profile; None: the profile itself
    session_policy: str | None
    users: tuple[str, ...]  # who the example policy grants it


# The example policy grants node-alice (alice-data assumed from the node, read-only) to alice
# alone; node-bob and the instance profile itself are granted to nobody.
AWS_NODE_IDENTITIES = (
    SandboxAwsNodeIdentity("node", None, None, ()),
    SandboxAwsNodeIdentity("node-alice", ROLES[0].arn, AWS_NODE_READ_ONLY, ("alice",)),
    SandboxAwsNodeIdentity("node-bob", ROLES[1].arn, None, ()),
)


# GCP: one workload identity pool and OIDC provider trusting the issuer; the provider's resource
# name (with "//iam.googleapis.com/" in front) is the audience the example policy gives alice/bob.
GCP_PROJECT_ID = "sandbox-project"
GCP_PROJECT_NUMBER = "000000000000"
GCP_POOL_RESOURCE = (
    f"projects/{GCP_PROJECT_NUMBER}/locations/global/workloadIdentityPools/credsidecar"
)
GCP_PROVIDER_RESOURCE = f"{GCP_POOL_RESOURCE}/providers/sandbox"
GCP_AUDIENCE = f"//iam.googleapis.com/{GCP_PROVIDER_RESOURCE}"


def gcp_principal(subject: str) -> str:
    """The IAM principal of a federated identity (`google.subject` = the token's `sub`)."""
    return f"principal://iam.googleapis.com/{GCP_POOL_RESOURCE}/subject/{subject}"


@dataclass(frozen=True)
class SandboxServiceAccount:
    email: str
    read_write: tuple[str, ...]
    read_only: tuple[str, ...]
    subjects: tuple[str, ...]  # federated `sub` values with roles/iam.workloadIdentityUser on it


GCP_SERVICE_ACCOUNTS = (
    SandboxServiceAccount(
        f"alice@{GCP_PROJECT_ID}.iam.gserviceaccount.com", ("alice-data",), ("shared-refs",),
        ("alice",),
    ),
    SandboxServiceAccount(
        f"bob@{GCP_PROJECT_ID}.iam.gserviceaccount.com", ("bob-data",), ("shared-refs",),
        ("bob",),
    ),
)  # fmt: skip

# The node the sidecar runs on (a GCE VM, a GKE node) runs as this service account, served by
# its metadata server (sandbox/gcp/node_metadata.py). It may read shared-refs itself, and holds
# roles/iam.serviceAccountTokenCreator on alice's and bob's accounts, so it can impersonate
# either: the issuer's policy (`source = "node"`) decides which user gets which.
GCP_NODE_SERVICE_ACCOUNT = SandboxServiceAccount(
    f"sandbox-node@{GCP_PROJECT_ID}.iam.gserviceaccount.com", (), ("shared-refs",), ()
)


@dataclass(frozen=True)
class SandboxGcpNodeIdentity:
    name: str
    service_account: str | None  # impersonated with the node's account; None: the node's own
    users: tuple[str, ...]  # who the example policy grants it


# The example policy grants node-alice (the node impersonating alice's account) to alice alone;
# node-bob and the node's own account are granted to nobody.
GCP_NODE_IDENTITIES = (
    SandboxGcpNodeIdentity("node", None, ()),
    SandboxGcpNodeIdentity("node-alice", GCP_SERVICE_ACCOUNTS[0].email, ("alice",)),
    SandboxGcpNodeIdentity("node-bob", GCP_SERVICE_ACCOUNTS[1].email, ()),
)


# Azure: one tenant with a user-assigned managed identity per user (and one for the genomics
# workspace), each with one federated credential (issuer = the issuer URL, subject
# "credsidecar:azure:NAME", audience api://AzureADTokenExchange) and roles on blob containers
# named like the buckets, in one storage account.
AZURE_TENANT_ID = "00000000-0000-4000-8000-000000000001"
AZURE_SUBSCRIPTION_ID = "00000000-0000-4000-8000-000000000002"
AZURE_RESOURCE_GROUP = "credsidecar-sandbox"
AZURE_STORAGE_ACCOUNT = "sandbox"


@dataclass(frozen=True)
class SandboxManagedIdentity:
    name: str
    client_id: str
    object_id: str  # the service principal's object id: `oid` (and `sub`) of its tokens
    read_write: tuple[str, ...]  # containers: Storage Blob Data Contributor
    read_only: tuple[str, ...]  # containers: Storage Blob Data Reader
    users: tuple[str, ...]  # who the example policy grants it (Entra trusts the issuer's choice)

    @property
    def subject(self) -> str:
        """The subject of its federated credential (the policy's default for the identity)."""
        return f"credsidecar:azure:{self.name}"

    @property
    def resource_id(self) -> str:
        return (
            f"/subscriptions/{AZURE_SUBSCRIPTION_ID}/resourceGroups/{AZURE_RESOURCE_GROUP}"
            f"/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{self.name}"
        )


AZURE_IDENTITIES = (
    SandboxManagedIdentity(
        "alice", "00000000-0000-4000-8000-0000000000a2", "00000000-0000-4000-8000-0000000000b2",
        ("alice-data",), ("shared-refs",), ("alice",),
    ),
    SandboxManagedIdentity(
        "bob", "00000000-0000-4000-8000-0000000000a3", "00000000-0000-4000-8000-0000000000b3",
        ("bob-data",), ("shared-refs",), ("bob",),
    ),
    SandboxManagedIdentity(
        "genomics-pipelines", "00000000-0000-4000-8000-0000000000a1",
        "00000000-0000-4000-8000-0000000000b1", (), ("shared-refs",), WORKSPACE_MEMBERS,
    ),
)  # fmt: skip


# The node the sidecar runs on (a VM, or a Batch pool's node) holds managed identities of its
# own, served by its IMDS (sandbox/azure/node_imds.py): its system-assigned identity and two
# user-assigned ones attached to it. They have no federated credential: only the node's IMDS
# issues their tokens, and the issuer's policy (`source = "node"`) decides who gets which.
AZURE_NODE = "sandbox-node"


@dataclass(frozen=True)
class SandboxNodeIdentity(SandboxManagedIdentity):
    system_assigned: bool = False

    @property
    def resource_id(self) -> str:
        if self.system_assigned:  # the node's own resource: IMDS names it by no selector
            return (
                f"/subscriptions/{AZURE_SUBSCRIPTION_ID}/resourceGroups/{AZURE_RESOURCE_GROUP}"
                f"/providers/Microsoft.Compute/virtualMachines/{AZURE_NODE}"
            )
        return super().resource_id


# The example policy grants node-alice to alice alone; node-bob and the system-assigned identity
# are held by the node and granted to nobody (every job on the node would share the
# system-assigned one: grant it deliberately, e.g. to one workspace's pipelines).
AZURE_NODE_IDENTITIES = (
    SandboxNodeIdentity(
        "node", "00000000-0000-4000-8000-0000000000c1", "00000000-0000-4000-8000-0000000000d1",
        (), ("shared-refs",), (), system_assigned=True,
    ),
    SandboxNodeIdentity(
        "node-alice", "00000000-0000-4000-8000-0000000000c2",
        "00000000-0000-4000-8000-0000000000d2", ("alice-data",), ("shared-refs",), ("alice",),
    ),
    SandboxNodeIdentity(
        "node-bob", "00000000-0000-4000-8000-0000000000c3",
        "00000000-0000-4000-8000-0000000000d3", ("bob-data",), ("shared-refs",), (),
    ),
)  # fmt: skip
