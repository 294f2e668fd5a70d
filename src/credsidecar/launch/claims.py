"""What a launch token says, read without verifying it.

The sidecar only routes on these claims (which role, which user to name in logs); the issuer
verifies the token at every exchange, and the clouds verify what the issuer signs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from joserfc import jws
from joserfc.errors import JoseError

from credsidecar.errors import ConfigError

__all__ = ["LaunchClaims", "read_claims"]


@dataclass(frozen=True)
class LaunchClaims:
    issuer: str
    subject: str
    user: str
    run: str | None
    jti: str | None
    expires_at: int | None
    workspace: str | None = None
    pipeline: str | None = None
    # provider -> identity descriptors, the default first (see issuer/identities.py)
    identities: Mapping[str, list[Mapping[str, Any]]] = field(default_factory=dict)

    def identity(self, provider: str, name: str | None = None) -> Mapping[str, Any] | None:
        candidates = self.identities.get(provider, [])
        if name is None:
            return candidates[0] if candidates else None
        return next((d for d in candidates if d.get("name") == name), None)

    @property
    def who(self) -> str:
        """How logs and errors name the launch: 'user alice (run r1)'."""
        return f"user {self.user}" + (f" (run {self.run})" if self.run else "")


def read_claims(token: str) -> LaunchClaims:
    try:
        payload = jws.extract_compact(token.encode()).payload
        claims = json.loads(payload)
    except (JoseError, ValueError) as exc:
        raise ConfigError(
            "the launch token is not a JWT (three base64url parts); check the token source"
        ) from exc
    if not isinstance(claims, dict):
        raise ConfigError("the launch token's payload is not a JSON object")
    identities = claims.get("identities") or {}
    return LaunchClaims(
        issuer=str(claims.get("iss", "")),
        subject=str(claims.get("sub", "")),
        user=str(claims.get("user") or claims.get("sub") or "unknown"),
        run=claims.get("run"),
        jti=claims.get("jti"),
        expires_at=claims.get("exp") if isinstance(claims.get("exp"), int) else None,
        workspace=claims.get("workspace"),
        pipeline=claims.get("pipeline"),
        identities=identities if isinstance(identities, dict) else {},
    )
