"""Starts the sandbox clouds for one issuer and describes them for the job and the tests."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from credsidecar.sandbox.azure_runner import AzureSandbox, start_azure_sandbox
from credsidecar.sandbox.azure_state import ACCESS_TOKEN_LIFETIME
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
    azure: AzureSandbox
    _runner: web.AppRunner

    def job_env(self) -> dict[str, str]:
        """Variables a job needs to reach the sandbox (GCP storage) and trust its HTTPS."""
        return {**self.gcp.job_env(), **self.azure.job_env()}

    def sidecar_flags(self) -> list[str]:
        """`credsidecar serve` flags pointing every cloud at this sandbox."""
        return [
            "--aws-sts-endpoint", self.sts_url, "--aws-endpoint-url", self.moto.url,
            "--gcp-sts-url", self.gcp.sts_url, "--gcp-iam-url", self.gcp.iam_url,
            "--azure-authority", self.azure.authority_url, "--ca-file", self.azure.ca_file,
            *(f"--job-env={name}={value}" for name, value in self.job_env().items()),
        ]  # fmt: skip

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
            **self.azure.describe(),
            "sidecar_flags": self.sidecar_flags(),
        }

    async def stop(self) -> None:
        await self.azure.stop()
        await self.gcp.stop()
        await self._runner.cleanup()
        await asyncio.to_thread(self.moto.stop)


async def start_sandbox(
    issuer_url: str,
    directory: Path,
    aws_audience: str = "sts.amazonaws.com",
    azure_token_lifetime: int = ACCESS_TOKEN_LIFETIME,
) -> Sandbox:
    """Every sandbox cloud trusting `issuer_url`; the Azure CA's files go to `directory`."""
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
    azure = await start_azure_sandbox(
        issuer_url, directory / "azure", token_lifetime=azure_token_lifetime
    )
    return Sandbox(moto, f"http://127.0.0.1:{port}", gcp, azure, runner)
