"""The GCP sandbox over HTTP with real issuer-signed tokens: STS validates them as Google does,
IAM Credentials impersonates only the bound service account, storage enforces each bucket."""

from __future__ import annotations

import urllib.parse
from typing import Any

import aiohttp
import jwt as pyjwt
from aiohttp.test_utils import TestClient

from credsidecar.sandbox.gcp.runner import GcpSandbox
from credsidecar.sandbox.gcp.state import GcpState
from credsidecar.sandbox.gcp.sts import GcpProvider, GcpStsState, create_gcp_sts_app
from credsidecar.sandbox.seed import (
    GCP_AUDIENCE,
    GCP_PROVIDER_RESOURCE,
    REFERENCE_BODY,
    REFERENCE_KEY,
    gcp_principal,
)
from tests.sandbox.conftest import EXCHANGE, JWT_TYPE, ServedIssuer, ShiftedClock, call

ALICE_SA = "alice@sandbox-project.iam.gserviceaccount.com"
BOB_SA = "bob@sandbox-project.iam.gserviceaccount.com"
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"


def sts_form(subject_token: str, audience: str = GCP_AUDIENCE) -> dict[str, str]:
    """What google-auth's external_account credentials send (oauth2/sts.py)."""
    return {
        "grant_type": EXCHANGE,
        "requested_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "subject_token_type": JWT_TYPE,
        "audience": audience,
        "scope": CLOUD_PLATFORM,
        "subject_token": subject_token,
    }


async def federated(gcp: GcpSandbox, issuer: ServedIssuer, user: str) -> str:
    status, body = await call(
        issuer.http, "POST", gcp.sts_url, data=sts_form(await issuer.cloud_token(user))
    )
    assert status == 200, body
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600
    assert body["issued_token_type"] == "urn:ietf:params:oauth:token-type:access_token"
    return str(body["access_token"])


async def impersonate(
    gcp: GcpSandbox, http: aiohttp.ClientSession, token: str, email: str, method: str, **body: Any
) -> tuple[int, Any]:
    url = f"{gcp.iam_url}/v1/projects/-/serviceAccounts/{email}:{method}"
    return await call(http, "POST", url, token, json=body)


async def sa_token(gcp: GcpSandbox, issuer: ServedIssuer, user: str, email: str) -> str:
    fed = await federated(gcp, issuer, user)
    status, body = await impersonate(
        gcp,
        issuer.http,
        fed,
        email,
        "generateAccessToken",
        scope=[CLOUD_PLATFORM],
        lifetime="3600s",
    )
    assert status == 200, body
    return str(body["accessToken"])


def objects(gcp: GcpSandbox, bucket: str) -> str:
    return f"{gcp.storage_url}/storage/v1/b/{bucket}/o"


def upload_url(gcp: GcpSandbox, bucket: str, name: str) -> str:
    query = urllib.parse.urlencode({"uploadType": "media", "name": name})
    return f"{gcp.storage_url}/upload/storage/v1/b/{bucket}/o?{query}"


def media(gcp: GcpSandbox, bucket: str, name: str) -> str:
    quoted = urllib.parse.quote(name, safe="")
    return f"{gcp.storage_url}/download/storage/v1/b/{bucket}/o/{quoted}?alt=media"


async def test_alice_reads_and_writes_her_bucket_and_reads_the_shared_refs(
    gcp: GcpSandbox, issuer: ServedIssuer
) -> None:
    http, token = issuer.http, await sa_token(gcp, issuer, "alice", ALICE_SA)
    status, body = await call(http, "GET", objects(gcp, "alice-data"), token)
    assert status == 200 and body["kind"] == "storage#objects" and "items" not in body
    status, body = await call(
        http,
        "POST",
        upload_url(gcp, "alice-data", "out/result.txt"),
        token,
        data=b"hello",
        headers={"Content-Type": "text/plain"},
    )
    assert status == 200, body
    assert body["name"] == "out/result.txt" and body["size"] == "5"
    status, body = await call(http, "GET", objects(gcp, "alice-data"), token)
    assert [item["name"] for item in body["items"]] == ["out/result.txt"]
    assert await call(http, "GET", media(gcp, "alice-data", "out/result.txt"), token) == (
        200,
        b"hello",
    )
    assert await call(http, "GET", media(gcp, "shared-refs", REFERENCE_KEY), token) == (
        200,
        REFERENCE_BODY,
    )


