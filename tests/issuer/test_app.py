"""The issuer's HTTP API, driven over real HTTP on loopback (pytest-aiohttp)."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest
from aiohttp.test_utils import TestClient

from credsidecar.issuer.app import create_app
from tests.issuer.conftest import IssuerFixture

EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
AWS_AUD = "sts.amazonaws.com"
AZURE_AUD = "api://AzureADTokenExchange"


@pytest.fixture
async def client(aiohttp_client: Any, issuer: IssuerFixture) -> TestClient:
    return await aiohttp_client(create_app(issuer.service))


async def mint(client: TestClient, issuer: IssuerFixture, **body: Any) -> dict[str, Any]:
    body.setdefault("user", "alice")
    body.setdefault("run", "run-1")
    body.setdefault("workspace", "genomics")
    resp = await client.post("/v1/launch-tokens", json=body, headers=issuer.auth)
    assert resp.status == 201, await resp.text()
    return dict(await resp.json())


async def exchange(client: TestClient, token: str, audience: str = AWS_AUD, **extra: str) -> Any:
    form = {
        "grant_type": EXCHANGE,
        "subject_token_type": JWT_TYPE,
        "subject_token": token,
        "audience": audience,
        **extra,
    }
    return await client.post("/v1/token", data=form)


async def verify_with_pyjwt(client: TestClient, token: str, audience: str) -> dict[str, Any]:
    """Verifies with PyJWT (not the library that signed) against the JWKS fetched over HTTP."""
    jwks = await (await client.get("/.well-known/jwks.json")).json()
    kid = pyjwt.get_unverified_header(token)["kid"]
    key = pyjwt.PyJWKSet.from_dict(jwks)[kid]
    discovery = await (await client.get("/.well-known/openid-configuration")).json()
    return dict(
        pyjwt.decode(
            token,
            key.key,
            algorithms=["RS256", "ES256"],
            audience=audience,
            issuer=discovery["issuer"],
            options={"verify_iat": False, "verify_exp": False, "verify_nbf": False},
        )
    )


def forge(token: str, **changes: Any) -> str:
    """Changes claims without re-signing: a tampered token."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims.update(changes)
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{body}.{signature}"


async def assert_error(resp: Any, status: int, code: str, *fragments: str) -> str:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert body["error"] == code
    for fragment in fragments:
        assert fragment in body["error_description"]
    return str(body["error_description"])


# discovery -----------------------------------------------------------------------------------


async def test_discovery_lists_required_fields(client: TestClient, issuer: IssuerFixture) -> None:
    doc = await (await client.get("/.well-known/openid-configuration")).json()
    assert doc["issuer"] == issuer.config.issuer_url
    assert doc["jwks_uri"] == f"{issuer.config.issuer_url}/.well-known/jwks.json"
    for key in ("response_types_supported", "subject_types_supported", "claims_supported"):
        assert doc[key]
    assert doc["id_token_signing_alg_values_supported"] == ["RS256", "ES256"]


async def test_jwks_publishes_public_keys_only(client: TestClient) -> None:
    jwks = await (await client.get("/.well-known/jwks.json")).json()
    (key,) = jwks["keys"]
    assert key["kty"] == "RSA" and key["alg"] == "RS256" and key["use"] == "sig"
    assert not {"d", "p", "q", "dp", "dq", "qi"} & set(key)


# mint ----------------------------------------------------------------------------------------


async def test_mint_returns_a_launch_token_that_verifies_with_another_library(
    client: TestClient, issuer: IssuerFixture
) -> None:
    minted = await mint(client, issuer, pipeline="nf-core/rnaseq")
    claims = await verify_with_pyjwt(client, minted["token"], issuer.config.issuer_url)
    assert claims["sub"] == "alice" and claims["user"] == "alice"
    assert claims["run"] == "run-1" and claims["workspace"] == "genomics"
    assert claims["pipeline"] == "nf-core/rnaseq"
    assert claims["jti"] == minted["jti"]
    assert claims["exp"] - claims["iat"] == 24 * 3600 == minted["expires_at"] - issuer.clock()
    # Alice's own grant ranks first, the workspace's grant follows.
    assert minted["identities"]["aws"] == ["alice-data", "node-alice", "genomics-readonly"]
    aws = claims["identities"]["aws"][0]
    assert aws["role_arn"] == "arn:aws:iam::123456789012:role/alice-data"


