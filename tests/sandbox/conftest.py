"""A real issuer served on loopback (its issuer_url matches its port, so stand-ins can fetch
its JWKS) and the GCP and Azure sandboxes trusting it, with a sandbox clock tests can move
forward."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from credsidecar.issuer.app import create_app
from credsidecar.issuer.config import load_config
from credsidecar.issuer.example import write_example
from credsidecar.issuer.runner import open_service
from credsidecar.listen import bind_loopback, port_of
from credsidecar.sandbox.azure.runner import AzureSandbox, start_azure_sandbox
from credsidecar.sandbox.gcp.runner import GcpSandbox, start_gcp_sandbox
from credsidecar.sandbox.seed import GCP_AUDIENCE

EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"


class ShiftedClock:
    """The real clock plus an offset: issuer-signed tokens stay valid until a test shifts it."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@dataclass
class ServedIssuer:
    url: str
    api_key: str
    http: aiohttp.ClientSession

    async def mint(self, user: str, run: str = "run-1", workspace: str | None = None) -> str:
        headers = {"Authorization": f"Bearer {self.api_key}"}
        body = {"user": user, "run": run, **({"workspace": workspace} if workspace else {})}
        async with self.http.post(f"{self.url}/v1/launch-tokens", json=body, headers=headers) as r:
            assert r.status == 201, await r.text()
            return str((await r.json())["token"])

    async def cloud_token(
        self,
        user: str,
        audience: str = GCP_AUDIENCE,
        identity: str | None = None,
        workspace: str | None = None,
    ) -> str:
        """The user's launch token exchanged for a cloud-audience token, as the sidecar does;
        `identity` ("PROVIDER:NAME") selects a granted identity other than the default."""
        form = {
            "grant_type": EXCHANGE,
            "subject_token_type": JWT_TYPE,
            "subject_token": await self.mint(user, workspace=workspace),
            "audience": audience,
        }
        if identity is not None:
            form["resource"] = f"urn:credsidecar:identity:{identity}"
        async with self.http.post(f"{self.url}/v1/token", data=form) as r:
            assert r.status == 200, await r.text()
            return str((await r.json())["access_token"])


@pytest.fixture
async def issuer(tmp_path: Path) -> AsyncIterator[ServedIssuer]:
    sock = bind_loopback()  # held until the issuer listens on it (its URL names the port)
    with contextlib.ExitStack() as stack:
        stack.callback(sock.close)  # a no-op once the site closed it
        config_path, api_key = await asyncio.to_thread(write_example, tmp_path, port_of(sock))
        config = await asyncio.to_thread(load_config, config_path)
        service = await asyncio.to_thread(stack.enter_context, open_service(config))
        runner = web.AppRunner(create_app(service), access_log=None)
        await runner.setup()
        try:  # the runner and the service are closed however set-up or the test ends
            await web.SockSite(runner, sock).start()
            async with aiohttp.ClientSession() as http:
                yield ServedIssuer(config.issuer_url, api_key, http)
        finally:
            await runner.cleanup()
            await asyncio.to_thread(stack.close)


@pytest.fixture
def sandbox_clock() -> ShiftedClock:
    return ShiftedClock()


@pytest.fixture
async def gcp(issuer: ServedIssuer, sandbox_clock: ShiftedClock) -> AsyncIterator[GcpSandbox]:
    sandbox = await start_gcp_sandbox(issuer.url, clock=sandbox_clock)
    yield sandbox
    await sandbox.stop()


@pytest.fixture
async def azure(
    issuer: ServedIssuer, sandbox_clock: ShiftedClock, tmp_path: Path
) -> AsyncIterator[AzureSandbox]:
    sandbox = await start_azure_sandbox(issuer.url, tmp_path / "azure", clock=sandbox_clock)
    yield sandbox
    await sandbox.stop()


@pytest.fixture
async def https(azure: AzureSandbox) -> AsyncIterator[aiohttp.ClientSession]:
    """A client session that trusts the Azure sandbox's CA (and no other)."""
    context = await asyncio.to_thread(azure.ca.client_context)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
        yield session


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def call(
    http: aiohttp.ClientSession, method: str, url: str, token: str | None = None, **kwargs: Any
) -> tuple[int, Any]:
    """(status, JSON body or raw bytes) of one request, with a bearer token if given."""
    headers = dict(kwargs.pop("headers", {}))
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with http.request(method, url, headers=headers, **kwargs) as resp:
        if resp.content_type == "application/json":
            return resp.status, await resp.json()
        return resp.status, await resp.read()