async def test_alice_is_denied_bobs_bucket_and_writes_to_the_shared_refs(
    gcp: GcpSandbox, issuer: ServedIssuer
) -> None:
    http, token = issuer.http, await sa_token(gcp, issuer, "alice", ALICE_SA)
    status, body = await call(http, "GET", objects(gcp, "bob-data"), token)
    assert status == 403
    assert body["error"]["message"] == (
        f"{ALICE_SA} does not have storage.objects.list access to the Google Cloud Storage "
        "bucket. Permission 'storage.objects.list' denied on resource (or it may not exist)."
    )
    assert body["error"]["errors"][0]["reason"] == "forbidden"
    status, body = await call(http, "POST", upload_url(gcp, "shared-refs", "x"), token, data=b"x")
    assert status == 403 and "storage.objects.create" in body["error"]["message"]
    status, _ = await call(http, "GET", media(gcp, "bob-data", "anything"), token)
    assert status == 403


async def test_bob_gets_his_own_service_account_and_bucket(
    gcp: GcpSandbox, issuer: ServedIssuer
) -> None:
    http, token = issuer.http, await sa_token(gcp, issuer, "bob", BOB_SA)
    assert (await call(http, "POST", upload_url(gcp, "bob-data", "b"), token, data=b"b"))[0] == 200
    assert (await call(http, "GET", objects(gcp, "alice-data"), token))[0] == 403


async def test_alice_may_not_impersonate_bobs_service_account(
    gcp: GcpSandbox, issuer: ServedIssuer
) -> None:
    fed = await federated(gcp, issuer, "alice")
    for method, body, permission in (
        ("generateAccessToken", {"scope": [CLOUD_PLATFORM]}, "getAccessToken"),
        ("generateIdToken", {"audience": "https://x.example"}, "getOpenIdToken"),
    ):
        status, answer = await impersonate(gcp, issuer.http, fed, BOB_SA, method, **body)
        assert status == 403
        assert answer["error"]["status"] == "PERMISSION_DENIED"
        assert answer["error"]["message"].startswith(
            f"Permission 'iam.serviceAccounts.{permission}' denied on resource (or it may not "
            "exist)."
        )
        assert gcp_principal("alice") in answer["error"]["message"]


async def test_sts_refuses_a_token_for_another_audience(
    gcp: GcpSandbox, issuer: ServedIssuer
) -> None:
    aws_token = await issuer.cloud_token("alice", audience="sts.amazonaws.com")
    status, body = await call(issuer.http, "POST", gcp.sts_url, data=sts_form(aws_token))
    assert status == 400 and body["error"] == "invalid_grant"
    assert (
        "The audience in ID Token ['sts.amazonaws.com'] does not match"
        in (body["error_description"])
    )
    assert f"https://iam.googleapis.com/{GCP_PROVIDER_RESOURCE}" in body["error_description"]


async def test_sts_refuses_unknown_providers_tampered_and_expired_tokens(
    gcp: GcpSandbox, issuer: ServedIssuer, sandbox_clock: ShiftedClock
) -> None:
    token = await issuer.cloud_token("alice")
    other = GCP_AUDIENCE.replace("providers/sandbox", "providers/other")
    cases = [
        (sts_form(token, other), "invalid_target", "audience"),
        (sts_form(token, "projects/1/providers/x"), "invalid_request", "full resource name"),
        (sts_form(token[:-4] + "AAAA"), "invalid_grant", "Invalid JWT signature"),
        (sts_form("not-a-jwt"), "invalid_grant", "Unable to parse"),
        ({**sts_form(token), "subject_token_type": "saml2"}, "invalid_request", "subject_token"),
        ({**sts_form(token), "grant_type": "password"}, "unsupported_grant_type", "grant_type"),
    ]
    for form, error, fragment in cases:
        status, body = await call(issuer.http, "POST", gcp.sts_url, data=form)
        assert (status, body["error"]) == (400, error), body
        assert fragment in body["error_description"]
    sandbox_clock.advance(3600)  # exchanged tokens live 10 minutes
    status, body = await call(issuer.http, "POST", gcp.sts_url, data=sts_form(token))
    assert (status, body["error"]) == (400, "invalid_grant")
    assert "expired" in body["error_description"]


