"""Starts the GCP stand-ins for one issuer (STS, IAM Credentials, storage: one port each, as
Google's hosts are distinct) and describes them for the sidecar, the job and the tests.

A job's unmodified google-cloud-storage (>= 2.6) reaches the storage stand-in, still sending
the credentials from google.auth.default(), through `API_ENDPOINT_OVERRIDE` (see `job_env`);
`STORAGE_EMULATOR_HOST` would make `storage.Client()` anonymous instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from credsidecar.sandbox.gcp.gcs import GcsState, create_gcs_app
from credsidecar.sandbox.gcp.gcs_store import OBJECT_ADMIN, OBJECT_VIEWER, Bucket
from credsidecar.sandbox.gcp.iam import GcpIamState, create_gcp_iam_app
from credsidecar.sandbox.gcp.node_metadata import NodeMetadata, create_node_metadata_app
from credsidecar.sandbox.gcp.state import GcpState
from credsidecar.sandbox.gcp.sts import FEDERATED_LIFETIME, GcpProvider, GcpStsState
from credsidecar.sandbox.gcp.sts import create_gcp_sts_app as _sts_app
from credsidecar.sandbox.seed import (
    BUCKETS,
    GCP_AUDIENCE,
    GCP_NODE_SERVICE_ACCOUNT,
    GCP_PROJECT_ID,
    GCP_PROJECT_NUMBER,
    GCP_PROVIDER_RESOURCE,
    GCP_SERVICE_ACCOUNTS,
    REFERENCE_BODY,
    REFERENCE_KEY,
    gcp_principal,
)
from credsidecar.sandbox.serving import serve_app

__all__ = ["GcpSandbox", "seed_buckets", "start_gcp_sandbox"]


def seed_buckets(now: float) -> dict[str, Bucket]:
    """alice-data and bob-data read-write for their owner, shared-refs read-only for both.

    Each binding is given to the service account and to the federated principal of its
    subjects, so that tokens used without impersonation are authorized alike."""
    buckets = {name: Bucket(name, {}, now) for name in BUCKETS}
    for account in (*GCP_SERVICE_ACCOUNTS, GCP_NODE_SERVICE_ACCOUNT):
        members = [f"serviceAccount:{account.email}", *map(gcp_principal, account.subjects)]
        for role, names in ((OBJECT_ADMIN, account.read_write), (OBJECT_VIEWER, account.read_only)):
            for name in names:
                buckets[name].bindings.update(dict.fromkeys(members, role))
    buckets["shared-refs"].put(REFERENCE_KEY, REFERENCE_BODY, "application/octet-stream", now)
    return buckets


@dataclass
class GcpSandbox:
    sts_url: str  # the token endpoint itself, like https://sts.googleapis.com/v1/token
    iam_url: str  # like https://iamcredentials.googleapis.com
    storage_url: str  # like https://storage.googleapis.com
    state: GcpState
    _runners: list[web.AppRunner] = field(repr=False)
    node_metadata_url: str = ""  # the node's own metadata server (node_metadata.py), plain HTTP

    @property
    def id_token_certs_url(self) -> str:
        return f"{self.iam_url}/oauth2/v3/certs"

    def job_env(self) -> dict[str, str]:
        """What a job needs, beyond the metadata server, to reach the sandbox storage."""
        return {"API_ENDPOINT_OVERRIDE": self.storage_url}

    def describe(self) -> dict[str, Any]:
        return {
            "gcp": {
                "sts_url": self.sts_url,
                "iam_url": self.iam_url,
                "storage_url": self.storage_url,
                "id_token_certs_url": self.id_token_certs_url,
                "project_id": GCP_PROJECT_ID,
                "project_number": GCP_PROJECT_NUMBER,
                "audience": GCP_AUDIENCE,
                "service_accounts": {a.email.split("@")[0]: a.email for a in GCP_SERVICE_ACCOUNTS},
                "node_metadata_url": self.node_metadata_url,
                "node_service_account": GCP_NODE_SERVICE_ACCOUNT.email,
                "job_env": self.job_env(),
                "buckets": {
                    "alice-data": "alice: read-write",
                    "bob-data": "bob: read-write",
                    "shared-refs": f"alice and bob: read-only; holds {REFERENCE_KEY}",
                },
            }
        }

    async def stop(self) -> None:
        for runner in reversed(self._runners):
            await runner.cleanup()


async def start_gcp_sandbox(
    issuer_url: str,
    *,
    clock: Callable[[], float] = time.time,
    federated_lifetime: int = FEDERATED_LIFETIME,
) -> GcpSandbox:
    shared = GcpState(clock=clock)
    provider = GcpProvider(
        resource=GCP_PROVIDER_RESOURCE,
        issuer=issuer_url.rstrip("/"),
        allowed_subjects=tuple(s for a in GCP_SERVICE_ACCOUNTS for s in a.subjects),
    )
    sts = GcpStsState(shared, {GCP_AUDIENCE: provider}, lifetime=federated_lifetime)
    # The node's account holds roles/iam.serviceAccountTokenCreator on alice's and bob's.
    node = GCP_NODE_SERVICE_ACCOUNT.email
    members = {
        a.email: frozenset({*map(gcp_principal, a.subjects), node}) for a in GCP_SERVICE_ACCOUNTS
    }
    gcs = GcsState(shared, seed_buckets(clock()), GCP_PROJECT_NUMBER)
    runners: list[web.AppRunner] = []
    try:
        sts_base = await serve_app(_sts_app(sts), runners)
        iam_url = await serve_app(create_gcp_iam_app(GcpIamState(shared, members)), runners)
        storage_url = await serve_app(create_gcs_app(gcs), runners)
        node_url = await serve_app(create_node_metadata_app(NodeMetadata(shared, node)), runners)
    except BaseException:
        for runner in runners:
            await runner.cleanup()
        raise
    return GcpSandbox(f"{sts_base}/v1/token", iam_url, storage_url, shared, runners, node_url)
