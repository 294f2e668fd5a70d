"""What the GCP stand-ins share: the access tokens they issued, and the test hooks.

Google's access tokens are opaque: the service that accepts one asks Google whom it belongs to.
Here that is a lookup in `TokenStore`, which STS and IAM Credentials write and storage reads.
Unlike moto, an expired token is gone: every lookup compares with the injected clock.

Test hooks under /_sandbox/ on the STS and IAM apps: `outage` (answer 503 for N seconds) and
`stats` (call counts per method).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

__all__ = [
    "CLOUD_PLATFORM",
    "AccessGrant",
    "GcpState",
    "TokenStore",
    "bearer_token",
]

CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"


@dataclass(frozen=True)
class AccessGrant:
    """Whom an access token speaks for: a federated principal or a service account's email."""

    principal: str
    kind: str  # "federated" or "service_account"
    scopes: frozenset[str]
    expires_at: float


class TokenStore:
    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._grants: dict[str, AccessGrant] = {}

    def issue(self, principal: str, kind: str, scopes: frozenset[str], expires_at: float) -> str:
        now = self._clock()
        # Bounded memory: forget expired tokens whenever a new one is issued.
        self._grants = {t: g for t, g in self._grants.items() if g.expires_at > now}
        prefix = "ya29.d." if kind == "federated" else "ya29.c."  # Google's own prefixes
        token = prefix + "sandbox-" + secrets.token_urlsafe(32)
        self._grants[token] = AccessGrant(principal, kind, scopes, expires_at)
        return token

    def lookup(self, token: str) -> AccessGrant | None:
        """The grant behind a token, or None when it is unknown or has expired."""
        grant = self._grants.get(token)
        if grant is None or grant.expires_at <= self._clock():
            return None
        return grant


@dataclass
class GcpState:
    """State shared by the STS, IAM Credentials and storage stand-ins of one sandbox."""

    clock: Callable[[], float] = time.time
    tokens: TokenStore = field(init=False)
    outage_until: float = 0.0
    calls: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.tokens = TokenStore(self.clock)

    def count(self, method: str) -> None:
        self.calls[method] = self.calls.get(method, 0) + 1

    def in_outage(self) -> bool:
        return self.clock() < self.outage_until


def bearer_token(request: web.Request) -> str | None:
    """The token of `Authorization: Bearer ...`, or None when the header is absent or other."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None
