"""The issuer's HPC API (hpc_service.py and hpc_launch.py say who may do what).

Members and owners, with `Authorization: Bearer <member API key>`:
GET    /v1/hpc/clusters                      every cluster (no secrets in them)
POST   /v1/hpc/clusters                      owners: create {"name", "host", "port", ...}
GET    /v1/hpc/clusters/{name}
PATCH  /v1/hpc/clusters/{name}               owners: change the keys given
DELETE /v1/hpc/clusters/{name}               owners (members' stored credentials go too)
GET    /v1/hpc/clusters/{name}/credential    your own stored credential (never the key)
PUT    /v1/hpc/clusters/{name}/credential    {"username", "private_key", "passphrase"}
DELETE /v1/hpc/clusters/{name}/credential
GET    /v1/hpc/status                        owners: every member; members: themselves

Launches, with the launch token in the body:
POST   /v1/hpc/launch-cluster                {"launch_token", "cluster"}: its mode and host
POST   /v1/ssh/certificates                  {"launch_token", "cluster", "public_key"}
POST   /v1/hpc/stored-key                    {"launch_token", "cluster"}: key and username
POST   /v1/hpc/stored-key/sign               {"launch_token", "cluster", "data"}

Public:
GET    /v1/ssh/ca.pub                        the CA line for TrustedUserCAKeys
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiohttp import web

from credsidecar.issuer.hpc_launch import HpcLaunches
from credsidecar.issuer.hpc_service import HpcService, Member
from credsidecar.issuer.http_common import (
    HPC,
    HPC_LAUNCHES,
    bearer_token,
    json_body,
    no_store_json,
)

__all__ = ["add_hpc_routes"]


T = TypeVar("T")


def _call(request: web.Request, use: Callable[[HpcService], T]) -> Awaitable[T]:
    """Runs `use(hpc service)` off the event loop: SQLite, the policy files and signing block."""
    return asyncio.to_thread(use, request.app[HPC])


def _launch_call(request: web.Request, use: Callable[[HpcLaunches], T]) -> Awaitable[T]:
    """Runs `use(hpc launches)` off the event loop, like `_call`."""
    return asyncio.to_thread(use, request.app[HPC_LAUNCHES])


async def _member(request: web.Request) -> Member:
    token = bearer_token(request, "member API key")
    return await _call(request, lambda hpc: hpc.authenticate(token))


async def list_clusters(request: web.Request) -> web.Response:
    member = await _member(request)
    return no_store_json({"clusters": await _call(request, lambda hpc: hpc.list_clusters(member))})


async def create_cluster(request: web.Request) -> web.Response:
    member, body = await _member(request), await json_body(request)
    cluster = await _call(request, lambda hpc: hpc.create_cluster(member, body))
    return no_store_json(cluster.public(), status=201)


async def get_cluster(request: web.Request) -> web.Response:
    await _member(request)
    cluster = await _call(request, lambda hpc: hpc.cluster(request.match_info["name"]))
    return no_store_json(cluster.public())


async def update_cluster(request: web.Request) -> web.Response:
    member, body = await _member(request), await json_body(request)
    cluster = await _call(
        request, lambda hpc: hpc.update_cluster(member, request.match_info["name"], body)
    )
    return no_store_json(cluster.public())


async def delete_cluster(request: web.Request) -> web.Response:
    member = await _member(request)
    await _call(request, lambda hpc: hpc.delete_cluster(member, request.match_info["name"]))
    return web.Response(status=204)


async def get_credential(request: web.Request) -> web.Response:
    member = await _member(request)
    found = await _call(request, lambda hpc: hpc.get_credential(member, request.match_info["name"]))
    return no_store_json(found)


async def put_credential(request: web.Request) -> web.Response:
    member, body = await _member(request), await json_body(request)
    stored = await _call(
        request, lambda hpc: hpc.put_credential(member, request.match_info["name"], body)
    )
    return no_store_json(stored)


async def delete_credential(request: web.Request) -> web.Response:
    member = await _member(request)
    await _call(request, lambda hpc: hpc.delete_credential(member, request.match_info["name"]))
    return web.Response(status=204)


async def status(request: web.Request) -> web.Response:
    member = await _member(request)
    return no_store_json({"members": await _call(request, lambda hpc: hpc.status(member))})


async def certificate(request: web.Request) -> web.Response:
    body = await json_body(request)
    return no_store_json(await _launch_call(request, lambda hpc: hpc.certificate(body)), status=201)


async def describe(request: web.Request) -> web.Response:
    body = await json_body(request)
    return no_store_json(await _launch_call(request, lambda hpc: hpc.describe_for_launch(body)))


async def stored_key(request: web.Request) -> web.Response:
    body = await json_body(request)
    return no_store_json(await _launch_call(request, lambda hpc: hpc.stored_key(body)))


async def sign(request: web.Request) -> web.Response:
    body = await json_body(request)
    return no_store_json(await _launch_call(request, lambda hpc: hpc.sign(body)))


async def ca_public_key(request: web.Request) -> web.Response:
    line = await _call(request, lambda hpc: hpc.ca_public_key())
    return web.Response(text=line + "\n", content_type="text/plain")


def add_hpc_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/v1/hpc/clusters", list_clusters)
    r.add_post("/v1/hpc/clusters", create_cluster)
    r.add_get("/v1/hpc/clusters/{name}", get_cluster)
    r.add_patch("/v1/hpc/clusters/{name}", update_cluster)
    r.add_delete("/v1/hpc/clusters/{name}", delete_cluster)
    r.add_get("/v1/hpc/clusters/{name}/credential", get_credential)
    r.add_put("/v1/hpc/clusters/{name}/credential", put_credential)
    r.add_delete("/v1/hpc/clusters/{name}/credential", delete_credential)
    r.add_get("/v1/hpc/status", status)
    r.add_post("/v1/ssh/certificates", certificate)
    r.add_post("/v1/hpc/launch-cluster", describe)
    r.add_post("/v1/hpc/stored-key", stored_key)
    r.add_post("/v1/hpc/stored-key/sign", sign)
    r.add_get("/v1/ssh/ca.pub", ca_public_key)
