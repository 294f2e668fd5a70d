"""Starts the Azure stand-ins for one issuer (Entra, Blob storage and Resource Manager, each
on its own HTTPS port, as login.microsoftonline.com, ACCOUNT.blob.core.windows.net and
management.azure.com are distinct hosts, and the node's own IMDS over plain HTTP) and describes
them for the sidecar, the job and the tests.

HTTPS uses a CA generated at start (local_ca.py): `job_env()` names the variables that make
tools trust it. A job's azure-storage-blob reaches the Blob stand-in only when given its URL:
`BlobServiceClient(account_url=blob_url, credential=...)`; no environment variable sets the
account URL for a token credential (the SDK reads none; a connection string's BlobEndpoint
would also work, but tools treat a connection string as key or SAS authentication).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from joserfc.jwk import RSAKey

from credsidecar.sandbox.azure.arm import CLOUD_NAME, create_arm_app
from credsidecar.sandbox.azure.blob import create_blob_app
from credsidecar.sandbox.azure.blob_auth import BlobState
from credsidecar.sandbox.azure.blob_store import CONTRIBUTOR, READER, Container
from credsidecar.sandbox.azure.entra import create_entra_app
from credsidecar.sandbox.azure.local_ca import LocalCa, create_local_ca
from credsidecar.sandbox.azure.node_imds import NodeImds, create_node_imds_app
from credsidecar.sandbox.azure.state import (
    ACCESS_TOKEN_LIFETIME,
    ASSERTION_AUDIENCE,
    AzureState,
    EntraApp,
    FederatedCredential,
)
from credsidecar.sandbox.seed import (
    AZURE_IDENTITIES,
    AZURE_NODE_IDENTITIES,
    AZURE_STORAGE_ACCOUNT,
    AZURE_TENANT_ID,
    BUCKETS,
    REFERENCE_BODY,
    REFERENCE_KEY,
)
from credsidecar.sandbox.serving import serve_app

__all__ = ["AzureSandbox", "seed_apps", "seed_containers", "start_azure_sandbox"]


def seed_apps(issuer_url: str) -> dict[str, EntraApp]:
    """The tenant's managed identities, by client id, each trusting its subject at the issuer."""
    return {
        identity.client_id: EntraApp(
            identity.name,
            identity.client_id,
            identity.object_id,
            (FederatedCredential(issuer_url.rstrip("/"), identity.subject, ASSERTION_AUDIENCE),),
            identity.resource_id,
        )
        for identity in AZURE_IDENTITIES
    }


def seed_containers(now: float) -> dict[str, Container]:
    """alice-data and bob-data read-write for their owner; shared-refs read-only for all."""
    containers = {name: Container(name, {}, now) for name in BUCKETS}
    for identity in (*AZURE_IDENTITIES, *AZURE_NODE_IDENTITIES):
        for name in identity.read_only:
            containers[name].roles.setdefault(identity.object_id, READER)
        for name in identity.read_write:
            containers[name].roles[identity.object_id] = CONTRIBUTOR
    containers["shared-refs"].put(REFERENCE_KEY, REFERENCE_BODY, "application/octet-stream", now)
    return containers


