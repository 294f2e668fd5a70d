"""Azure: Entra workload identity federation with a client assertion.

    issuer token (aud api://AzureADTokenExchange, sub = the identity's federated subject)
      --POST {authority}/{tenant}/oauth2/v2.0/token (client_credentials + client_assertion)-->
    access token for one resource

One form POST, made with aiohttp like the other clouds (MSAL would add metadata discovery round
trips and a synchronous client for the same request); fields as Entra documents them for
"client_credentials with a federated credential".
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from credsidecar.clouds.contracts import (
    AZURE_AUDIENCE,
    AZURE_AUTHORITY,
    AzureIdentityRef,
    AzureToken,
)
from credsidecar.clouds.upstream_http import post
from credsidecar.errors import BadRequest, CredsidecarError, Forbidden, InvalidGrant, Unavailable
from credsidecar.launch.exchange import TokenSupplier

__all__ = ["AUTHORITY", "AzureExchanger", "AzureIdentityRef", "AzureToken"]

AUTHORITY, AUDIENCE = AZURE_AUTHORITY, AZURE_AUDIENCE
_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
_AADSTS = re.compile(r"AADSTS(\d+)")


def scope_for(resource: str) -> str:
    """Entra v2 scopes: `<resource>/.default`, without doubling a trailing slash."""
    return resource.rstrip("/") + "/.default"


class AzureExchanger:
    def __init__(
        self,
        supplier: TokenSupplier,
        session: aiohttp.ClientSession,
        who: str,
        authority: str = AUTHORITY,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._supplier = supplier
        self._session = session
        self._who = who
        self._authority = authority.rstrip("/")
        self._clock = clock

    @property
    def description(self) -> str:
        return f"{self._who} via Entra at {self._authority}"

    async def token(self, identity: AzureIdentityRef, resource: str) -> AzureToken:
        assertion = await self._supplier.token(identity.audience, "azure", identity.name)
        url = f"{self._authority}/{identity.tenant_id}/oauth2/v2.0/token"
        form = {
            "grant_type": "client_credentials",
            "client_id": identity.client_id,
            "client_assertion_type": _ASSERTION_TYPE,
            "client_assertion": assertion.token,
            "scope": scope_for(resource),
        }
        started = self._clock()
        resp = await post(self._session, url, "Entra", form=form, who=self._who)
        status, body = resp.status, resp.fields()
        if status == 200 and isinstance(body.get("access_token"), str):
            expires_in = int(body.get("expires_in", 3600))
            return AzureToken(body["access_token"], started + expires_in, resource,
                              identity.client_id)  # fmt: skip
        raise self._explain(status, body, identity, resource)

    def _explain(
        self, status: int, body: dict[str, Any], identity: AzureIdentityRef, resource: str
    ) -> CredsidecarError:
        detail = str(body.get("error_description") or body.get("error") or f"HTTP {status}")
        codes = [int(c) for c in body.get("error_codes") or []] or [
            int(m) for m in _AADSTS.findall(detail)
        ]
        code = codes[0] if codes else 0
        who = f"{self._who} may not use Azure identity {identity.name!r} ({identity.client_id})"
        if status >= 500 or status == 429:
            return Unavailable(f"Entra failed for {self._who}: {detail}")
        if code == 70021:
            cause = "no federated credential on the app or managed identity matches the token"
        elif code in (700016, 7000016):
            cause = f"no application or identity with client id {identity.client_id} exists in "
            cause += f"tenant {identity.tenant_id}"
        elif code in (90002, 900023):
            cause = f"tenant {identity.tenant_id} does not exist"
        elif code == 700024:
            return InvalidGrant(f"{who}: the client assertion is outside its valid time range "
                                f"(check this host's clock). Entra said: {detail}")  # fmt: skip
        elif code in (500011, 500014, 70011):
            return BadRequest(f"{who}: resource {resource!r} is not known to tenant "
                              f"{identity.tenant_id}. Entra said: {detail}")  # fmt: skip
        else:
            cause = "Entra refused the client assertion"
        return Forbidden(f"{who}: {cause}. Entra said: {detail}")
