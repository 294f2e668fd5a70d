"""What a launch token says, read without verifying it.

The sidecar only routes on these claims (which role, which user to name in logs); the issuer
verifies the token at every exchange, and the clouds verify what the issuer signs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from credsidecar.errors import ConfigError
from credsidecar.launch.grants import Grants
from credsidecar.launch.jwt_parts import unverified_payload

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
    # the identities granted per provider, the default first (see launch/grants.py)
    grants: Grants = field(default_factory=Grants)

    @property
    def who(self) -> str:
        """How logs and errors name the launch: 'user alice (run r1)'."""
        return f"user {self.user}" + (f" (run {self.run})" if self.run else "")


def read_claims(token: str) -> LaunchClaims:
    try:
        claims = unverified_payload(token)  # no JOSE library: nothing is verified here
    except ValueError as exc:
        raise ConfigError(
            "the launch token is not a JWT (three base64url parts); check the token source"
        ) from exc
    if not isinstance(claims, dict):
        raise ConfigError("the launch token's payload is not a JSON object")
    grants = Grants.from_claim(claims.get("identities"))  # parsed here, once
    return LaunchClaims(
        issuer=str(claims.get("iss", "")),
        subject=str(claims.get("sub", "")),
        user=str(claims.get("user") or claims.get("sub") or "unknown"),
        run=claims.get("run"),
        jti=claims.get("jti"),
        expires_at=claims.get("exp") if isinstance(claims.get("exp"), int) else None,
        workspace=claims.get("workspace"),
        pipeline=claims.get("pipeline"),
        grants=grants,
    )
