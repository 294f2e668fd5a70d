"""The federated token a cloud is shown: exchanged at the issuer, or read as is (direct mode).

One method, like google-auth's `SubjectTokenSupplier`: `token(audience, provider, identity)`
returns a JWT for that audience. Exchangers (clouds/) do not care which supplier they hold.
This is the sidecar's half of the launch-token flow, so it lives beside the token sources.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from credsidecar.clouds.upstream_http import post
from credsidecar.errors import BadRequest, CredsidecarError, Forbidden, InvalidGrant, Unavailable
from credsidecar.launch.grants import identity_urn
from credsidecar.launch.sources import TokenSource

__all__ = ["DirectToken", "FederatedToken", "IssuerExchange", "TokenSupplier"]

EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"  # noqa: S105 - a type URN


@dataclass(frozen=True)
class FederatedToken:
    token: str
    expires_at: float | None
    identity: Mapping[str, Any]


class TokenSupplier(Protocol):
    async def token(self, audience: str, provider: str, identity: str | None) -> FederatedToken: ...


class DirectToken:
    """Direct mode: a token written by someone else (a projected service-account token) is
    presented to the cloud unchanged, re-read whenever the file rotates."""

    def __init__(self, source: TokenSource) -> None:
        self._source = source

    async def token(self, audience: str, provider: str, identity: str | None) -> FederatedToken:
        return FederatedToken(await self._source.read(), None, {})


class IssuerExchange:
    """Trades the launch token for a cloud-audience token at the issuer (RFC 8693)."""

    def __init__(
        self, issuer_url: str, source: TokenSource, session: aiohttp.ClientSession
    ) -> None:
        self._url = issuer_url.rstrip("/") + "/v1/token"
        self._issuer = issuer_url
        self._source = source
        self._session = session

    async def token(self, audience: str, provider: str, identity: str | None) -> FederatedToken:
        form = {
            "grant_type": EXCHANGE_GRANT,
            "subject_token_type": JWT_TOKEN_TYPE,
            "subject_token": await self._source.read(),
            "audience": audience,
        }
        if identity:
            form["resource"] = identity_urn(provider, identity)
        started = time.time()
        resp = await post(
            self._session, self._url, f"issuer {self._issuer}", form=form,
            hint="credentials still valid keep being served while it is retried",
        )  # fmt: skip
        body = resp.fields()
        if resp.status == 200 and isinstance(body.get("access_token"), str):
            expires_in = body.get("expires_in")
            expires_at = started + expires_in if isinstance(expires_in, int) else None
            return FederatedToken(body["access_token"], expires_at, body.get("identity") or {})
        reason = body.get("error_description") or resp.text[:300] or f"HTTP {resp.status}"
        raise _issuer_error(
            resp.status, body.get("error"), f"the issuer refused the exchange: {reason}",
            resp.retry_after,
        )  # fmt: skip


def _issuer_error(
    status: int, code: Any, message: str, retry_after: int | None = None
) -> CredsidecarError:
    if status == 403:
        return Forbidden(message)
    if status == 400 and code == "invalid_grant":
        return InvalidGrant(message)
    if 400 <= status < 500 and status != 429:
        return BadRequest(message)
    # 429 (the issuer's rate limits) and 5xx: retried, no sooner than the issuer asked.
    return Unavailable(message, retry_after=max(5, retry_after or 0),
                       upstream_retry_after=retry_after)  # fmt: skip
