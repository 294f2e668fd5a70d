"""Starts the AWS pieces for one issuer: moto, and the STS stand-in in front of it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from credsidecar.sandbox.aws.moto_backend import REGION, MotoBackend
from credsidecar.sandbox.aws.node_imds import NodeImds, create_node_imds_app, seed_node_role
from credsidecar.sandbox.aws.sts import StsState, create_sts_app
from credsidecar.sandbox.aws.trust import trust_policy
from credsidecar.sandbox.seed import ACCOUNT, AWS_NODE_ROLE, ROLES
from credsidecar.sandbox.serving import serve_app

__all__ = ["AwsSandbox", "start_aws_sandbox"]


@dataclass
class AwsSandbox:
    moto: MotoBackend
    sts_url: str
    _runners: list[web.AppRunner] = field(repr=False)
    node_imds_url: str = ""  # the node's own IMDS (node_imds.py), plain HTTP like EC2's

    def describe(self) -> dict[str, Any]:
        return {
            "aws": {
                "endpoint_url": self.moto.url,
                "sts_endpoint": self.sts_url,
                "account": ACCOUNT,
                "region": REGION,
                "roles": {r.name: r.arn for r in ROLES},
                "node_imds_url": self.node_imds_url,
                "node_role": AWS_NODE_ROLE.arn,
            }
        }

    async def stop(self) -> None:
        for runner in reversed(self._runners):
            await runner.cleanup()
        await asyncio.to_thread(self.moto.stop)


async def start_aws_sandbox(issuer_url: str, audience: str) -> AwsSandbox:
    """moto seeded with the roles and buckets, and an STS stand-in trusting `issuer_url` for
    `audience`; whatever started is stopped again if a later step fails."""
    moto = await asyncio.to_thread(MotoBackend.start)
    runners: list[web.AppRunner] = []
    try:
        state = StsState(
            moto=moto,
            providers={issuer_url: (audience,)},
            trust={role.arn: trust_policy(role, issuer_url, audience) for role in ROLES},
        )
        sts_url = await serve_app(create_sts_app(state), runners)
        await asyncio.to_thread(seed_node_role, moto)
        node_imds_url = await serve_app(create_node_imds_app(NodeImds(moto)), runners)
    except BaseException:
        for runner in runners:
            await runner.cleanup()
        await asyncio.to_thread(moto.stop)
        raise
    return AwsSandbox(moto, sts_url, runners, node_imds_url)
