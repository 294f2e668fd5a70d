"""Azure: the node's own managed identities, from the node's IMDS (`source = "node"`).

    GET {node IMDS}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=R
        [&client_id=C | &mi_res_id=ID]          Metadata: true
      --> {"access_token", "expires_in", "expires_on", "resource", "token_type", "client_id"}

The node (VM, scale set, Batch pool) holds its system-assigned identity and every user-assigned
identity attached to it; the sidecar asks for one only when the launch token grants it, and the
job, which must not reach the node's IMDS itself, gets only those. Nothing of the issuer's is
presented: the identity is the node's, the grant is the issuer's decision.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from urllib.parse import urlencode

import aiohttp

from credsidecar.clouds.contracts import AZURE_NODE_IMDS_URL, AzureIdentityRef, AzureToken
from credsidecar.clouds.upstream_http import request
from credsidecar.errors import BadRequest, CredsidecarError, Forbidden, Unavailable, bounded

__all__ = ["NODE_IMDS_API_VERSION", "NODE_IMDS_URL", "AzureNodeExchanger"]

NODE_IMDS_URL = AZURE_NODE_IMDS_URL
NODE_IMDS_API_VERSION = "2018-02-01"
IDENTITY_PATH = "/metadata/identity/oauth2/token"


def describe(identity: AzureIdentityRef) -> str:
    """How messages name a node identity: by the selector the node's IMDS is asked with."""
    if identity.client_id:
        return f"node identity {identity.name!r} (client_id {identity.client_id})"
    if identity.resource_id:
        return f"node identity {identity.name!r} ({bounded(identity.resource_id, 200)})"
    return f"node identity {identity.name!r} (the node's system-assigned identity)"


class AzureNodeExchanger:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        who: str,
        imds_url: str = NODE_IMDS_URL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._session = session
        self._who = who
        self._url = imds_url.rstrip("/") + IDENTITY_PATH
        self._clock = clock

    @property
    def description(self) -> str:
        return f"{self._who} via the node's IMDS at {self._url}"

    def query(self, identity: AzureIdentityRef, resource: str) -> dict[str, str]:
        query = {"api-version": NODE_IMDS_API_VERSION, "resource": resource}
        if identity.client_id:
            query["client_id"] = identity.client_id
        elif identity.resource_id:
            query["mi_res_id"] = identity.resource_id
        return query

    async def token(self, identity: AzureIdentityRef, resource: str) -> AzureToken:
        url = f"{self._url}?{urlencode(self.query(identity, resource))}"
        started = self._clock()
        resp = await request(
            self._session, "GET", url, "the node's IMDS", headers={"Metadata": "true"},
            who=self._who, hint="is the sidecar on an Azure node, and --azure-node-imds-url right?",
        )  # fmt: skip
        body = resp.fields()
        token = body.get("access_token")
        if resp.status == 200 and isinstance(token, str) and token:
            return AzureToken(token, started + self._lifetime(body, started), resource,
                              str(body.get("client_id") or identity.client_id))  # fmt: skip
        raise self._explain(resp.status, body, identity, resource)

    def _lifetime(self, body: dict[str, object], started: float) -> float:
        try:
            return float(str(body.get("expires_in")))
        except ValueError:
            pass
        try:
            return float(str(body.get("expires_on"))) - started
        except ValueError:
            raise Unavailable(
                f"the node's IMDS answered {self._who} a token without expires_in or expires_on"
            ) from None

    def _explain(
        self, status: int, body: dict[str, object], identity: AzureIdentityRef, resource: str
    ) -> CredsidecarError:
        said = bounded(body.get("error_description") or body.get("error") or f"HTTP {status}")
        said = f"the node's IMDS said (HTTP {status}): {said}"
        target = describe(identity)
        if status >= 500 or status == 429 or status == 410:  # 410: IMDS still starting
            return Unavailable(f"the node's IMDS failed for {self._who} as {target}; retrying. "
                               f"{said}")  # fmt: skip
        error = str(body.get("error") or "")
        if error == "invalid_resource" or "AADSTS500011" in said:
            return BadRequest(
                f"{self._who} asked for resource {bounded(resource, 100)!r} as {target}, which "
                f"the tenant does not know; ask for a resource's URI such as "
                f"https://storage.azure.com. {said}"
            )
        if "identity not found" in said.lower() or status in (400, 404):
            return Forbidden(
                f"{self._who} may not use {target}: the node does not hold it; attach the "
                "identity to the node (VM, scale set or Batch pool), or correct its client_id "
                f"or mi_res_id in the identity policy. {said}"
            )
        return Forbidden(f"{self._who} may not use {target}: the node's IMDS refused. {said}")