@dataclass
class AzureSandbox:
    authority_url: str  # like https://login.microsoftonline.com
    blob_url: str  # the account URL, path-style: https://127.0.0.1:PORT/sandbox
    tenant_id: str
    ca: LocalCa
    state: AzureState
    blob: BlobState
    _runners: list[web.AppRunner] = field(repr=False)
    node_imds_url: str = ""  # the node's own IMDS (node_imds.py), plain HTTP like Azure's

    @property
    def ca_file(self) -> str:
        return str(self.ca.ca_file)

    @property
    def ca_bundle(self) -> str:
        return str(self.ca.bundle_file)

    @property
    def arm_url(self) -> str:
        return self.state.arm_url

    @property
    def cloud_metadata_url(self) -> str:
        return f"{self.arm_url}/metadata/endpoints?api-version=2022-09-01"

    @property
    def token_url(self) -> str:
        return f"{self.authority_url}/{self.tenant_id}/oauth2/v2.0/token"

    @property
    def identities(self) -> dict[str, dict[str, str]]:
        return {
            i.name: {
                "client_id": i.client_id,
                "object_id": i.object_id,
                "resource_id": i.resource_id,
                "subject": i.subject,
            }
            for i in AZURE_IDENTITIES
        }

    def job_env(self) -> dict[str, str]:
        """What tools in a job need to trust the sandbox's HTTPS.

        The bundle is this machine's roots plus the sandbox CA, because SSL_CERT_FILE and
        REQUESTS_CA_BUNDLE replace the default roots rather than add to them:
        - SSL_CERT_FILE: OpenSSL's default, so Python's ssl (aiohttp, urllib, httpx), Go's
          crypto/x509 on Linux, Ruby, PHP, .NET on Linux, curl and Rust's openssl/native-tls;
        - REQUESTS_CA_BUNDLE: Python requests, so azure-core, MSAL and the az CLI;
        - CURL_CA_BUNDLE: curl (and requests, when REQUESTS_CA_BUNDLE is unset);
        - NODE_EXTRA_CA_CERTS: Node adds this one file (the CA alone) to its built-in roots;
        and ARM_CLOUD_METADATA_URL, from which the az CLI reads its clouds: the sandbox's
        (named CredsidecarSandbox) has the ARM stand-in as its resource manager.
        Java reads none of these: import ca.pem into a trust store (`keytool -importcert
        -file ca.pem -keystore FILE`, starting from a copy of the JDK's cacerts) and pass
        `-Djavax.net.ssl.trustStore=FILE` (e.g. in JAVA_TOOL_OPTIONS).
        """
        return {
            "SSL_CERT_FILE": self.ca_bundle,
            "REQUESTS_CA_BUNDLE": self.ca_bundle,
            "CURL_CA_BUNDLE": self.ca_bundle,
            "NODE_EXTRA_CA_CERTS": self.ca_file,
            "ARM_CLOUD_METADATA_URL": self.cloud_metadata_url,
        }

    def describe(self) -> dict[str, Any]:
        return {
            "azure": {
                "authority_url": self.authority_url,
                "tenant_id": self.tenant_id,
                "token_url": self.token_url,
                "blob_url": self.blob_url,
                "arm_url": self.arm_url,
                "az_cloud": CLOUD_NAME,
                "storage_account": AZURE_STORAGE_ACCOUNT,
                "ca_file": self.ca_file,
                "ca_bundle": self.ca_bundle,
                "identities": self.identities,
                # The node's own IMDS: the sidecar's --azure-node-imds-url; GET
                # /_sandbox/requests there lists what it was asked for.
                "node_imds_url": self.node_imds_url,
                "node_identities": {
                    i.name: {
                        "client_id": i.client_id,
                        "object_id": i.object_id,
                        "resource_id": i.resource_id,
                        "system_assigned": i.system_assigned,
                    }
                    for i in AZURE_NODE_IDENTITIES
                },
                "job_env": self.job_env(),
                "containers": {
                    "alice-data": "alice: read-write",
                    "bob-data": "bob: read-write",
                    "shared-refs": f"alice, bob, genomics-pipelines: read-only; holds "
                    f"{REFERENCE_KEY}",
                },
            }
        }

    async def stop(self) -> None:
        for runner in reversed(self._runners):
            # A TLS connection closes gracefully only once the client answers the server's
            # close_notify (asyncio waits up to 30 s), which an SDK's idle keep-alive
            # connection never does: cut them instead.
            for handler in runner.server.connections if runner.server else ():
                if handler.transport is not None:
                    handler.transport.abort()
            await runner.cleanup()


async def start_azure_sandbox(
    issuer_url: str,
    directory: Path,
    *,
    clock: Callable[[], float] = time.time,
    token_lifetime: int = ACCESS_TOKEN_LIFETIME,
) -> AzureSandbox:
    """Serves Entra and Blob storage over HTTPS; the CA and certificate go to `directory`."""
    ca = await asyncio.to_thread(create_local_ca, directory)
    context = await asyncio.to_thread(ca.server_context)
    params: Any = {"use": "sig", "alg": "RS256"}
    key = await asyncio.to_thread(RSAKey.generate_key, 2048, params, True, True)
    state = AzureState(AZURE_TENANT_ID, seed_apps(issuer_url), key, clock, token_lifetime)
    blob = BlobState(state, AZURE_STORAGE_ACCOUNT, seed_containers(clock()))
    runners: list[web.AppRunner] = []
    try:
        state.authority_url = await serve_app(create_entra_app(state), runners, context)
        blob_base = await serve_app(create_blob_app(blob), runners, context)
        state.arm_url = await serve_app(create_arm_app(blob), runners, context)
        node = NodeImds.holding(state, AZURE_NODE_IDENTITIES)
        node_imds_url = await serve_app(create_node_imds_app(node), runners)
    except BaseException:
        for runner in runners:
            await runner.cleanup()
        raise
    blob_url = f"{blob_base}/{AZURE_STORAGE_ACCOUNT}"
    return AzureSandbox(state.authority_url, blob_url, AZURE_TENANT_ID, ca, state, blob, runners,
                        node_imds_url)  # fmt: skip
