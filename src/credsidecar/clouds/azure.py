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
from credsidecar.clouds.remedies import (
    AzureCause,
    Presented,
    azure_fix,
    supplier_refusal,
)
from credsidecar.clouds.upstream_http import post
from credsidecar.errors import (
    BadRequest,
    CredsidecarError,
    Forbidden,
    InvalidGrant,
    Unavailable,
    bounded,
)
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
        try:
            assertion = await self._supplier.token(identity.audience, "azure", identity.name)
        except CredsidecarError as exc:
            target = f"azure identity {identity.name!r} ({identity.client_id})"
            raise supplier_refusal(exc, self._who, target) from exc
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
        seen = Presented.of(assertion.token, identity.audience)
        raise self._explain(status, body, identity, resource, seen)

    def _explain(
        self,
        status: int,
        body: dict[str, Any],
        identity: AzureIdentityRef,
        resource: str,
        seen: Presented,
    ) -> CredsidecarError:
        """Entra's refusal: the AADSTS code's cause in Entra's terms and the fix (remedies.py)."""
        detail = bounded(body.get("error_description") or body.get("error") or f"HTTP {status}")
        raw_codes = body.get("error_codes")
        codes = [c for c in raw_codes if isinstance(c, int)] if isinstance(raw_codes, list) else []
        codes = codes or [int(m) for m in _AADSTS.findall(detail)]
        code = codes[0] if codes else 0
        said = f"Entra said: {detail}"
        if status >= 500 or status == 429:
            return Unavailable(f"Entra failed for {self._who}; retrying. {said}")
        who = f"{self._who} may not use Azure identity {identity.name!r} ({identity.client_id})"

        def fix(cause: AzureCause) -> str:
            return azure_fix(cause, identity.client_id, identity.tenant_id, seen, resource)

        if code in (70021, 700211, 700212, 700213):
            cause = (
                f"no federated credential on it matches issuer {seen.issuer}, subject "
                f"{seen.subject} and audience {seen.audience}; {fix('no-federated-credential')}"
            )
        elif code in (700016, 7000016):
            cause = f"the app is not in tenant {identity.tenant_id}; {fix('no-app')}"
        elif code in (90002, 900023):
            cause = f"tenant {identity.tenant_id} does not exist; {fix('no-tenant')}"
        elif code in (50166, 7000272, 50013, 700027):
            cause = (
                f"Entra could not verify the token with the keys of {seen.issuer}; {fix('keys')}"
            )
        elif code == 700024:
            return InvalidGrant(
                f"{who}: the client assertion is outside its valid time range; {fix('time')}. "
                + said
            )
        elif code in (500011, 500014, 70011, 1002012):
            return BadRequest(
                f"{who}: resource {bounded(resource, 100)!r} is not known to tenant "
                f"{identity.tenant_id}; {fix('resource')}. {said}"
            )
        else:
            cause = "Entra refused the client assertion"
        return Forbidden(f"{who}: {cause}. {said}")
