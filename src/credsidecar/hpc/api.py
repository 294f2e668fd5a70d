"""A small client for the issuer's HPC API, with errors that carry the issuer's explanation."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from credsidecar.errors import CredsidecarError

__all__ = ["HpcApi", "HpcApiError"]


class HpcApiError(CredsidecarError):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class HpcApi:
    """`member_key` authenticates management calls; launch calls carry the launch token."""

    def __init__(
        self, issuer_url: str, session: aiohttp.ClientSession, member_key: str | None = None
    ) -> None:
        self.issuer_url = issuer_url.rstrip("/")
        self._session = session
        self._member_key = member_key

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        headers = {"Accept": "application/json"}
        if self._member_key:
            headers["Authorization"] = f"Bearer {self._member_key}"
        url = f"{self.issuer_url}{path}"
        try:
            async with self._session.request(
                method, url, json=body, headers=headers, timeout=aiohttp.ClientTimeout(total=30)
            ) as resp:
                raw = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise HpcApiError(f"cannot reach the issuer at {self.issuer_url}: {exc}", 503) from exc
        if status == 204:
            return None
        try:
            data = json.loads(raw) if raw else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            data = raw.decode(errors="replace")
        if status >= 400:
            detail = data.get("error_description") if isinstance(data, dict) else data
            raise HpcApiError(f"issuer refused {method} {path} (HTTP {status}): {detail}", status)
        return data

    async def text(self, path: str) -> str:
        try:
            async with self._session.get(f"{self.issuer_url}{path}") as resp:
                body = await resp.text()
                if resp.status != 200:
                    raise HpcApiError(f"issuer answered HTTP {resp.status} for {path}", resp.status)
                return body
        except aiohttp.ClientError as exc:
            raise HpcApiError(f"cannot reach the issuer at {self.issuer_url}: {exc}", 503) from exc
