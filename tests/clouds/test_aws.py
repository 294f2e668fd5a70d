"""The AWS exchanger against botocore's Stubber: request shape and error explanations."""

from __future__ import annotations

import asyncio
import datetime

import pytest
from botocore.stub import ANY, Stubber

from credsidecar.clouds.aws import AwsExchanger, AwsSettings, role_session_name
from credsidecar.clouds.federation import FederatedToken
from credsidecar.errors import BadRequest, CredsidecarError, Forbidden, InvalidGrant, Unavailable

ROLE = "arn:aws:iam::123456789012:role/alice-data"


class Supplier:
    def __init__(self) -> None:
        self.asked: list[tuple[str, str, str | None]] = []

    async def token(self, audience: str, provider: str, identity: str | None) -> FederatedToken:
        self.asked.append((audience, provider, identity))
        return FederatedToken("header.payload.signature", None, {})


def exchanger(**settings: object) -> tuple[AwsExchanger, Supplier, Stubber]:
    supplier = Supplier()
    ex = AwsExchanger(
        AwsSettings(role_arn=ROLE, identity_name="alice-data", session_name="alice@r1",
                    **settings),  # type: ignore[arg-type]
        supplier, "user alice (run r1)",
    )  # fmt: skip
    stubber = Stubber(ex._sts)
    stubber.activate()
    return ex, supplier, stubber


def test_role_session_name_fits_sts_limits() -> None:
    assert role_session_name("alice", "run-1") == "alice@run-1"
    assert role_session_name("alice", "nf/core:run 1") == "alice@nf-core-run-1"
    assert len(role_session_name("a" * 50, "r" * 50)) == 64
    assert role_session_name("a", None) == "a-"


async def test_fetch_calls_assume_role_with_web_identity() -> None:
    ex, supplier, stubber = await asyncio.to_thread(
        exchanger, duration=1800, session_policy='{"Version":"2012-10-17"}'
    )
    expires = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
    stubber.add_response(
        "assume_role_with_web_identity",
        {"Credentials": {"AccessKeyId": "ASIAEXAMPLE0000000001", "SecretAccessKey": "s" * 40,
                         "SessionToken": "t" * 40, "Expiration": expires},
         "AssumedRoleUser": {"Arn": "arn:aws:sts::123456789012:assumed-role/alice-data/alice@r1",
                             "AssumedRoleId": "AROA:alice@r1"}},
        {"RoleArn": ROLE, "RoleSessionName": "alice@r1", "WebIdentityToken": ANY,
         "DurationSeconds": 1800, "Policy": '{"Version":"2012-10-17"}'},
    )  # fmt: skip
    creds = await ex.fetch()
    assert creds.expires_at == expires.timestamp()
    assert creds.account_id == "123456789012" and creds.role_name == "alice-data"
    assert supplier.asked == [("sts.amazonaws.com", "aws", "alice-data")]
    assert "s" * 40 not in repr(creds)


@pytest.mark.parametrize(
    ("code", "message", "status", "kind", "fragment"),
    [
        ("AccessDenied", "Not authorized to perform sts:AssumeRoleWithWebIdentity", 403,
         Forbidden, "trust policy does not allow"),
        ("AccessDenied", "Not authorized (role arn:... does not exist)", 403, Forbidden,
         "role does not exist"),
        ("InvalidIdentityToken", "No OpenIDConnect provider found in your account for https://i",
         400, Forbidden, "does not trust the issuer"),
        ("InvalidIdentityToken", "Incorrect token audience", 400, Forbidden,
         "audience 'sts.amazonaws.com'"),
        ("ExpiredTokenException", "Token expired", 400, InvalidGrant, "expired"),
        ("IDPCommunicationError", "could not reach", 400, Unavailable, "could not reach"),
        ("Throttling", "Rate exceeded", 400, Unavailable, "throttling"),
        ("ValidationError", "bad session name", 400, BadRequest, "rejected the request"),
        ("InternalFailure", "oops", 500, Unavailable, "InternalFailure"),
    ],
)  # fmt: skip
async def test_sts_errors_become_messages_naming_user_role_and_cause(
    code: str, message: str, status: int, kind: type[CredsidecarError], fragment: str
) -> None:
    ex, _, stubber = await asyncio.to_thread(exchanger)
    stubber.add_client_error("assume_role_with_web_identity", code, message, status)
    with pytest.raises(kind) as info:
        await ex.fetch()
    assert fragment in info.value.message
    assert "user alice (run r1)" in info.value.message
    if kind is not Unavailable:
        assert ROLE in info.value.message
    assert info.value.retryable is (kind is Unavailable)
