"""IMDSv2 session tokens: stateless, so no table to fill, evict or search.

A token is `nonce.expiry.mac`, the expiry in milliseconds on this process's monotonic clock and
the MAC an HMAC-SHA256 under a key that never leaves memory. Validity is one MAC comparison (in
constant time) and one clock read; a flood of PUTs costs nothing and invalidates no one. Tokens
already verified are remembered in a small table so the hot path skips the HMAC (one dict
lookup); when it is full the entry remembered longest ago goes (first in, first out: no
bookkeeping on a hit, unlike an LRU), and losing an entry only means verifying that token
again.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable

__all__ = ["SessionTokens"]

VERIFIED_TOKENS = 1024


class SessionTokens:
    def __init__(self, mono: Callable[[], float] = time.monotonic) -> None:
        self._key = secrets.token_bytes(32)
        self._mono = mono
        self._verified: dict[str, int] = {}  # token -> expiry (ms), in insertion order

    def _mac(self, body: str) -> str:
        digest = hmac.new(self._key, body.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def issue(self, ttl_seconds: int) -> str:
        body = f"{secrets.token_urlsafe(12)}.{int((self._mono() + ttl_seconds) * 1000)}"
        return f"{body}.{self._mac(body)}"

    def valid(self, token: str | None) -> bool:
        # Tokens we issue are ASCII; anything else (a non-ASCII or undecodable header value,
        # which compare_digest and encode() would raise on) is simply not one of ours.
        if not token or len(token) > 200 or not token.isascii():
            return False
        expiry = self._verified.get(token)
        if expiry is None:
            body, _, mac = token.rpartition(".")
            digits = body.rpartition(".")[2]
            if not digits.isdigit() or not hmac.compare_digest(
                mac.encode(), self._mac(body).encode()
            ):
                return False
            if len(self._verified) >= VERIFIED_TOKENS:
                del self._verified[next(iter(self._verified))]  # the first remembered
            expiry = self._verified[token] = int(digits)
        return expiry > self._mono() * 1000
