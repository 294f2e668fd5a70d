"""What the issuer's HTTP modules share: the app key of the service and JSON in and out."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from credsidecar.errors import BadRequest
from credsidecar.issuer.service import IssuerService

__all__ = ["SERVICE", "json_body", "no_store_json"]

SERVICE = web.AppKey("service", IssuerService)


def no_store_json(data: Any, status: int = 200) -> web.Response:
    # OAuth responses carrying tokens must not be cached (RFC 6749 section 5.1).
    return web.json_response(
        data, status=status, headers={"Cache-Control": "no-store", "Pragma": "no-cache"}
    )


async def json_body(request: web.Request) -> Any:
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from exc
