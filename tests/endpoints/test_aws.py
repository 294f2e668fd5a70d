"""AWS endpoint contracts over real HTTP: container endpoint and IMDSv2, as DESIGN.md says."""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web

from credsidecar.audit import AuditLog
from credsidecar.cache import CredentialCache
from credsidecar.clouds.contracts import AwsCredentials
from credsidecar.endpoints.aws import AwsEndpoints
from credsidecar.endpoints.guards import Guard, RefusalLog, allowed_hosts
from credsidecar.errors import Forbidden, Unavailable
from tests.endpoints.conftest import SECRET, Sidecar, Upstream
from tests.support import raw_http
from tests.support.ports import held_port

CONTAINER = "/v1/credentials/aws"
CREDS = "/latest/meta-data/iam/security-credentials/"
EXTENDED = "/latest/meta-data/iam/security-credentials-extended/"
TTL = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN = "X-aws-ec2-metadata-token"
EXPIRATION = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


async def imds_token(sidecar: Sidecar, ttl: str = "21600") -> str:
    resp = await sidecar.client.put("/latest/api/token", headers={TTL: ttl})
    assert resp.status == 200
    return await resp.text()


# container endpoint ---------------------------------------------------------------------------


async def test_container_endpoint_serves_the_four_fields_and_account(sidecar: Sidecar) -> None:
    await sidecar.cache.refresh()
    resp = await sidecar.client.get(CONTAINER, headers={"Authorization": SECRET})
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "application/json"
    body = await resp.json()
    assert set(body) == {"AccessKeyId", "SecretAccessKey", "Token", "Expiration", "AccountId"}
    assert body["AccessKeyId"] == "ASIATEST000000000001"
    assert EXPIRATION.fullmatch(body["Expiration"])
    assert body["AccountId"] == "123456789012"


async def test_container_endpoint_needs_the_exact_secret(sidecar: Sidecar) -> None:
    await sidecar.cache.refresh()
    for headers in ({}, {"Authorization": "wrong"}, {"Authorization": f"Bearer {SECRET}"},
                    {"Authorization": SECRET + "x"}):  # fmt: skip
        resp = await sidecar.client.get(CONTAINER, headers=headers)
        assert resp.status == 401
        assert "AWS_CONTAINER_AUTHORIZATION_TOKEN" in (await resp.json())["error_description"]
    # One audit line for the four (the rest are counted, see test_guards).
    (refused,) = [e for e in sidecar.events() if e["event"] == "request.refused"]
    assert refused["path"] == CONTAINER and refused["reason"] == "missing or wrong Authorization"
    assert SECRET not in sidecar.audit.getvalue()


async def test_nothing_valid_in_an_outage_is_a_503_with_retry_after_and_the_cause(
    sidecar: Sidecar,
) -> None:
    sidecar.upstream.error = Unavailable("AWS STS is unreachable for user alice")
    with pytest.raises(Unavailable):
        await sidecar.cache.refresh()
    resp = await sidecar.client.get(CONTAINER, headers={"Authorization": SECRET})
    assert resp.status == 503
    assert int(resp.headers["Retry-After"]) >= 1
    body = await resp.json()
    assert body["error"] == "temporarily_unavailable"
    assert "AWS STS is unreachable for user alice" in body["error_description"]


async def test_nothing_valid_after_a_refusal_is_a_403_with_the_cause(sidecar: Sidecar) -> None:
    """A refusal retrying will not change (trust policy, revoked run): 403, as GCP and Azure."""
    sidecar.upstream.error = Forbidden("user alice may not assume role/x: trust policy")
    with pytest.raises(Forbidden):
        await sidecar.cache.refresh()
    imds = {TOKEN: await imds_token(sidecar)}
    for path, headers in ((CONTAINER, {"Authorization": SECRET}), (CREDS, imds)):
        resp = await sidecar.client.get(path, headers=headers)
        assert resp.status == 403 and "Retry-After" not in resp.headers
        body = await resp.json()
        assert body["error"] == "access_denied"
        assert "user alice may not assume role/x" in body["error_description"]
    ready = await sidecar.client.get("/readyz")  # not ready, and no 500
    assert ready.status == 503 and "trust policy" in (await ready.json())["problems"][0]


