"""A compact JWT's payload, read without verifying it and without a JOSE library.

The sidecar only routes on the launch token's claims (the issuer verifies the token at every
exchange), so splitting and base64url-decoding is all it needs. Importing joserfc for this
loaded joserfc and cryptography into every sidecar: ~10 MB of RSS and ~40 ms per start.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

__all__ = ["MAX_TOKEN_CHARS", "unverified_payload"]

# The issuer's tokens stay under the clouds' 20,000-character limit; anything far larger is
# not a launch token, and is refused before it is decoded.
MAX_TOKEN_CHARS = 65536


def _decode(segment: str) -> bytes:
    # Strict alphabet (validate=True): a token with stray characters is refused, not repaired.
    return base64.b64decode(segment + "=" * (-len(segment) % 4), altchars=b"-_", validate=True)


def unverified_payload(token: str) -> Any:
    """The decoded JSON payload of a compact JWS; `ValueError` when `token` is not one."""
    if len(token) > MAX_TOKEN_CHARS:
        raise ValueError(f"a token of {len(token)} characters is longer than {MAX_TOKEN_CHARS}")
    parts = token.split(".")
    if len(parts) != 3 or not all(parts[:2]):
        raise ValueError("a compact JWT has three dot-separated parts")
    try:
        header = json.loads(_decode(parts[0]))
        payload = json.loads(_decode(parts[1]))
    except (binascii.Error, UnicodeDecodeError, RecursionError) as exc:
        # RecursionError: a payload of deeply nested arrays is not a launch token either.
        raise ValueError("a JWT part is not base64url-encoded JSON") from exc
    if not isinstance(header, dict):
        raise ValueError("the JWT header is not a JSON object")
    return payload
