"""Starts the sandbox clouds for one issuer and describes them for the job and the tests."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from credsidecar.sandbox.gcp_runner import GcpSandbox, start_gcp_sandbox
from credsidecar.sandbox.moto_backend import REGION, MotoBackend
from credsidecar.sandbox.seed import ACCOUNT, REFERENCE_KEY, ROLES
from credsidecar.sandbox.sts import StsState, create_sts_app
from credsidecar.sandbox.trust import trust_policy

__all__ = ["Sandbox", "start_sandbox"]


@dataclass
class Sandbox:
    moto: MotoBackend
    sts_url: str
    gcp: GcpSandbox
    _runner: web.AppRunner

    def describe(self) -> dict[str, Any]:
        return {
            "aws": {
                "endpoint_url": self.moto.url,
                "sts_endpoint": self.sts_url,
                "account": ACCOUNT,
                "region": REGION,
                "roles": {r.name: r.arn for r in ROLES},
            },
            "buckets": {
                "alice-data": "alice: read-write",
                "bob-data": "bob: read-write",
                "shared-refs": f"alice and bob: read-only; holds {REFERENCE_KEY}",
            },
            "users": ["alice", "bob"],
            **self.gcp.describe(),
        }

    async def stop(self) -> None:
        await self.gcp.stop()
        await self._runner.cleanup()
        await asyncio.to_thread(self.moto.stop)


async def start_sandbox(issuer_url: str, aws_audience: str = "sts.amazonaws.com") -> Sandbox:
    moto = await asyncio.to_thread(MotoBackend.start)
    state = StsState(
        moto=moto,
        providers={issuer_url: (aws_audience,)},
        trust={role.arn: trust_policy(role, issuer_url, aws_audience) for role in ROLES},
    )
    runner = web.AppRunner(create_sts_app(state), access_log=None, handle_signals=False)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    site = web.SockSite(runner, sock)
    await site.start()
    port = sock.getsockname()[1]
    gcp = await start_gcp_sandbox(issuer_url)
    return Sandbox(moto, f"http://127.0.0.1:{port}", gcp, runner)
