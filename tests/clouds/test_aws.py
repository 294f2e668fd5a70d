"""The AWS exchanger against a fake STS speaking the Query API: request shape and explanations."""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape

import aiohttp
import pytest
from aiohttp import web

from credsidecar.clouds.aws import AwsExchanger, AwsSettings, role_session_name
from credsidecar.clouds.upstream_http import MAX_RESPONSE_BYTES
from credsidecar.errors import BadRequest, CredsidecarError, Forbidden, InvalidGrant, Unavailable
from credsidecar.launch.exchange import FederatedToken

ROLE = "arn:aws:iam::123456789012:role/alice-data"
NS = "https://sts.amazonaws.com/doc/2011-06-15/"


class Supplier:
    def __init__(self) -> None:
        self.asked: list[tuple[str, str, str | None]] = []

    async def token(self, audience: str, provider: str, identity: str | None) -> FederatedToken:
        self.asked.append((audience, provider, identity))
        return FederatedToken("header.payload.signature", None, {})


@dataclass
class FakeSts:
    """Answers each POST with the next queued (status, body); records every form it gets."""

    answers: list[tuple[int, str]] = field(default_factory=list)
    forms: list[dict[str, str]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)

    def succeed(self, expires: datetime.datetime) -> None:
        self.answers.append((200, f"""<AssumeRoleWithWebIdentityResponse xmlns="{NS}">
  <AssumeRoleWithWebIdentityResult>
    <AssumedRoleUser><Arn>arn:aws:sts::123456789012:assumed-role/alice-data/alice@r1</Arn>
      <AssumedRoleId>AROA:alice@r1</AssumedRoleId></AssumedRoleUser>
    <Credentials>
      <SessionToken>{"t" * 40}</SessionToken>
      <SecretAccessKey>{"s" * 40}</SecretAccessKey>
      <Expiration>{expires.strftime("%Y-%m-%dT%H:%M:%SZ")}</Expiration>
      <AccessKeyId>ASIAEXAMPLE0000000001</AccessKeyId>
    </Credentials>
  </AssumeRoleWithWebIdentityResult>
  <ResponseMetadata><RequestId>r</RequestId></ResponseMetadata>
</AssumeRoleWithWebIdentityResponse>"""))  # fmt: skip

    def fail(self, code: str, message: str, status: int) -> None:
        kind = "Receiver" if status >= 500 else "Sender"
        self.answers.append((status, f'<ErrorResponse xmlns="{NS}"><Error><Type>{kind}</Type>'
                             f"<Code>{escape(code)}</Code><Message>{escape(message)}</Message>"
                             "</Error><RequestId>r</RequestId></ErrorResponse>"))  # fmt: skip

    async def handle(self, request: web.Request) -> web.Response:
        self.forms.append({k: str(v) for k, v in (await request.post()).items()})
        self.headers.append(dict(request.headers))
        status, body = self.answers.pop(0)
        return web.Response(status=status, text=body, content_type="text/xml")


@pytest.fixture
async def sts(aiohttp_server: Any) -> AsyncIterator[tuple[FakeSts, str]]:
    fake = FakeSts()
    app = web.Application()
    app.router.add_post("/", fake.handle)
    server = await aiohttp_server(app)
    yield fake, str(server.make_url(""))


def exchanger(
    endpoint: str, http: aiohttp.ClientSession, **settings: object
) -> tuple[AwsExchanger, Supplier]:
    supplier = Supplier()
    ex = AwsExchanger(
        AwsSettings(role_arn=ROLE, identity_name="alice-data", session_name="alice@r1",
                    sts_endpoint=endpoint, **settings),  # type: ignore[arg-type]
        supplier, http, "user alice (run r1)",
    )  # fmt: skip
    return ex, supplier


def test_role_session_name_fits_sts_limits() -> None:
    assert role_session_name("alice", "run-1") == "alice@run-1"
    assert role_session_name("alice", "nf/core:run 1") == "alice@nf-core-run-1"
    assert len(role_session_name("a" * 50, "r" * 50)) == 64
    assert role_session_name("a", None) == "a-"


