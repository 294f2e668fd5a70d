"""A sidecar app with a controllable credential cache, served over real HTTP on loopback."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from credsidecar.audit import AuditLog
from credsidecar.cache import CredentialCache
from credsidecar.clouds.contracts import AwsCredentials
from credsidecar.endpoints.aws import AwsEndpoints
from credsidecar.endpoints.guards import Guard, RefusalLog, allowed_hosts
from credsidecar.providers import Provider
from credsidecar.server import create_sidecar_app
from tests.support.ports import held_port

SECRET = "container-secret-for-tests"


class Upstream:
    def __init__(self) -> None:
        self.serial = 0
        self.lifetime = 3600.0
        self.error: Exception | None = None

    async def fetch(self) -> AwsCredentials:
        if self.error is not None:
            raise self.error
        self.serial += 1
        return AwsCredentials(
            access_key_id=f"ASIATEST{self.serial:012d}",
            secret_access_key=f"secret-{self.serial}",
            session_token=f"session-{self.serial}",
            expires_at=time.time() + self.lifetime,
            role_arn="arn:aws:iam::123456789012:role/alice-data",
            assumed_role_arn="arn:aws:sts::123456789012:assumed-role/alice-data/alice@r1",
            account_id="123456789012",
        )


class Mono:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset


@dataclass
class Sidecar:
    client: TestClient
    cache: CredentialCache[AwsCredentials]
    upstream: Upstream
    audit: io.StringIO
    mono: Mono
    port: int
    refusal_mono: Mono

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.audit.getvalue().splitlines()]

    @property
    def host(self) -> dict[str, str]:
        return {"Host": f"127.0.0.1:{self.port}"}


@pytest.fixture
async def sidecar(aiohttp_client: Callable[..., Any]) -> Sidecar:
    upstream, mono, stream = Upstream(), Mono(), io.StringIO()
    audit = AuditLog(stream)
    cache: CredentialCache[AwsCredentials] = CredentialCache("AWS (user alice)", upstream.fetch)
    port, server_kwargs = held_port()
    refusal_mono = Mono()
    guard = Guard(allowed_hosts(port), RefusalLog(audit, mono=refusal_mono))
    who = {"user": "alice", "run": "r1"}
    endpoints = AwsEndpoints(cache, SECRET, audit, guard, "alice-data", who, mono=mono)
    provider = Provider(
        name="aws",
        description="test",
        routes=guard.routes(endpoints.routes()),
        exports={},
        unsets=[],
        start=lambda: cache.start(10),
        ready=cache.current_entry,
        close=cache.close,
    )
    app = create_sidecar_app(guard, [provider])
    client = await aiohttp_client(app, server_kwargs=server_kwargs)
    return Sidecar(client, cache, upstream, stream, mono, port, refusal_mono)
