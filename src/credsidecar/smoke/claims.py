"""A JWT's payload, read WITHOUT verifying it: only to show whom a token names and until when.

The clouds verify tokens; smoke only reports `aud`, `exp`, `email`, `tid`... and never prints
the token itself.
"""

from __future__ import annotations

import base64
import binascii
import json

from credsidecar.smoke.model import Violation

__all__ = ["peek_claims"]

MAX_TOKEN = 20_000  # the longest JWT any cloud accepts (DESIGN, launch tokens)


def peek_claims(token: str, what: str) -> dict[str, object]:
    parts = token.strip().split(".")
    if len(parts) != 3 or len(token) > MAX_TOKEN:
        raise Violation(f"{what} is not a JWT (header.payload.signature)")
    payload = parts[1]
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, binascii.Error):
        raise Violation(f"{what} is a JWT whose payload is not base64url JSON") from None
    if not isinstance(claims, dict):
        raise Violation(f"{what} is a JWT whose payload is not a JSON object")
    return claims