async def test_sts_applies_the_attribute_condition_on_the_subject(
    aiohttp_client: Any, issuer: ServedIssuer
) -> None:
    provider = GcpProvider(GCP_PROVIDER_RESOURCE, issuer.url, allowed_subjects=("alice",))
    state = GcpStsState(GcpState(), {GCP_AUDIENCE: provider})
    client: TestClient = await aiohttp_client(create_gcp_sts_app(state))
    resp = await client.post("/v1/token", data=sts_form(await issuer.cloud_token("bob")))
    assert resp.status == 400
    body = await resp.json()
    assert body["error"] == "unauthorized_client"
    assert body["error_description"].startswith(
        "The given credential is rejected by the attribute condition"
    )
    resp = await client.post(
        "/v1/token",
        json={  # the REST API's JSON form, camelCase
            "grantType": EXCHANGE,
            "subjectTokenType": JWT_TYPE,
            "audience": GCP_AUDIENCE,
            "subjectToken": await issuer.cloud_token("alice"),
            "scope": CLOUD_PLATFORM,
        },
    )
    assert resp.status == 200, await resp.text()


async def test_expired_and_missing_access_tokens_are_refused(
    gcp: GcpSandbox, issuer: ServedIssuer, sandbox_clock: ShiftedClock
) -> None:
    http = issuer.http
    fed = await federated(gcp, issuer, "alice")
    status, body = await impersonate(
        gcp, http, fed, ALICE_SA, "generateAccessToken", scope=[CLOUD_PLATFORM], lifetime="600s"
    )
    assert status == 200
    assert body["expireTime"].endswith("Z") and len(body["expireTime"]) == 20
    token = body["accessToken"]
    status, body = await call(http, "GET", objects(gcp, "alice-data"))
    assert status == 401 and body["error"]["message"].startswith("Anonymous caller does not have")
    sandbox_clock.advance(601)
    status, body = await call(http, "GET", objects(gcp, "alice-data"), token)
    assert status == 401 and body["error"]["message"] == "Invalid Credentials"
    sandbox_clock.advance(3000)  # the federated token (1 h) has expired too
    status, body = await impersonate(
        gcp, http, fed, ALICE_SA, "generateAccessToken", scope=[CLOUD_PLATFORM]
    )
    assert status == 401 and body["error"]["status"] == "UNAUTHENTICATED"


async def test_federated_tokens_work_in_storage_for_the_principal_itself(
    gcp: GcpSandbox, issuer: ServedIssuer
) -> None:
    fed = await federated(gcp, issuer, "alice")
    assert (await call(issuer.http, "GET", objects(gcp, "alice-data"), fed))[0] == 200
    status, body = await call(issuer.http, "GET", objects(gcp, "bob-data"), fed)
    assert status == 403
    assert body["error"]["message"].startswith(f"{gcp_principal('alice')} does not have")


async def test_id_tokens_verify_against_the_published_google_keys(
    gcp: GcpSandbox, issuer: ServedIssuer
) -> None:
    fed = await federated(gcp, issuer, "alice")
    status, body = await impersonate(
        gcp,
        issuer.http,
        fed,
        ALICE_SA,
        "generateIdToken",
        audience="https://pipelines.example",
        includeEmail=True,
    )
    assert status == 200, body
    status, jwks = await call(issuer.http, "GET", gcp.id_token_certs_url)
    key = pyjwt.PyJWKSet.from_dict(jwks)[pyjwt.get_unverified_header(body["token"])["kid"]]
    claims = pyjwt.decode(
        body["token"],
        key.key,
        algorithms=["RS256"],
        audience="https://pipelines.example",
        issuer="https://accounts.google.com",
    )
    assert claims["email"] == ALICE_SA and claims["email_verified"] is True
    assert claims["sub"].isdigit() and len(claims["sub"]) == 21
    assert claims["exp"] - claims["iat"] == 3600


async def test_outage_hook_makes_sts_and_iam_answer_503(
    gcp: GcpSandbox, issuer: ServedIssuer
) -> None:
    fed = await federated(gcp, issuer, "alice")
    iam_base = gcp.iam_url
    assert (await call(issuer.http, "POST", f"{iam_base}/_sandbox/outage", json={"seconds": 60}))[
        0
    ] == 200
    status, _ = await call(
        issuer.http, "POST", gcp.sts_url, data=sts_form(await issuer.cloud_token("alice"))
    )
    assert status == 503
    status, body = await impersonate(
        gcp, issuer.http, fed, ALICE_SA, "generateAccessToken", scope=[CLOUD_PLATFORM]
    )
    assert status == 503 and body["error"]["status"] == "UNAVAILABLE"
    status, stats = await call(issuer.http, "GET", f"{iam_base}/_sandbox/stats")
    assert stats == {"sts.token": 2, "iam.generateAccessToken": 1}