async def test_fetch_calls_assume_role_with_web_identity(
    sts: tuple[FakeSts, str], http: aiohttp.ClientSession
) -> None:
    fake, endpoint = sts
    ex, supplier = exchanger(endpoint, http, duration=1800,
                             session_policy='{"Version":"2012-10-17"}')  # fmt: skip
    expires = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
    fake.succeed(expires)
    creds = await ex.fetch()
    assert fake.forms == [{
        "Action": "AssumeRoleWithWebIdentity", "Version": "2011-06-15", "RoleArn": ROLE,
        "RoleSessionName": "alice@r1", "WebIdentityToken": "header.payload.signature",
        "DurationSeconds": "1800", "Policy": '{"Version":"2012-10-17"}',
    }]  # fmt: skip
    assert "Authorization" not in fake.headers[0]  # unsigned: no credentials of ours are sent
    assert creds.expires_at == expires.timestamp()
    assert creds.account_id == "123456789012" and creds.role_name == "alice-data"
    assert creds.assumed_role_arn.endswith("assumed-role/alice-data/alice@r1")
    assert supplier.asked == [("sts.amazonaws.com", "aws", "alice-data")]
    assert "s" * 40 not in repr(creds)


@pytest.mark.parametrize(
    ("code", "message", "status", "kind", "fragment"),
    [
        ("AccessDenied", "Not authorized to perform sts:AssumeRoleWithWebIdentity", 403,
         Forbidden, "trust policy does not trust issuer"),
        ("AccessDenied", "Not authorized (role arn:... does not exist)", 403, Forbidden,
         "role does not exist"),
        ("InvalidIdentityToken", "No OpenIDConnect provider found in your account for https://i",
         400, Forbidden, "has no IAM OIDC provider for issuer"),
        ("InvalidIdentityToken", "Incorrect token audience", 400, Forbidden,
         "audience sts.amazonaws.com is not a client ID"),
        ("ExpiredTokenException", "Token expired", 400, InvalidGrant, "expired"),
        ("IDPCommunicationError", "could not reach", 400, Unavailable, "could not fetch"),
        ("Throttling", "Rate exceeded", 400, Unavailable, "throttling"),
        ("ValidationError", "bad session name", 400, BadRequest, "rejected the request"),
        ("InternalFailure", "oops", 500, Unavailable, "InternalFailure"),
        ("RegionDisabledException", "STS is not activated in this region", 403, Forbidden,
         "--aws-sts-endpoint"),
        ("IDPRejectedClaim", "Bad claims", 403, Forbidden, "IDPRejectedClaim: Bad claims"),
    ],
)  # fmt: skip
async def test_sts_errors_become_messages_naming_user_role_and_cause(
    code: str, message: str, status: int, kind: type[CredsidecarError], fragment: str,
    sts: tuple[FakeSts, str], http: aiohttp.ClientSession,
) -> None:  # fmt: skip
    fake, endpoint = sts
    ex, _ = exchanger(endpoint, http)
    fake.fail(code, message, status)
    with pytest.raises(kind) as info:
        await ex.fetch()
    assert fragment in info.value.message
    assert "user alice (run r1)" in info.value.message
    if kind is not Unavailable:
        assert ROLE in info.value.message
    assert info.value.retryable is (kind is Unavailable)


async def test_a_non_xml_server_error_is_retryable_and_quoted(
    sts: tuple[FakeSts, str], http: aiohttp.ClientSession
) -> None:
    fake, endpoint = sts
    ex, _ = exchanger(endpoint, http)
    fake.answers.append((502, "<html>Bad Gateway</html>"))
    with pytest.raises(Unavailable, match="Bad Gateway") as info:
        await ex.fetch()
    assert "user alice (run r1)" in info.value.message


async def test_a_success_without_credentials_is_retryable(
    sts: tuple[FakeSts, str], http: aiohttp.ClientSession
) -> None:
    fake, endpoint = sts
    ex, _ = exchanger(endpoint, http)
    fake.answers.append((200, f'<AssumeRoleWithWebIdentityResponse xmlns="{NS}"/>'))
    with pytest.raises(Unavailable, match="without Expiration"):
        await ex.fetch()


async def test_an_oversized_answer_is_refused(
    sts: tuple[FakeSts, str], http: aiohttp.ClientSession
) -> None:
    fake, endpoint = sts
    ex, _ = exchanger(endpoint, http)
    fake.answers.append((200, "x" * (MAX_RESPONSE_BYTES + 1)))
    with pytest.raises(Unavailable, match="more than"):
        await ex.fetch()


async def test_unreachable_sts_is_retryable_and_names_the_url(
    http: aiohttp.ClientSession, unused_tcp_port: int
) -> None:
    dead = f"http://127.0.0.1:{unused_tcp_port}"
    ex, _ = exchanger(dead, http)
    with pytest.raises(Unavailable, match="AWS STS is unreachable for user alice") as info:
        await ex.fetch()
    assert dead in info.value.message and info.value.retryable