async def test_mint_selection_of_a_granted_identity_becomes_the_default(
    client: TestClient, issuer: IssuerFixture
) -> None:
    minted = await mint(client, issuer, identities={"aws": "genomics-readonly"})
    assert minted["identities"]["aws"] == ["genomics-readonly"]
    resp = await exchange(client, minted["token"])
    claims = await verify_with_pyjwt(client, (await resp.json())["access_token"], AWS_AUD)
    assert claims["identity"] == "genomics-readonly"


async def test_mint_refuses_an_identity_not_granted(
    client: TestClient, issuer: IssuerFixture
) -> None:
    resp = await client.post(
        "/v1/launch-tokens",
        json={
            "user": "alice",
            "run": "r",
            "workspace": "genomics",
            "identities": {"aws": "bob-data"},
        },
        headers=issuer.auth,
    )
    await assert_error(resp, 403, "access_denied", "'alice'", "'bob-data'")
    assert issuer.audit_events()[-1]["event"] == "launch_token.refused"


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"user": "mallory", "run": "r"}, 403, "'mallory' is not in the identity policy"),
        ({"user": "carol", "run": "r"}, 403, "'carol' has no identity granted"),
        ({"user": "alice", "run": "r", "workspace": "nope"}, 403, "workspace 'nope'"),
        ({"user": "alice", "run": "r", "lifetime": 10**7}, 400, "lifetime"),
        ({"user": "alice"}, 400, "`run`"),
        ({"user": "alice", "run": "has space"}, 400, "`run`"),
        ({"user": "alice", "run": "r", "extra": 1}, 400, "unknown field"),
        ({"user": "alice", "run": "r", "identities": {"ibm": "x"}}, 400, "unknown provider"),
    ],
)
async def test_mint_rejects_bad_requests(
    client: TestClient, issuer: IssuerFixture, body: dict[str, Any], status: int, fragment: str
) -> None:
    resp = await client.post("/v1/launch-tokens", json=body, headers=issuer.auth)
    assert resp.status == status
    assert fragment in (await resp.json())["error_description"]


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer csk_wrong"}, {"Authorization": "Basic Zm9vOmJhcg=="}],
)
async def test_mint_needs_a_valid_platform_key(
    client: TestClient, issuer: IssuerFixture, headers: dict[str, str]
) -> None:
    resp = await client.post(
        "/v1/launch-tokens", json={"user": "alice", "run": "r"}, headers=headers
    )
    await assert_error(resp, 401, "unauthorized")
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert not issuer.audit_events() or issuer.audit_events()[-1]["event"] != "launch_token.minted"


async def test_malformed_json_is_a_clear_400(client: TestClient, issuer: IssuerFixture) -> None:
    resp = await client.post(
        "/v1/launch-tokens",
        data=b"{not json",
        headers={**issuer.auth, "Content-Type": "application/json"},
    )
    await assert_error(resp, 400, "invalid_request", "not valid JSON")


async def test_oversize_body_is_413(client: TestClient, issuer: IssuerFixture) -> None:
    big = b"{" + b" " * (issuer.config.max_body_bytes + 10) + b"}"
    resp = await client.post("/v1/launch-tokens", data=big, headers=issuer.auth)
    await assert_error(resp, 413, "request_too_large")


# exchange ------------------------------------------------------------------------------------