async def test_renewed_credentials_are_served_immediately(sidecar: Sidecar) -> None:
    await sidecar.cache.refresh()
    first = await (await sidecar.client.get(CONTAINER, headers={"Authorization": SECRET})).json()
    await sidecar.cache.refresh()
    second = await (await sidecar.client.get(CONTAINER, headers={"Authorization": SECRET})).json()
    assert first["AccessKeyId"] != second["AccessKeyId"]
    served = [e for e in sidecar.events() if e["event"] == "credentials.served"]
    assert [e["access_key_id"] for e in served] == [first["AccessKeyId"], second["AccessKeyId"]]


# IMDSv2 ---------------------------------------------------------------------------------------


async def test_token_put_validates_and_echoes_the_ttl(sidecar: Sidecar) -> None:
    resp = await sidecar.client.put("/latest/api/token", headers={TTL: "300"})
    assert resp.status == 200
    assert resp.headers[TTL] == "300"  # the Go SDK fails without the echo
    assert len(await resp.text()) >= 32
    for bad in ("0", "21601", "-5", "abc", ""):
        resp = await sidecar.client.put("/latest/api/token", headers={TTL: bad})
        assert resp.status == 400, bad
    resp = await sidecar.client.put("/latest/api/token")
    assert resp.status == 400


async def test_imds_reads_need_a_valid_unexpired_token(sidecar: Sidecar) -> None:
    await sidecar.cache.refresh()
    assert (await sidecar.client.get(CREDS)).status == 401
    bad = await sidecar.client.get(CREDS, headers={"X-aws-ec2-metadata-token": "made-up"})
    assert bad.status == 401
    token = await imds_token(sidecar, "2")
    good = await sidecar.client.get(CREDS, headers={"X-aws-ec2-metadata-token": token})
    assert good.status == 200
    sidecar.mono.offset += 3
    expired = await sidecar.client.get(CREDS, headers={"X-aws-ec2-metadata-token": token})
    assert expired.status == 401
    forged = token.rsplit(".", 2)[0] + ".99999999999999." + token.rsplit(".", 1)[1]
    assert (await sidecar.client.get(CREDS, headers={TOKEN: forged})).status == 401


async def test_a_flood_of_token_requests_invalidates_no_one(sidecar: Sidecar) -> None:
    await sidecar.cache.refresh()
    token = await imds_token(sidecar)
    for _ in range(5000):
        sidecar_tokens = await sidecar.client.put("/latest/api/token", headers={TTL: "60"})
        assert sidecar_tokens.status == 200
    assert (await sidecar.client.get(CREDS, headers={TOKEN: token})).status == 200


async def test_imds_role_listing_and_documents(sidecar: Sidecar) -> None:
    await sidecar.cache.refresh()
    headers = {"X-aws-ec2-metadata-token": await imds_token(sidecar)}
    for listing in (CREDS, EXTENDED):
        resp = await sidecar.client.get(listing, headers=headers)
        assert await resp.read() == b"alice-data"  # no trailing newline
    doc = await (await sidecar.client.get(f"{CREDS}alice-data", headers=headers)).json()
    assert doc["Code"] == "Success" and doc["Type"] == "AWS-HMAC"
    assert EXPIRATION.fullmatch(doc["Expiration"]) and EXPIRATION.fullmatch(doc["LastUpdated"])
    assert doc["LastUpdated"] <= doc["Expiration"]
    assert {"AccessKeyId", "SecretAccessKey", "Token"} <= set(doc) and "AccountId" not in doc
    extended = await sidecar.client.get(f"{EXTENDED}alice-data", headers=headers)
    assert extended.headers["Content-Type"] == "application/json"
    assert (await extended.json())["AccountId"] == "123456789012"
    missing = await sidecar.client.get(f"{CREDS}bob-data", headers=headers)
    assert missing.status == 404


async def test_imds_without_credentials_is_503(sidecar: Sidecar) -> None:
    headers = {"X-aws-ec2-metadata-token": await imds_token(sidecar)}
    resp = await sidecar.client.get(CREDS, headers=headers)
    assert resp.status == 503 and "Retry-After" in resp.headers


async def test_health_and_readiness(sidecar: Sidecar) -> None:
    assert (await sidecar.client.get("/healthz")).status == 200
    not_ready = await sidecar.client.get("/readyz")
    assert not_ready.status == 503
    assert "first credentials" in (await not_ready.json())["problems"][0]
    await sidecar.cache.refresh()
    assert (await sidecar.client.get("/readyz")).status == 200


# header values no SDK sends: a clear 4xx, never a 500 ----------------------------------------


