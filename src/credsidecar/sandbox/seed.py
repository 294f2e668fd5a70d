"""The sandbox's seed data: users, buckets, roles and who may assume them.

Matches the example policy (issuer/example.py): alice and bob each own a bucket and share a
read-only reference bucket.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ACCOUNT", "BUCKETS", "REFERENCE_BODY", "REFERENCE_KEY", "ROLES", "SandboxRole"]

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
