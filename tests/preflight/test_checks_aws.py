"""check_aws against moto with IAM enforced, as alice and bob with their own role credentials
from the sandbox STS: each verdict is what S3 itself decides for that role."""

from __future__ import annotations

import pytest

from credsidecar.clouds.contracts import AwsCredentials
from credsidecar.errors import ConfigError
from credsidecar.preflight import aws as preflight_aws
from credsidecar.preflight.aws import check_aws
from credsidecar.preflight.model import Access, CloudEndpoints, Outcome
from credsidecar.preflight.probe import MARKER_DIR
from credsidecar.preflight.targets import READ, WORK_DIR, WRITE, parse_target
from credsidecar.sandbox.aws.runner import AwsSandbox
from credsidecar.sandbox.seed import REFERENCE_KEY
from tests.preflight.sandbox_access import (
    ROLE_ARN,
    admin_credentials,
    aws,
    aws_credentials,
    closed_port,
    issuer,
    objects_under,
)
from tests.sandbox.conftest import ServedIssuer

__all__ = ["aws", "closed_port", "issuer"]  # fixtures


def endpoints(aws: AwsSandbox) -> CloudEndpoints:
    return CloudEndpoints(s3_url=aws.moto.url)


async def test_alice_may_read_write_and_delete_in_her_bucket_and_no_marker_is_left(
    aws: AwsSandbox, issuer: ServedIssuer
) -> None:
    credentials = await aws_credentials(aws, issuer, "alice")
    target = parse_target("s3://alice-data/runs/r1/", WORK_DIR)
    verdict = await check_aws(target, credentials, ROLE_ARN["alice-data"], endpoints(aws))
    assert verdict.outcome is Outcome.OK, verdict
    assert (verdict.identity, verdict.missing, verdict.unverified) == (
        ROLE_ARN["alice-data"],
        (),
        (),
    )
    assert verdict.detail == "nothing is stored under this prefix yet"
    assert await objects_under(aws, "alice-data", "runs/r1/") == []


async def test_reading_the_shared_references_lists_and_reads_an_object(
    aws: AwsSandbox, issuer: ServedIssuer
) -> None:
    """Alice's role may list shared-refs and get its objects: a listing that finds one also
    reads it (s3:GetObject), and says nothing about an empty prefix."""
    credentials = await aws_credentials(aws, issuer, "alice")
    target = parse_target(f"s3://shared-refs/{REFERENCE_KEY}", READ)
    verdict = await check_aws(target, credentials, "alice-data", endpoints(aws))
    assert (verdict.outcome, verdict.detail) == (Outcome.OK, "")


async def test_bob_is_denied_listing_alice_bucket_and_told_the_permission(
    aws: AwsSandbox, issuer: ServedIssuer
) -> None:
    credentials = await aws_credentials(aws, issuer, "bob")
    target = parse_target("s3://alice-data/inputs/", READ)
    verdict = await check_aws(target, credentials, ROLE_ARN["bob-data"], endpoints(aws))
    assert (verdict.outcome, verdict.missing) == (Outcome.DENIED, ("s3:ListBucket",))
    assert verdict.detail == "ListObjectsV2: AccessDenied: Access Denied"
    assert verdict.identity == ROLE_ARN["bob-data"]


async def test_writing_the_read_only_references_is_denied_put_object(
    aws: AwsSandbox, issuer: ServedIssuer
) -> None:
    credentials = await aws_credentials(aws, issuer, "alice")
    for access in (WRITE, WORK_DIR):  # a work dir: the read passes, then the write is denied
        target = parse_target("s3://shared-refs/out/", access)
        verdict = await check_aws(target, credentials, "alice-data", endpoints(aws))
        assert (verdict.outcome, verdict.missing) == (Outcome.DENIED, ("s3:PutObject",))
        assert verdict.detail.startswith("PutObject: AccessDenied")


async def test_bob_writes_his_own_bucket_and_is_denied_alice_s(
    aws: AwsSandbox, issuer: ServedIssuer
) -> None:
    credentials = await aws_credentials(aws, issuer, "bob")
    mine = await check_aws(parse_target("s3://bob-data/out", WRITE), credentials, "bob",
                           endpoints(aws))  # fmt: skip
    theirs = await check_aws(parse_target("s3://alice-data/out", WRITE), credentials, "bob",
                             endpoints(aws))  # fmt: skip
    assert mine.outcome is Outcome.OK and mine.detail == ""
    assert (theirs.outcome, theirs.missing) == (Outcome.DENIED, ("s3:PutObject",))
    assert await objects_under(aws, "bob-data", f"out/{MARKER_DIR}") == []


async def test_without_the_write_probe_write_is_reported_unverified_and_nothing_is_written(
    aws: AwsSandbox, issuer: ServedIssuer
) -> None:
    credentials = await aws_credentials(aws, issuer, "alice")
    target = parse_target("s3://shared-refs/out/", WORK_DIR)
    verdict = await check_aws(target, credentials, "alice-data", endpoints(aws),
                              write_probe=False)  # fmt: skip
    assert verdict.outcome is Outcome.OK
    assert verdict.unverified == (Access.WRITE, Access.DELETE)


async def test_a_missing_bucket_is_not_found(aws: AwsSandbox) -> None:
    """moto checks IAM first, so a role without rights on a missing bucket is denied there;
    S3 answers NoSuchBucket first. The administrator, allowed everything, sees S3's answer."""
    target = parse_target("s3://no-such-bucket/x", READ)
    verdict = await check_aws(target, admin_credentials(aws), "admin", endpoints(aws))
    assert verdict.outcome is Outcome.NOT_FOUND, verdict
    assert verdict.detail.startswith("ListObjectsV2: NoSuchBucket")


async def test_unknown_keys_are_credentials_unavailable_and_no_secret_is_shown(
    aws: AwsSandbox,
) -> None:
    bogus = AwsCredentials("ASIAEXAMPLEEXAMPLE00", "s" * 40, "session-token-" + "t" * 40, 0.0,
                           ROLE_ARN["alice-data"], "", "123456789012")  # fmt: skip
    target = parse_target("s3://alice-data/x", WORK_DIR)
    verdict = await check_aws(target, bogus, "alice-data", endpoints(aws))
    assert verdict.outcome is Outcome.NO_CREDENTIALS
    assert verdict.detail.startswith("ListObjectsV2: InvalidAccessKeyId")
    assert bogus.secret_access_key not in repr(verdict)
    assert bogus.session_token not in repr(verdict)


async def test_a_closed_port_is_not_reachable(closed_port: int) -> None:
    credentials = AwsCredentials("ASIAEXAMPLEEXAMPLE00", "s" * 40, "t" * 40, 0.0, "r", "", "1")
    target = parse_target("s3://alice-data/x", READ)
    verdict = await check_aws(
        target, credentials, "alice-data", CloudEndpoints(s3_url=f"http://127.0.0.1:{closed_port}")
    )
    assert verdict.outcome is Outcome.UNREACHABLE
    assert verdict.detail.startswith("ListObjectsV2: Could not connect to the endpoint URL")


async def test_without_botocore_the_error_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def missing() -> None:
        raise ModuleNotFoundError("No module named 'botocore'")

    monkeypatch.setattr(preflight_aws, "_session", missing)
    credentials = AwsCredentials("ASIAEXAMPLEEXAMPLE00", "s" * 40, "t" * 40, 0.0, "r", "", "1")
    with pytest.raises(ConfigError, match=r"pip install 'credsidecar\[preflight\]'"):
        await check_aws(parse_target("s3://alice-data/x", READ), credentials, "r",
                        CloudEndpoints())  # fmt: skip
