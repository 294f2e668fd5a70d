"""Verifying the launch tokens this issuer signed: signature, issuer, audience, lifetime, purpose.

Token exchange (service.py) and HPC launches (hpc_service.py) both start here; whether the run
and user are still active is checked separately, against the store and the policy in force.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from joserfc import jwt
from joserfc.errors import (
    BadSignatureError,
    DecodeError,
    ExpiredTokenError,
    InvalidClaimError,
    JoseError,
    MissingClaimError,
)

from credsidecar.errors import InvalidGrant, bounded
from credsidecar.issuer.keys import ALGORITHMS, KeyRing

__all__ = ["LAUNCH_TOKEN_USE", "LaunchTokenVerifier"]

LAUNCH_TOKEN_USE = "launch"  # noqa: S105 - a claim value, not a secret


class LaunchTokenVerifier:
    def __init__(
        self, keys: KeyRing, issuer_url: str, clock: Callable[[], float] = time.time
    ) -> None:
        self._keys = keys
        self._issuer_url = issuer_url
        self._clock = clock

    def verify(self, token: str) -> dict[str, Any]:
        """The claims of `token`, or InvalidGrant saying why it is no launch token of ours."""
        if not isinstance(token, str) or not token or len(token) > 2 * 20_000:
            raise InvalidGrant("subject_token is missing or too large")
        try:
            decoded = jwt.decode(token, self._keys.verification_keys(), algorithms=list(ALGORITHMS))
        except (BadSignatureError, DecodeError, ValueError) as exc:
            raise InvalidGrant(
                "subject_token was not signed by this issuer's keys (foreign, tampered or "
                f"malformed token: {exc.__class__.__name__}); mint a new launch token"
            ) from exc
        except JoseError as exc:
            raise InvalidGrant(
                f"subject_token cannot be verified ({exc.description or exc.error}); only "
                f"{', '.join(ALGORITHMS)} tokens from this issuer are accepted"
            ) from exc
        claims = decoded.claims
        registry = jwt.JWTClaimsRegistry(
            now=lambda: int(self._clock()),
            iss={"essential": True, "value": self._issuer_url},
            aud={"essential": True, "value": self._issuer_url},
            exp={"essential": True},
            jti={"essential": True},
            run={"essential": True},
            user={"essential": True},
        )
        try:
            registry.validate(claims)
        except ExpiredTokenError as exc:
            raise InvalidGrant(
                f"the launch token of run {bounded(claims.get('run'), 128)!r} of user "
                f"{bounded(claims.get('user'), 128)!r} expired at {claims.get('exp')}; the run "
                "outlived its maximum lifetime, so relaunch it (or mint with a longer lifetime)"
            ) from exc
        except InvalidClaimError as exc:
            if exc.claim in ("nbf", "iat"):
                raise InvalidGrant(
                    f"subject_token is not valid yet ({exc.description}); check that the "
                    "clocks of the issuer and this host agree"
                ) from exc
            raise InvalidGrant(
                f"subject_token is not a launch token of this issuer ({self._issuer_url}): "
                f"{exc.description}; the sidecar must exchange it at the issuer that minted it "
                "(its iss claim)"
            ) from exc
        except (MissingClaimError, JoseError) as exc:
            raise InvalidGrant(
                f"subject_token is not a launch token of this issuer: {exc.description}"
            ) from exc
        if claims.get("token_use") != LAUNCH_TOKEN_USE:
            raise InvalidGrant("subject_token is not a launch token (token_use is not 'launch')")
        return dict(claims)
