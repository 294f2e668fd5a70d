"""Assembles the sidecar's aiohttp app: guards in front, then health and each cloud's routes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from aiohttp import web

from credsidecar.endpoints.guards import Guard
from credsidecar.errors import CredsidecarError

if TYPE_CHECKING:
    from credsidecar.providers import Provider

__all__ = ["create_sidecar_app"]

# Requests to a metadata endpoint are tiny; anything large is not a client we serve.
MAX_REQUEST_BYTES = 4096


def _health_routes(checks: Sequence[Callable[[], object]]) -> list[web.RouteDef]:
    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        problems = []
        for check in checks:
            try:
                check()
            except CredsidecarError as exc:  # Unavailable, or a refusal once nothing is valid
                problems.append(exc.message)
        if problems:
            return web.json_response(
                {"status": "not ready", "problems": problems},
                status=503,
                headers={"Retry-After": "1"},
            )
        return web.json_response({"status": "ready"})

    return [web.get("/healthz", healthz), web.get("/readyz", readyz)]


def create_sidecar_app(guard: Guard, providers: Sequence[Provider]) -> web.Application:
    """Every route, health checks included, is registered through a guard."""
    app = web.Application(client_max_size=MAX_REQUEST_BYTES)
    app.add_routes(guard.routes(_health_routes([p.ready for p in providers])))
    for provider in providers:
        app.add_routes(provider.routes)  # each provider's routes come guarded
    return app
