"""A stand-in for an EC2 node's own IMDS (IMDSv2 only): the node's instance profile.

    PUT /latest/api/token   X-aws-ec2-metadata-token-ttl-seconds: 1..21600  -> a session token
    GET /latest/meta-data/iam/security-credentials/     X-aws-ec2-metadata-token -> role name
    GET /latest/meta-data/iam/security-credentials/NAME -> {"Code": "Success", "Type",
        "AccessKeyId", "SecretAccessKey", "Token", "Expiration", "LastUpdated"}

as EC2 answers them with IMDSv1 disabled: no or an unknown session token is 401; a PUT without
the TTL header is 400; X-Forwarded-For is refused (403), as EC2 does for the PUT. The
credentials are real moto session credentials of the sandbox-node role (assumed by the sandbox
admin, session `AWS_NODE_SESSION`), renewed when less than five minutes are left; moto enforces
that role's permissions, and the trust policies of the roles it may assume admit its session.

Test hook: `GET /_sandbox/requests`, the paths asked for (the last `MAX_LOGGED`), so tests see
what the sidecar asked the node for.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from credsidecar.sandbox.aws.moto_backend import REGION, MotoBackend, _role_policy
from credsidecar.sandbox.seed import ACCOUNT, AWS_NODE_IDENTITIES, AWS_NODE_ROLE, AWS_NODE_SESSION

__all__ = ["MAX_LOGGED", "NodeImds", "create_node_imds_app", "seed_node_role"]

CREDENTIALS_PATH = "/latest/meta-data/iam/security-credentials/"
MAX_LOGGED = 256
MAX_TOKENS = 1024
RENEW_BEFORE = 300.0


def node_session_arn() -> str:
    return f"arn:aws:sts::{ACCOUNT}:assumed-role/{AWS_NODE_ROLE.name}/{AWS_NODE_SESSION}"


def seed_node_role(moto: MotoBackend) -> None:
    """Creates the sandbox-node role (with the admin's credentials: moto enforces IAM by now),
    lets it assume the roles node identities name, and has their trust policies admit its
    session (moto matches the principal literally)."""
    import boto3  # the sandbox's own dependency, as in moto_backend

    iam = boto3.client("iam", endpoint_url=moto.url, region_name=REGION, **moto.admin)
    admin = f"arn:aws:iam::{ACCOUNT}:user/sandbox-admin"
    targets = sorted({i.role_arn for i in AWS_NODE_IDENTITIES if i.role_arn})

    def trust(*principals: str) -> str:
        return json.dumps({"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Principal": {"AWS": list(principals)},
            "Action": ["sts:AssumeRole", "sts:SetSourceIdentity", "sts:TagSession"]}]})  # fmt: skip

    iam.create_role(RoleName=AWS_NODE_ROLE.name, AssumeRolePolicyDocument=trust(admin))
    policy = _role_policy(AWS_NODE_ROLE.read_write, AWS_NODE_ROLE.read_only)
    policy["Statement"].append({"Effect": "Allow", "Action": "sts:AssumeRole",
                                "Resource": targets})  # fmt: skip
    iam.put_role_policy(RoleName=AWS_NODE_ROLE.name, PolicyName="node",
                        PolicyDocument=json.dumps(policy))  # fmt: skip
    for arn in targets:
        iam.update_assume_role_policy(RoleName=arn.rsplit("/", 1)[-1],
                                      PolicyDocument=trust(admin, node_session_arn()))  # fmt: skip


@dataclass
class NodeImds:
    moto: MotoBackend
    clock: Callable[[], float] = time.time
    tokens: dict[str, float] = field(default_factory=dict)  # session token -> expiry
    requests: deque[dict[str, str | int]] = field(default_factory=lambda: deque(maxlen=MAX_LOGGED))
    _credentials: dict[str, Any] | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def credentials(self) -> dict[str, Any]:
        async with self._lock:
            found = self._credentials
            if found is None or found["Expiration"].timestamp() - self.clock() < RENEW_BEFORE:
                client = await asyncio.to_thread(self.moto.admin_sts)
                result = await asyncio.to_thread(
                    client.assume_role, RoleArn=AWS_NODE_ROLE.arn,
                    RoleSessionName=AWS_NODE_SESSION, DurationSeconds=3600,
                )  # fmt: skip
                found = self._credentials = dict(result["Credentials"])
            return found


STATE = web.AppKey("aws_node_imds", NodeImds)


def _log(node: NodeImds, request: web.Request, status: int) -> None:
    node.requests.append({"method": request.method, "path": request.path[:200], "status": status})


async def put_token(request: web.Request) -> web.Response:
    node = request.app[STATE]
    ttl = request.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "")
    if "X-Forwarded-For" in request.headers:
        _log(node, request, 403)
        return web.Response(status=403, text="Forbidden")
    if not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
        _log(node, request, 400)
        return web.Response(status=400, text="Bad Request")
    now = node.clock()
    # Bounded: forget expired tokens, and the oldest beyond MAX_TOKENS.
    node.tokens = {t: e for t, e in node.tokens.items() if e > now}
    while len(node.tokens) >= MAX_TOKENS:
        del node.tokens[next(iter(node.tokens))]
    token = secrets.token_urlsafe(32)
    node.tokens[token] = now + int(ttl)
    _log(node, request, 200)
    return web.Response(text=token, headers={"X-aws-ec2-metadata-token-ttl-seconds": ttl})


async def security_credentials(request: web.Request) -> web.Response:
    node = request.app[STATE]
    token = request.headers.get("X-aws-ec2-metadata-token", "")
    if node.tokens.get(token, 0.0) <= node.clock():
        _log(node, request, 401)
        return web.Response(status=401, text="Unauthorized")
    name = request.match_info.get("name", "")
    if not name:
        _log(node, request, 200)
        return web.Response(text=AWS_NODE_ROLE.name)
    if name != AWS_NODE_ROLE.name:
        _log(node, request, 404)
        return web.Response(status=404, text="Not Found")
    creds = await node.credentials()
    _log(node, request, 200)
    return web.json_response(
        {
            "Code": "Success",
            "LastUpdated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(node.clock())),
            "Type": "AWS-HMAC",
            "AccessKeyId": creds["AccessKeyId"],
            "SecretAccessKey": creds["SecretAccessKey"],
            "Token": creds["SessionToken"],
            "Expiration": creds["Expiration"].strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
    )


async def logged(request: web.Request) -> web.Response:
    return web.json_response(list(request.app[STATE].requests))


def create_node_imds_app(node: NodeImds) -> web.Application:
    app = web.Application(client_max_size=4 * 1024)
    app[STATE] = node
    app.router.add_put("/latest/api/token", put_token)
    app.router.add_get(CREDENTIALS_PATH, security_credentials)
    app.router.add_get(CREDENTIALS_PATH + "{name}", security_credentials)
    app.router.add_get("/_sandbox/requests", logged)
    return app