async def test_exchange_for_aws_carries_source_identity_and_tags(
    client: TestClient, issuer: IssuerFixture
) -> None:
    minted = await mint(client, issuer, pipeline="nf-core/rnaseq")
    resp = await exchange(client, minted["token"])
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "no-store"
    body = await resp.json()
    assert body["issued_token_type"] == JWT_TYPE and body["token_type"] == "N_A"
    assert body["expires_in"] == 600
    assert body["identity"]["role_arn"].endswith("role/alice-data")
    claims = await verify_with_pyjwt(client, body["access_token"], AWS_AUD)
    assert claims["sub"] == "alice"
    assert claims["https://aws.amazon.com/source_identity"] == "alice"
    tags = claims["https://aws.amazon.com/tags"]["principal_tags"]
    assert tags == {
        "user": ["alice"],
        "run": ["run-1"],
        "workspace": ["genomics"],
        "pipeline": ["nf-core/rnaseq"],
    }
    assert isinstance(claims["iat"], int) and isinstance(claims["exp"], int)


async def test_exchange_for_gcp_uses_the_user_subject_and_attribute_claims(
    client: TestClient, issuer: IssuerFixture
) -> None:
    minted = await mint(client, issuer, pipeline="p1")
    gcp = issuer.service.policy.identities["gcp"]["alice"]
    resp = await exchange(client, minted["token"], audience=str(gcp.audience))
    claims = await verify_with_pyjwt(client, (await resp.json())["access_token"], str(gcp.audience))
    assert claims["sub"] == "alice"
    assert (claims["user"], claims["workspace"], claims["pipeline"], claims["run"]) == (
        "alice", "genomics", "p1", "run-1",
    )  # fmt: skip
    assert "https://aws.amazon.com/tags" not in claims


async def test_exchange_for_azure_uses_the_identity_subject(
    client: TestClient, issuer: IssuerFixture
) -> None:
    shared = "urn:credsidecar:identity:azure:genomics-pipelines"
    for user in ("alice", "bob"):
        minted = await mint(client, issuer, user=user, run=f"run-{user}")
        resp = await exchange(client, minted["token"], audience=AZURE_AUD)
        claims = await verify_with_pyjwt(client, (await resp.json())["access_token"], AZURE_AUD)
        # Entra matches one exact subject per federated credential: the identity's.
        assert claims["sub"] == f"credsidecar:azure:{user}"  # each user's own, by default
        assert claims["user"] == user
        resp = await exchange(client, minted["token"], audience=AZURE_AUD, resource=shared)
        claims = await verify_with_pyjwt(client, (await resp.json())["access_token"], AZURE_AUD)
        assert claims["sub"] == "credsidecar:azure:genomics-pipelines"  # whoever the user is


async def test_exchange_never_outlives_the_launch_token(
    client: TestClient, issuer: IssuerFixture
) -> None:
    minted = await mint(client, issuer, lifetime=120)
    resp = await exchange(client, minted["token"])
    assert (await resp.json())["expires_in"] == 120


async def test_exchange_can_pick_a_non_default_identity_by_resource(
    client: TestClient, issuer: IssuerFixture
) -> None:
    minted = await mint(client, issuer)
    resp = await exchange(
        client, minted["token"], resource="urn:credsidecar:identity:aws:genomics-readonly"
    )
    assert (await resp.json())["identity"]["name"] == "genomics-readonly"
    resp = await exchange(client, minted["token"], resource="urn:credsidecar:identity:aws:bob-data")
    await assert_error(resp, 400, "invalid_target", "'bob-data'")


async def test_exchange_with_unknown_audience_names_the_allowed_ones(
    client: TestClient, issuer: IssuerFixture
) -> None:
    minted = await mint(client, issuer)
    resp = await exchange(client, minted["token"], audience="https://evil.example")
    await assert_error(resp, 400, "invalid_target", "aws=sts.amazonaws.com")


async def test_exchanged_token_cannot_be_used_as_a_launch_token(
    client: TestClient, issuer: IssuerFixture
) -> None:
    minted = await mint(client, issuer)
    cloud_token = (await (await exchange(client, minted["token"])).json())["access_token"]
    resp = await exchange(client, cloud_token)
    await assert_error(resp, 400, "invalid_grant", "not a launch token")


async def test_tampered_token_is_refused(client: TestClient, issuer: IssuerFixture) -> None:
    minted = await mint(client, issuer)
    resp = await exchange(client, forge(minted["token"], user="bob", sub="bob"))
    await assert_error(resp, 400, "invalid_grant", "not signed by this issuer")


