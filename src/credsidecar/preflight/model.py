"""What preflight checks and what it finds: the types every preflight module shares.

A `Target` is one path a run will use with the access it needs; a `Verdict` is what one check of
one target with one cloud identity found. Checks (aws.py, gcp.py, azure.py, hpc.py) turn a target
and a credential into a verdict; report.py turns verdicts into the table, the sentences and JSON.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

__all__ = ["Access", "CloudEndpoints", "Outcome", "Target", "Verdict"]


class Access(enum.StrEnum):
    READ = "read"
    WRITE = "write"
    DELETE = "delete"


class Outcome(enum.StrEnum):
    OK = "ok"
    DENIED = "denied"  # the identity lacks a permission: `Verdict.missing` names it
    NOT_FOUND = "not found"  # bucket / container / cluster missing
    UNREACHABLE = "not reachable"  # the cloud's API did not answer
    NO_CREDENTIALS = "credentials unavailable"  # the identity's credential could not be had


@dataclass(frozen=True)
class Target:
    uri: str  # as the user wrote it
    cloud: str  # "aws" | "gcp" | "azure" | "hpc"
    location: str  # S3/GCS bucket, Azure storage account, HPC cluster
    container: str | None  # Azure blob container; None elsewhere
    prefix: str  # key / object / blob prefix, or the HPC path; "" for the whole bucket
    access: frozenset[Access]


@dataclass(frozen=True)
class Verdict:
    target: Target
    outcome: Outcome
    identity: str  # the cloud identity checked: role ARN, service account, client id, user@cluster
    missing: tuple[str, ...] = ()  # exact permissions missing, in the cloud's own names
    detail: str = ""  # the cloud's words (error code and message), never a secret
    unverified: tuple[Access, ...] = ()  # access not checked (e.g. write with --no-write-probe)
    alternatives: tuple[str, ...] = field(default=())  # other granted identities that would pass


@dataclass(frozen=True)
class CloudEndpoints:
    """Where the storage APIs are: the real clouds unless overridden (sandbox, private links)."""

    s3_url: str | None = None  # None: the AWS SDK's default endpoint for the region
    aws_region: str = "us-east-1"
    gcs_url: str = "https://storage.googleapis.com"
    # None: https://ACCOUNT.blob.core.windows.net; else the URL of the (one) storage account
    # served there, e.g. the sandbox's https://127.0.0.1:PORT/sandbox
    azure_blob_url: str | None = None
    ca_file: str | None = None  # extra CA bundle to trust (the sandbox's local CA)
