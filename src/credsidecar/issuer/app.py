"""The issuer's HTTP API (aiohttp): discovery, JWKS, mint, exchange, revocation.

GET  /.well-known/openid-configuration     public: the clouds read it
GET  /.well-known/jwks.json                public
POST /v1/launch-tokens                     platform API key
POST /v1/token                             RFC 8693 token exchange; the launch token is the proof
POST /v1/runs/{run}/revoke                 platform API key
POST /v1/users/{user}/disable|enable       platform API key
GET  /healthz
and the HPC routes (hpc_api.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from credsidecar.errors import (
    BadRequest,
    CredsidecarError,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
)
from credsidecar.issuer.assembly import Issuer
from credsidecar.issuer.hpc_api import add_hpc_routes
from credsidecar.issuer.http_common import (
    HPC,
    HPC_LAUNCHES,
    SERVICE,
    bearer_token,
    error_response,
    form_body,
    json_body,
    no_store_json,
)
from credsidecar.issuer.launch_request import LaunchRequest

__all__ = ["HPC", "SERVICE", "create_app", "json_body", "no_store_json"]

log = logging.getLogger(__name__)

# Keys are re-read from the store this often, so a `rotate-key` run by an admin is picked up.
KEY_REFRESH_SECONDS = 5.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turns every failure into a CredsidecarError answered by `error_response` (one mapping for
    the issuer's and the HPC API's routes); no traceback ever reaches a client."""
    try:
        return await handler(request)
    except CredsidecarError as exc:
        return error_response(exc)
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[SERVICE].config.max_body_bytes
        return error_response(PayloadTooLarge(f"request body exceeds {limit} bytes"))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        where = f"{request.method} {request.path}: {exc.reason}"
        refusal = NotFound(where) if exc.status == 404 else BadRequest(where)
        refusal.status = exc.status  # aiohttp's own (405 for a wrong method, ...)
        return error_response(refusal)
    except Exception:
        log.exception("unexpected error serving %s %s", request.method, request.path)
        return error_response(CredsidecarError("internal error; see issuer log"))


def _platform_caller(request: web.Request) -> str:
    """Authenticates a platform API key; returns the key's name for the audit trail."""
    presented = bearer_token(request, "platform API key")
    if presented is None:
        raise Unauthorized("this endpoint needs `Authorization: Bearer <platform API key>`")
    keys = request.app[SERVICE].config.platform_keys
    # Compare against every key (constant time each) so timing does not reveal which matched.
    matches = [k.name for k in keys if k.matches(presented)]
    if not matches:
        raise Unauthorized("the platform API key is not valid for this issuer")
    return matches[0]


async def discovery(request: web.Request) -> web.Response:
    return web.json_response(request.app[SERVICE].discovery())


async def jwks(request: web.Request) -> web.Response:
    # Short caching keeps clouds from hammering us while still picking up rotations quickly.
    return web.json_response(
        request.app[SERVICE].keys.jwks(), headers={"Cache-Control": "public, max-age=300"}
    )


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def mint(request: web.Request) -> web.Response:
    caller = _platform_caller(request)
    launch = LaunchRequest.from_json(await json_body(request))
    service = request.app[SERVICE]
    result = await asyncio.to_thread(service.mint, launch, caller)
    return no_store_json(
        {
            "token": result.token,
            "jti": result.jti,
            "kid": result.kid,
            "expires_at": result.expires_at,
            "identities": result.identities,
        },
        status=201,
    )


async def token_exchange(request: web.Request) -> web.Response:
    if request.content_type == "application/json":
        body = await json_body(request)
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        form = {k: v for k, v in body.items() if isinstance(v, str)}
    else:
        form = await form_body(request)  # RFC 8693 requests are application/x-www-form-urlencoded
    service = request.app[SERVICE]
    result = await asyncio.to_thread(service.exchange, form)
    now = service.now()
    return no_store_json(
        {
            "access_token": result.token,
            "issued_token_type": "urn:ietf:params:oauth:token-type:jwt",
            "token_type": "N_A",
            "expires_in": max(0, result.expires_at - now),
            "provider": result.provider,
            "identity": result.identity,
        }
    )


async def _reason(request: web.Request) -> str | None:
    """The optional `{"reason": ...}` body of admin actions, kept for the audit trail."""
    body = await json_body(request)
    reason = body.get("reason") if isinstance(body, dict) else None
    if reason is not None and (not isinstance(reason, str) or len(reason) > 500):
        raise BadRequest("`reason` must be a string of at most 500 characters")
    return reason


async def revoke_run(request: web.Request) -> web.Response:
    caller = _platform_caller(request)
    reason = await _reason(request)
    run = request.match_info["run"]
    service = request.app[SERVICE]
    fresh = await asyncio.to_thread(service.revoke_run, run, reason, caller)
    return no_store_json({"run": run, "revoked": True, "already_revoked": not fresh})


def _user_toggle(disabled: bool) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        caller = _platform_caller(request)
        reason = await _reason(request)
        user = request.match_info["user"]
        service = request.app[SERVICE]
        await asyncio.to_thread(service.set_user_disabled, user, disabled, reason, caller)
        return no_store_json({"user": user, "disabled": disabled})

    return handler


async def _key_refresher(app: web.Application) -> AsyncIterator[None]:
    service = app[SERVICE]

    async def loop() -> None:
        while True:
            await asyncio.sleep(KEY_REFRESH_SECONDS)
            try:
                await asyncio.to_thread(service.keys.refresh)
            except CredsidecarError as exc:
                log.error("key refresh failed, keeping the keys in memory: %s", exc.message)

    tasks = [asyncio.create_task(loop()), asyncio.create_task(service.policy_holder.watch())]
    yield
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def create_app(issuer: Issuer) -> web.Application:
    """The issuer's HTTP API over services composed at start-up (assembly.py)."""
    app = web.Application(
        middlewares=[error_middleware], client_max_size=issuer.config.max_body_bytes
    )
    app[SERVICE] = issuer.tokens
    app[HPC] = issuer.hpc
    app[HPC_LAUNCHES] = issuer.hpc_launches
    app.router.add_get("/.well-known/openid-configuration", discovery)
    app.router.add_get("/.well-known/jwks.json", jwks)
    app.router.add_get("/healthz", healthz)
    app.router.add_post("/v1/launch-tokens", mint)
    app.router.add_post("/v1/token", token_exchange)
    app.router.add_post("/v1/runs/{run}/revoke", revoke_run)
    app.router.add_post("/v1/users/{user}/disable", _user_toggle(True))
    app.router.add_post("/v1/users/{user}/enable", _user_toggle(False))
    add_hpc_routes(app)
    app.cleanup_ctx.append(_key_refresher)
    return app
