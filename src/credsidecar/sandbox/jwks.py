"""Fetches and caches an issuer's JWKS the way a cloud does: discovery first, then jwks_uri,
refetched when a token names an unknown key (at most every `REFETCH_SECONDS`)."""

from __future__ import annotations

import time

import aiohttp
from joserfc.jwk import KeySet

__all__ = ["JwksCache"]

REFETCH_SECONDS = 2.0
TIMEOUT = aiohttp.ClientTimeout(total=5)


class JwksCache:
    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session
        self._sets: dict[str, tuple[KeySet, set[str], float]] = {}

    async def keys_for(self, issuer: str, kid: str | None) -> KeySet:
        """Raises `aiohttp.ClientError`/`TimeoutError` when the issuer cannot be reached."""
        cached = self._sets.get(issuer)
        now = time.monotonic()
        if cached is not None:
            keyset, kids, fetched = cached
            if kid in kids or now - fetched < REFETCH_SECONDS:
                return keyset
        async with self._session.get(
            f"{issuer}/.well-known/openid-configuration", timeout=TIMEOUT
        ) as resp:
            resp.raise_for_status()
            jwks_uri = (await resp.json())["jwks_uri"]
        async with self._session.get(jwks_uri, timeout=TIMEOUT) as resp:
            resp.raise_for_status()
            document = await resp.json()
        keyset = KeySet.import_key_set(document)
        self._sets[issuer] = (keyset, {k.get("kid", "") for k in document["keys"]}, now)
        return keyset
