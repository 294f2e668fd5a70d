"""The sandbox clouds in-process, and alice's and bob's credentials for them, the way the
sidecar gets them: a launch token minted by the real issuer, exchanged for a cloud-audience
token, then presented to the sandbox STS / IAM Credentials / Entra.

The issuer and the GCP and Azure sandboxes are tests/sandbox/conftest.py's fixtures (a test
module imports them with these); this adds AWS (moto and its STS stand-in) and a closed port.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from credsidecar.clouds.aws import AwsExchanger, AwsSettings
from credsidecar.clouds.contracts import AWS_DEFAULT_AUDIENCE, AwsCredentials
from credsidecar.launch.exchange import FederatedToken
from credsidecar.listen import bind_loopback, port_of
from credsidecar.sandbox.aws.runner import AwsSandbox, start_aws_sandbox
from credsidecar.sandbox.seed import ACCOUNT, ROLES
from tests.sandbox.conftest import ServedIssuer, azure, gcp, http, https, issuer, sandbox_clock

__all__ = [
    "ROLE_ARN",
    "aws",
    "aws_credentials",
    "azure",
    "closed_port",
    "gcp",
    "http",
    "https",
    "issuer",
    "sandbox_clock",
]

ROLE_ARN = {role.name: role.arn for role in ROLES}


@pytest.fixture
async def aws(issuer: ServedIssuer) -> AsyncIterator[AwsSandbox]:
    sandbox = await start_aws_sandbox(issuer.url, AWS_DEFAULT_AUDIENCE)
    yield sandbox
    await sandbox.stop()


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port bound but not listening: every connection to it is refused."""
    with bind_loopback() as sock:
        yield port_of(sock)


class _IssuerToken:
    """A TokenSupplier: the user's launch token exchanged at the served issuer."""

    def __init__(self, issuer: ServedIssuer, user: str) -> None:
        self._issuer, self._user = issuer, user

    async def token(self, audience: str, provider: str, identity: str | None) -> FederatedToken:
        chosen = f"{provider}:{identity}" if identity else None
        return FederatedToken(
            await self._issuer.cloud_token(self._user, audience, chosen), None, {}
        )


async def aws_credentials(
    aws: AwsSandbox, issuer: ServedIssuer, user: str, role: str | None = None
) -> AwsCredentials:
    """`user`'s credentials for `role` (default: the role named after the user's bucket)."""
    name = role or f"{user}-data"
    settings = AwsSettings(ROLE_ARN[name], identity_name=name, sts_endpoint=aws.sts_url,
                           session_name=f"{user}@preflight")  # fmt: skip
    async with aiohttp.ClientSession() as session:
        return await AwsExchanger(settings, _IssuerToken(issuer, user), session, user).fetch()


def admin_credentials(aws: AwsSandbox) -> AwsCredentials:
    """The sandbox administrator's keys (every action on every resource) as credentials."""
    keys = aws.moto.admin
    return AwsCredentials(
        keys["aws_access_key_id"], keys["aws_secret_access_key"], "", 0.0,
        f"arn:aws:iam::{ACCOUNT}:user/sandbox-admin", "", ACCOUNT,
    )  # fmt: skip


async def objects_under(aws: AwsSandbox, bucket: str, prefix: str) -> list[str]:
    """The keys under `prefix`, listed with the administrator's keys."""
    import boto3

    def run() -> list[str]:
        s3 = boto3.client("s3", endpoint_url=aws.moto.url, region_name="us-east-1",
                          **aws.moto.admin)  # fmt: skip
        listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix)
        return [item["Key"] for item in listed.get("Contents", [])]

    return await asyncio.to_thread(run)
