"""The node's instance profile through the node's IMDS (IMDSv2), then AssumeRole signed by
botocore: fake IMDS and STS servers for what is asked, refusals and outages."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from credsidecar.clouds.aws import AwsSettings
from credsidecar.clouds.aws_node import AwsNodeExchanger, _load_botocore
from credsidecar.errors import BadRequest, ConfigError, Forbidden, Unavailable

ROLE = "arn:aws:iam::123456789012:role/alice-data"
WHO = "user alice (run r1)"
PROFILE = {"Code": "Success", "AccessKeyId": "ASIANODE", "SecretAccessKey": "node-secret",
           "Token": "node-session", "Expiration": "2030-01-01T00:00:00Z"}  # fmt: skip
ASSUMED = """<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
<AssumeRoleResult><AssumedRoleUser><Arn>arn:aws:sts::123456789012:assumed-role/alice-data/alice@r1</Arn>
<AssumedRoleId>AROA:alice@r1</AssumedRoleId></AssumedRoleUser><Credentials>
<AccessKeyId>ASIAALICE</AccessKeyId><SecretAccessKey>alice-secret</SecretAccessKey>
<SessionToken>alice-session</SessionToken><Expiration>2030-01-01T01:00:00Z</Expiration>
</Credentials></AssumeRoleResult></AssumeRoleResponse>"""
DENIED = """<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code>
<Message>User is not authorized to perform: sts:AssumeRole</Message></Error></ErrorResponse>"""


class FakeNode:
    def __init__(self) -> None:
        self.asked: list[tuple[str, str, dict[str, str]]] = []
        self.credentials: tuple[int, Any] = (200, PROFILE)
        self.sts: list[tuple[int, str]] = [(200, ASSUMED)]
        self.sts_seen: list[tuple[dict[str, str], dict[str, str]]] = []

    async def token(self, request: web.Request) -> web.Response:
        self.asked.append(("PUT", request.path, dict(request.headers)))
        return web.Response(text="imds-session")

    async def role(self, request: web.Request) -> web.Response:
        self.asked.append(("GET", request.path, dict(request.headers)))
        if request.match_info.get("name"):
            status, body = self.credentials
            return web.json_response(body, status=status)
        return web.Response(text="sandbox-node")

    async def assume(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.sts_seen.append((form, dict(request.headers)))
        status, body = self.sts.pop(0)
        return web.Response(status=status, text=body, content_type="text/xml")


@pytest.fixture
async def fake(aiohttp_server: Any) -> AsyncIterator[tuple[FakeNode, str]]:
    node = FakeNode()
    app = web.Application()
    app.router.add_put("/latest/api/token", node.token)
    app.router.add_get("/latest/meta-data/iam/security-credentials/", node.role)
    app.router.add_get("/latest/meta-data/iam/security-credentials/{name}", node.role)
    app.router.add_post("/", node.assume)
    server = await aiohttp_server(app)
    yield node, str(server.make_url("")).rstrip("/")


def exchanger(http: aiohttp.ClientSession, url: str, role: str = "", policy: str | None = None,
              **kwargs: Any) -> AwsNodeExchanger:  # fmt: skip
    settings = AwsSettings(role_arn=role, identity_name="node-alice", session_name="alice@r1",
                           sts_endpoint=url, session_policy=policy)  # fmt: skip
    return AwsNodeExchanger(settings, http, WHO, url, **kwargs)


def no_botocore() -> Any:
    raise AssertionError("the instance profile alone needs no botocore")


async def test_the_instance_profile_comes_over_imdsv2_without_botocore(
    fake: tuple[FakeNode, str], http: aiohttp.ClientSession
) -> None:
    node, url = fake
    creds = await exchanger(http, url, load_botocore=no_botocore).fetch()
    assert (creds.access_key_id, creds.session_token) == ("ASIANODE", "node-session")
    assert creds.role_arn == "instance-profile/sandbox-node"
    put, listing, get = node.asked
    assert put[2]["X-aws-ec2-metadata-token-ttl-seconds"] == "21600"
    assert listing[2]["X-aws-ec2-metadata-token"] == get[2]["X-aws-ec2-metadata-token"]
    assert get[1].endswith("/sandbox-node") and node.sts_seen == []


async def test_with_a_role_assume_role_is_signed_with_the_profile_and_carries_the_policy(
    fake: tuple[FakeNode, str], http: aiohttp.ClientSession
) -> None:
    node, url = fake
    creds = await exchanger(http, url, ROLE, '{"Statement":[]}').fetch()
    assert (creds.access_key_id, creds.role_arn, creds.account_id) == (
        "ASIAALICE", ROLE, "123456789012")  # fmt: skip
    assert creds.assumed_role_arn.endswith("assumed-role/alice-data/alice@r1")
    [(form, headers)] = node.sts_seen
    assert form == {"Action": "AssumeRole", "Version": "2011-06-15", "RoleArn": ROLE,
                    "RoleSessionName": "alice@r1", "DurationSeconds": "3600",
                    "Policy": '{"Statement":[]}'}  # fmt: skip
    assert (
        headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=ASIANODE/")
        and "/us-east-1/sts/aws4_request" in headers["Authorization"]
    )
    assert headers["X-Amz-Security-Token"] == "node-session"


async def test_a_refused_assume_role_says_what_to_allow(
    fake: tuple[FakeNode, str], http: aiohttp.ClientSession
) -> None:
    node, url = fake
    node.sts = [(403, DENIED)]
    with pytest.raises(Forbidden) as info:
        await exchanger(http, url, ROLE).fetch()
    assert info.value.message.startswith(
        f"{WHO} may not assume {ROLE} from the node's instance profile (aws node identity "
        f"'node-alice'): allow sts:AssumeRole on {ROLE} to the instance profile's role, and "
        f"admit that role in {ROLE}'s trust policy. STS said: AccessDenied"
    )


async def test_a_malformed_session_policy_is_a_bad_request(
    fake: tuple[FakeNode, str], http: aiohttp.ClientSession
) -> None:
    node, url = fake
    node.sts = [(400, DENIED.replace("AccessDenied", "MalformedPolicyDocument"))]
    with pytest.raises(BadRequest, match="check the identity's session_policy"):
        await exchanger(http, url, ROLE, "{").fetch()


@pytest.mark.parametrize(
    ("status", "kind", "fragment"),
    [
        (404, Forbidden, "the node has no instance profile (or not that role)"),
        (503, Unavailable, "the node's IMDS failed for user alice (run r1) as aws node "
                           "identity 'node-alice' (the node's instance profile); retrying"),
    ],
)  # fmt: skip
async def test_imds_refusals_name_user_run_identity_and_the_answer(
    fake: tuple[FakeNode, str],
    http: aiohttp.ClientSession,
    status: int,
    kind: type[Exception],
    fragment: str,
) -> None:
    node, url = fake
    node.credentials = (status, {"Code": "nope"})
    with pytest.raises(kind) as info:
        await exchanger(http, url).fetch()
    assert fragment in str(info.value)
    assert f"the node's IMDS said (HTTP {status} for GET " in str(info.value)


async def test_an_unreachable_imds_names_the_flag(http: aiohttp.ClientSession) -> None:
    with pytest.raises(Unavailable) as info:
        await exchanger(http, "http://127.0.0.1:9").fetch()
    assert "the node's IMDS is unreachable for user alice (run r1)" in str(info.value)
    assert "--aws-node-imds-url" in str(info.value)


def test_without_botocore_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "botocore.auth", None)
    with pytest.raises(ConfigError) as info:
        _load_botocore()
    assert "pip install 'credsidecar[node]'" in info.value.message