async def test_alg_none_token_is_refused(client: TestClient, issuer: IssuerFixture) -> None:
    minted = await mint(client, issuer)
    _, payload, _ = minted["token"].split(".")
    header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    resp = await exchange(client, f"{header}.{payload}.")
    await assert_error(resp, 400, "invalid_grant")


async def test_foreign_token_is_refused(client: TestClient, issuer: IssuerFixture) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = int(issuer.clock())
    foreign = pyjwt.encode(
        {"iss": issuer.config.issuer_url, "aud": issuer.config.issuer_url, "sub": "alice",
         "user": "alice", "run": "r", "jti": "x", "exp": now + 600, "token_use": "launch"},
        key, algorithm="RS256", headers={"kid": issuer.service.keys.records[0].kid},
    )  # fmt: skip
    resp = await exchange(client, foreign)
    await assert_error(resp, 400, "invalid_grant", "not signed by this issuer")


async def test_hs256_signed_with_the_public_key_is_refused(
    client: TestClient, issuer: IssuerFixture
) -> None:
    """Algorithm confusion: an attacker HMACs with the published key material."""
    minted = await mint(client, issuer)
    _, payload, _ = minted["token"].split(".")
    import hashlib
    import hmac

    public = json.dumps(issuer.service.keys.jwks()["keys"][0]).encode()
    new_header = (
        base64.urlsafe_b64encode(
            json.dumps({"alg": "HS256", "kid": issuer.service.keys.records[0].kid}).encode()
        )
        .rstrip(b"=")
        .decode()
    )
    signing_input = f"{new_header}.{payload}".encode()
    mac = hmac.new(public, signing_input, hashlib.sha256).digest()
    sig = base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
    resp = await exchange(client, f"{new_header}.{payload}.{sig}")
    await assert_error(resp, 400, "invalid_grant")


async def test_expired_launch_token_is_refused(client: TestClient, issuer: IssuerFixture) -> None:
    minted = await mint(client, issuer, lifetime=300)
    issuer.clock.advance(301)
    resp = await exchange(client, minted["token"])
    await assert_error(resp, 400, "invalid_grant", "expired", "'run-1'")


async def test_not_yet_valid_launch_token_is_refused(
    client: TestClient, issuer: IssuerFixture
) -> None:
    minted = await mint(client, issuer)
    issuer.clock.advance(-3600)
    resp = await exchange(client, minted["token"])
    await assert_error(resp, 400, "invalid_grant", "not valid yet")


@pytest.mark.parametrize(
    ("form", "fragment"),
    [
        ({"grant_type": "client_credentials"}, "grant_type"),
        ({"grant_type": EXCHANGE, "subject_token_type": "x"}, "subject_token_type"),
        ({"grant_type": EXCHANGE, "subject_token_type": JWT_TYPE}, "audience"),
        (
            {"grant_type": EXCHANGE, "subject_token_type": JWT_TYPE, "audience": "a"},
            "subject_token",
        ),
        (
            {"grant_type": EXCHANGE, "subject_token_type": JWT_TYPE, "audience": "a",
             "subject_token": "not.a.jwt"},
            "not signed by this issuer",
        ),
    ],
)  # fmt: skip
async def test_exchange_rejects_malformed_requests(
    client: TestClient, form: dict[str, str], fragment: str
) -> None:
    resp = await client.post("/v1/token", data=form)
    assert resp.status == 400
    assert fragment in (await resp.json())["error_description"]


# revocation ----------------------------------------------------------------------------------


async def test_revoked_run_cannot_exchange_or_mint(
    client: TestClient, issuer: IssuerFixture
) -> None:
    minted = await mint(client, issuer)
    assert (await exchange(client, minted["token"])).status == 200
    resp = await client.post(
        "/v1/runs/run-1/revoke", json={"reason": "user left"}, headers=issuer.auth
    )
    assert resp.status == 200 and (await resp.json())["already_revoked"] is False
    desc = await assert_error(
        await exchange(client, minted["token"]), 403, "access_denied", "run 'run-1'", "revoked"
    )
    assert "user left" in desc
    resp = await client.post(
        "/v1/launch-tokens", json={"user": "alice", "run": "run-1"}, headers=issuer.auth
    )
    await assert_error(resp, 403, "access_denied", "revoked")
    events = [e["event"] for e in issuer.audit_events()]
    assert "run.revoked" in events and events[-2] == "token.exchange_refused"


