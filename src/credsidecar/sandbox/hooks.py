"""What every sandbox stand-in shares: test hooks for faults and call counts, and the
per-app JWKS cache's life cycle."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from typing import Protocol

import aiohttp
from aiohttp import web

from credsidecar.sandbox.jwks import JwksCache

__all__ = ["FaultState", "add_test_hooks", "jwks_context"]


class FaultState(Protocol):
    outage_until: float

    @property
    def clock(self) -> Callable[[], float]: ...

    @property
    def calls(self) -> Mapping[str, int]: ...


def add_test_hooks(app: web.Application, state: FaultState) -> None:
    """`POST /_sandbox/outage {"seconds": N}` (answer 503 for N s) and `GET /_sandbox/stats`."""

    async def outage(request: web.Request) -> web.Response:
        seconds = float((await request.json()).get("seconds", 0))
        state.outage_until = state.clock() + seconds
        return web.json_response({"outage_until": state.outage_until})

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(dict(state.calls))

    app.router.add_post("/_sandbox/outage", outage)
    app.router.add_get("/_sandbox/stats", stats)


def jwks_context(
    key: web.AppKey[JwksCache],
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context giving the app a JWKS cache with its own HTTP session."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession() as session:
            app[key] = JwksCache(session)
            yield

    return context
