"""The sandbox's seed data: users, buckets, roles and who may assume them.

Matches the example policy (issuer/example.py): alice and bob each own a bucket and share a
read-only reference bucket, in AWS (roles) and in GCP (service accounts) alike.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ACCOUNT",
    "BUCKETS",
    "GCP_AUDIENCE",
    "GCP_POOL_RESOURCE",
    "GCP_PROJECT_ID",
    "GCP_PROJECT_NUMBER",
    "GCP_PROVIDER_RESOURCE",
    "GCP_SERVICE_ACCOUNTS",
    "REFERENCE_BODY",
    "REFERENCE_KEY",
    "ROLES",
    "SandboxRole",
    "SandboxServiceAccount",
    "gcp_principal",
]

ACCOUNT = "123456789012"  # moto's default account
REFERENCE_KEY = "refs/genome.fa"
REFERENCE_BODY = b">chr1 sandbox reference\nACGTACGTACGTACGT\n"
BUCKETS = ("alice-data", "bob-data", "shared-refs")


@dataclass(frozen=True)
class SandboxRole:
    name: str
    read_write: tuple[str, ...]
    read_only: tuple[str, ...]
    subjects: tuple[str, ...]  # `sub` values the web-identity trust policy admits

    @property
    def arn(self) -> str:
        return f"arn:aws:iam::{ACCOUNT}:role/{self.name}"


ROLES = (
    SandboxRole("alice-data", ("alice-data",), ("shared-refs",), ("alice",)),
    SandboxRole("bob-data", ("bob-data",), ("shared-refs",), ("bob",)),
    SandboxRole("genomics-readonly", (), ("shared-refs",), ("alice", "bob")),
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