async def test_revocation_needs_a_platform_key(client: TestClient, issuer: IssuerFixture) -> None:
    resp = await client.post("/v1/runs/run-1/revoke")
    await assert_error(resp, 401, "unauthorized")
    assert await asyncio.to_thread(issuer.service.store.run_revocation, "run-1") is None


async def test_disabled_user_cannot_exchange_until_enabled(
    client: TestClient, issuer: IssuerFixture
) -> None:
    minted = await mint(client, issuer)
    resp = await client.post("/v1/users/alice/disable", headers=issuer.auth)
    assert resp.status == 200
    await assert_error(
        await exchange(client, minted["token"]), 403, "access_denied", "'alice'", "disabled"
    )
    assert (await client.post("/v1/users/alice/enable", headers=issuer.auth)).status == 200
    assert (await exchange(client, minted["token"])).status == 200


async def test_disabling_an_unknown_user_is_404(client: TestClient, issuer: IssuerFixture) -> None:
    resp = await client.post("/v1/users/mallory/disable", headers=issuer.auth)
    await assert_error(resp, 404, "not_found", "'mallory'")


# policy reload -------------------------------------------------------------------------------


async def test_policy_change_applies_at_the_next_exchange(
    client: TestClient, issuer: IssuerFixture
) -> None:
    minted = await mint(client, issuer)
    policy = issuer.config.policy_path
    text = policy.read_text()
    # Remove alice's own AWS grant: her token still names alice-data, the policy no longer does.
    policy.write_text(
        text.replace('users = ["alice"]\nprovider = "aws"\nidentities = ["alice-data"]',
                     'users = ["bob"]\nprovider = "aws"\nidentities = ["alice-data"]')
    )  # fmt: skip
    assert await asyncio.to_thread(issuer.service.policy_holder.reload)
    await assert_error(
        await exchange(client, minted["token"]), 403, "access_denied", "no longer grants"
    )


async def test_bad_policy_file_keeps_the_old_policy(
    client: TestClient, issuer: IssuerFixture
) -> None:
    policy = issuer.config.policy_path
    policy.write_text(policy.read_text() + '\n[[grants]]\nusers = ["alice"]\nprovider = "aws"\n'
                      'identities = ["nonexistent"]\n')  # fmt: skip
    assert not await asyncio.to_thread(issuer.service.policy_holder.reload)
    error = str(issuer.service.policy_holder.last_error)
    assert "unknown aws identity 'nonexistent'" in error
    assert "policy.toml:" in error and ":?:" not in error
    minted = await mint(client, issuer)
    assert (await exchange(client, minted["token"])).status == 200
    assert issuer.audit_events()[0]["event"] == "policy.rejected"


# audit ---------------------------------------------------------------------------------------


async def test_audit_trail_has_ids_and_never_tokens(
    client: TestClient, issuer: IssuerFixture
) -> None:
    minted = await mint(client, issuer)
    cloud = (await (await exchange(client, minted["token"])).json())["access_token"]
    text = Path(str(issuer.config.audit_log)).read_text()  # noqa: ASYNC240 - a small local file
    assert minted["token"] not in text and cloud not in text and issuer.api_key not in text
    minted_event, exchanged = issuer.audit_events()
    assert minted_event["event"] == "launch_token.minted"
    assert minted_event["jti"] == minted["jti"] and minted_event["kid"] == minted["kid"]
    assert minted_event["caller"] == "dev-platform"
    assert exchanged["event"] == "token.exchanged"
    assert exchanged["identity"] == "alice-data" and exchanged["run"] == "run-1"
    assert exchanged["exp"] == int(issuer.clock()) + 600
