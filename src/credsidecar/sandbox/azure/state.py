"""What the Azure stand-ins share: the tenant's identities, the Entra signing key, the clock,
and the test hooks.

Entra's access tokens are JWTs that each resource verifies by itself against the keys Entra
publishes, so the Entra and Blob stand-ins share only the key (and the clock), not a table of
issued tokens as the GCP ones do.

Test hooks under /_sandbox/ on the Entra app: `POST outage {"seconds": N}` (the token
endpoint answers 503 for N seconds) and `GET stats` (call counts: `entra.token`,
`blob.<operation>`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import RSAKey

__all__ = [
    "ACCESS_TOKEN_LIFETIME",
    "ASSERTION_AUDIENCE",
    "STORAGE_RESOURCE",
    "AzureState",
    "EntraApp",
    "FederatedCredential",
    "TokenRejected",
    "sts_issuer",
    "verify_access_token",
]

ASSERTION_AUDIENCE = "api://AzureADTokenExchange"
STORAGE_RESOURCE = "https://storage.azure.com"
# Entra gives app tokens 60-90 minutes; the sandbox uses a fixed hour unless a test asks less.
ACCESS_TOKEN_LIFETIME = 3600


def sts_issuer(tenant_id: str) -> str:
    """The `iss` of Entra's v1.0 access tokens (what Storage, ARM and Key Vault receive)."""
    return f"https://sts.windows.net/{tenant_id}/"


@dataclass(frozen=True)
class FederatedCredential:
    """One federated identity credential: Entra matches all three exactly (case-sensitive)."""

    issuer: str
    subject: str
    audience: str = ASSERTION_AUDIENCE


@dataclass(frozen=True)
class EntraApp:
    """An app registration's service principal or a user-assigned managed identity."""

    name: str
    client_id: str
    object_id: str
    federated_credentials: tuple[FederatedCredential, ...]
    resource_id: str | None = None  # managed identities: their ARM id (`xms_mirid`)


@dataclass
class AzureState:
    tenant_id: str
    apps: Mapping[str, EntraApp]  # by client id (lower case)
    signing_key: RSAKey
    clock: Callable[[], float] = time.time
    token_lifetime: int = ACCESS_TOKEN_LIFETIME
    authority_url: str = ""  # https://127.0.0.1:PORT once served; used in documents
    arm_url: str = ""  # the ARM stand-in's, likewise
    outage_until: float = 0.0
    calls: dict[str, int] = field(default_factory=dict)

    def app(self, client_id: str) -> EntraApp | None:
        return self.apps.get(client_id.lower())

    def count(self, method: str) -> None:
        self.calls[method] = self.calls.get(method, 0) + 1

    def in_outage(self) -> bool:
        return self.clock() < self.outage_until


class TokenRejected(Exception):
    """An access token a resource refuses; the message is the resource's own wording."""


def verify_access_token(
    state: AzureState, token: str, audiences: frozenset[str]
) -> dict[str, object]:
    """What every resource checks of an Entra access token: signature (the sandbox Entra key),
    `iss`, `aud` and lifetime. Returns the claims."""
    try:
        claims = dict(jwt.decode(token, state.signing_key, algorithms=["RS256"]).claims)
    except (JoseError, ValueError) as exc:
        raise TokenRejected("Signature validation failed. Signature is invalid.") from exc
    if claims.get("iss") != sts_issuer(state.tenant_id):
        raise TokenRejected("Issuer validation failed. Issuer did not match.")
    if claims.get("aud") not in audiences:
        raise TokenRejected("Audience validation failed. Audience did not match.")
    now = state.clock()
    exp, nbf = claims.get("exp"), claims.get("nbf", 0)
    if not isinstance(exp, int | float) or exp <= now:
        raise TokenRejected("Lifetime validation failed. The token is expired.")
    if not isinstance(nbf, int | float) or nbf > now:
        raise TokenRejected("Lifetime validation failed. The token is not yet valid.")
    return claims
