"""Assembles the sidecar's aiohttp app: guards in front, then health and each cloud's routes."""

from __future__ import annotations

from collections.abc import Sequence

from aiohttp import web

from credsidecar.cache import CredentialCache
from credsidecar.endpoints.aws import AwsEndpoints
from credsidecar.endpoints.guards import Guard
from credsidecar.errors import Unavailable

__all__ = ["create_sidecar_app"]

# Requests to a metadata endpoint are tiny; anything large is not a client we serve.
MAX_REQUEST_BYTES = 4096


def _health_routes(caches: Sequence[CredentialCache]) -> list[web.RouteDef]:  # type: ignore[type-arg]
    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        problems = []
        for cache in caches:
            try:
                cache.current_entry()
            except Unavailable as exc:
                problems.append(exc.message)
        if problems:
            return web.json_response(
                {"status": "not ready", "problems": problems},
                status=503,
                headers={"Retry-After": "1"},
            )
        return web.json_response({"status": "ready"})

    return [web.get("/healthz", healthz), web.get("/readyz", readyz)]


def create_sidecar_app(
    guard: Guard,
    aws: AwsEndpoints | None,
    caches: Sequence[CredentialCache],  # type: ignore[type-arg]
) -> web.Application:
    """Every route, health checks included, is registered through the guard."""
    app = web.Application(client_max_size=MAX_REQUEST_BYTES)
    app.add_routes(guard.routes(_health_routes(caches)))
    if aws is not None:
        app.add_routes(guard.routes(aws.routes()))
    return app
