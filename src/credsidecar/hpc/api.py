"""A small client for the issuer's HPC API, with errors that carry the issuer's explanation."""

from __future__ import annotations

from typing import Any

import aiohttp

from credsidecar.clouds.upstream_http import request
from credsidecar.errors import HpcApiError

__all__ = ["HpcApi"]


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
        resp = await request(self._session, method, f"{self.issuer_url}{path}", self._service,
                             json_body=body, headers=headers)  # fmt: skip
        if resp.status == 204:
            return None
        if resp.status >= 400:
            detail = resp.fields().get("error_description") or resp.text[:300]
            raise HpcApiError(
                f"issuer refused {method} {path} (HTTP {resp.status}): {detail}", resp.status
            )
        return resp.json() if resp.body else None

    async def text(self, path: str) -> str:
        resp = await request(self._session, "GET", f"{self.issuer_url}{path}", self._service)
        if resp.status != 200:
            raise HpcApiError(f"issuer answered HTTP {resp.status} for {path}", resp.status)
        return resp.text

    @property
    def _service(self) -> str:
        return f"issuer {self.issuer_url}"
