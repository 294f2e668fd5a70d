"""Starts the sandbox clouds for one issuer and describes them for the job and the tests."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from credsidecar.clouds.contracts import AWS_DEFAULT_AUDIENCE
from credsidecar.sandbox.aws.runner import AwsSandbox, start_aws_sandbox
from credsidecar.sandbox.azure.runner import AzureSandbox, start_azure_sandbox
from credsidecar.sandbox.azure.state import ACCESS_TOKEN_LIFETIME
from credsidecar.sandbox.gcp.runner import GcpSandbox, start_gcp_sandbox
from credsidecar.sandbox.hpc.runner import HpcSandbox, start_hpc_sandbox
from credsidecar.sandbox.seed import REFERENCE_KEY, USERS

__all__ = ["Sandbox", "start_sandbox"]


@dataclass
class Sandbox:
    aws: AwsSandbox
    gcp: GcpSandbox
    azure: AzureSandbox
    hpc: HpcSandbox  # two login nodes; dev.py registers them at the issuer

    def job_env(self) -> dict[str, str]:
        """Variables a job needs to reach the sandbox (GCP storage) and trust its HTTPS."""
        return {**self.gcp.job_env(), **self.azure.job_env()}

    def sidecar_flags(self) -> list[str]:
        """`credsidecar serve` flags pointing every cloud at this sandbox."""
        return [
            "--aws-sts-endpoint", self.aws.sts_url, "--aws-endpoint-url", self.aws.moto.url,
            "--gcp-sts-url", self.gcp.sts_url, "--gcp-iam-url", self.gcp.iam_url,
            "--azure-authority", self.azure.authority_url, "--ca-file", self.azure.ca_file,
            "--azure-node-imds-url", self.azure.node_imds_url,
            "--gcp-node-metadata-url", self.gcp.node_metadata_url,
            "--aws-node-imds-url", self.aws.node_imds_url,
            *(f"--job-env={name}={value}" for name, value in self.job_env().items()),
        ]  # fmt: skip

    def describe(self) -> dict[str, Any]:
        return {
            **self.aws.describe(),
            "buckets": {
                "alice-data": "alice: read-write",
                "bob-data": "bob: read-write",
                "shared-refs": f"alice and bob: read-only; holds {REFERENCE_KEY}",
            },
            "users": list(USERS),
            **self.gcp.describe(),
            **self.azure.describe(),
            **self.hpc.describe(),
            "sidecar_flags": self.sidecar_flags(),
        }

    async def stop(self) -> None:
        await self.hpc.stop()
        await self.azure.stop()
        await self.gcp.stop()
        await self.aws.stop()


async def start_sandbox(
    issuer_url: str,
    directory: Path,
    aws_audience: str = AWS_DEFAULT_AUDIENCE,
    azure_token_lifetime: int = ACCESS_TOKEN_LIFETIME,
) -> Sandbox:
    """Every sandbox cloud trusting `issuer_url`, and the HPC login nodes trusting its SSH CA;
    the Azure CA's files go to `directory`/azure, the login nodes' to `directory`/hpc.

    Clouds start one after another; if one fails, those already started are stopped (in
    reverse order) before the error propagates, so nothing keeps running or holding a port.
    """
    async with contextlib.AsyncExitStack() as started:
        aws = await start_aws_sandbox(issuer_url, aws_audience)
        started.push_async_callback(aws.stop)
        gcp = await start_gcp_sandbox(issuer_url)
        started.push_async_callback(gcp.stop)
        azure = await start_azure_sandbox(
            issuer_url, directory / "azure", token_lifetime=azure_token_lifetime
        )
        started.push_async_callback(azure.stop)
        hpc = await start_hpc_sandbox(issuer_url, directory / "hpc")
        started.pop_all()  # all up: from here on the caller stops them
    return Sandbox(aws, gcp, azure, hpc)