@pytest.mark.parametrize(
    "ttl",
    ["²".encode(), "³".encode(), "٣".encode(), b"5" * 5000, b"0000300", b"\xff", b"3\xb2"],
)
async def test_a_token_ttl_that_is_not_a_few_ascii_digits_is_a_400(
    sidecar: Sidecar, ttl: bytes
) -> None:
    """`"²".isdigit()` is True and int() refuses it; int() of 5,000 digits is refused too."""
    resp = await raw_http.request(
        sidecar.port, b"PUT", b"/latest/api/token", TTL.encode() + b": " + ttl
    )
    assert resp.status == 400
    assert TTL.encode() in resp.body


@pytest.mark.parametrize(
    "token",
    ["n.99999999999.é".encode(), b"n.99999999999.\xff", b"n\xff.99999999999.mac", "é".encode()],
)
async def test_a_session_token_that_is_not_ascii_is_refused_as_invalid(
    sidecar: Sidecar, token: bytes
) -> None:
    await sidecar.cache.refresh()
    resp = await raw_http.get(sidecar.port, CREDS.encode(), TOKEN.encode() + b": " + token)
    assert resp.status == 401


@pytest.mark.parametrize("value", [b"\xff" + SECRET.encode(), SECRET.encode() + "é".encode()])
async def test_a_container_authorization_that_is_not_utf8_or_ascii_is_a_401(
    sidecar: Sidecar, value: bytes
) -> None:
    await sidecar.cache.refresh()
    resp = await raw_http.get(sidecar.port, CONTAINER.encode(), b"Authorization: " + value)
    assert resp.status == 401
    assert SECRET not in sidecar.audit.getvalue()


# instance metadata (--well-known: what SDKs read where no variable names a region) -------------


async def test_placement_and_instance_id_answer_with_a_session_token(sidecar: Sidecar) -> None:
    token = await imds_token(sidecar)
    paths = {"/latest/meta-data/placement/region": "us-east-1",
             "/latest/meta-data/placement/availability-zone/": "us-east-1a",  # botocore's
             "/latest/meta-data/placement/availability-zone": "us-east-1a"}  # fmt: skip
    for path, expected in paths.items():
        resp = await sidecar.client.get(path, headers={TOKEN: token})
        assert (resp.status, await resp.text()) == (200, expected)
        assert (await sidecar.client.get(path)).status == 401  # IMDSv2 only
    resp = await sidecar.client.get("/latest/meta-data/instance-id", headers={TOKEN: token})
    assert re.fullmatch(r"i-[0-9a-f]{17}", await resp.text())


async def test_identity_document_names_the_credentials_account_and_region(
    sidecar: Sidecar,
) -> None:
    await sidecar.cache.refresh()
    token = await imds_token(sidecar)
    headers = {TOKEN: token}
    document = "/latest/dynamic/instance-identity/document"
    resp = await sidecar.client.get(document, headers=headers)
    assert resp.status == 200 and resp.content_type == "application/json"
    body = await resp.json()
    instance = await (
        await sidecar.client.get("/latest/meta-data/instance-id", headers=headers)
    ).text()
    assert body["accountId"] == "123456789012" and body["region"] == "us-east-1"
    assert body["availabilityZone"] == "us-east-1a" and body["instanceId"] == instance
    assert EXPIRATION.fullmatch(body["pendingTime"]) and body["version"] == "2017-09-30"
    assert (await sidecar.client.get(document)).status == 401


async def test_the_relative_uri_path_serves_the_container_document_without_authorization(
    aiohttp_client: Callable[..., Any],
) -> None:
    upstream, audit = Upstream(), AuditLog(io.StringIO())
    cache: CredentialCache[AwsCredentials] = CredentialCache("AWS (user alice)", upstream.fetch)
    port, server_kwargs = held_port()
    guard = Guard(allowed_hosts(port), RefusalLog(audit))
    endpoints = AwsEndpoints(
        cache, SECRET, audit, guard, "alice-data", {"user": "alice"},
        region="eu-west-1", relative_path="/v2/credentials/s3cr3t",
    )  # fmt: skip
    app = web.Application()
    app.add_routes(guard.routes(endpoints.routes()))
    client = await aiohttp_client(app, server_kwargs=server_kwargs)
    await cache.refresh()
    try:
        resp = await client.get("/v2/credentials/s3cr3t")
        assert resp.status == 200
        assert (await resp.json())["AccessKeyId"] == "ASIATEST000000000001"
        assert (await client.get("/v2/credentials/guess")).status == 404
        token = await (await client.put("/latest/api/token", headers={TTL: "60"})).text()
        region = await client.get("/latest/meta-data/placement/region", headers={TOKEN: token})
        assert await region.text() == "eu-west-1"
    finally:
        await cache.close()
