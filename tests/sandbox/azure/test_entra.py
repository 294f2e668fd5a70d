"""The Entra stand-in over HTTPS with real issuer-signed assertions: it accepts an identity's
assertion only for that identity, refuses the rest with Entra's AADSTS errors, and issues
access tokens with the claims of Entra's own."""

from __future__ import annotations

from typing import Any

import aiohttp
import jwt as pyjwt
import pytest

from credsidecar.issuer.example import EXAMPLE_POLICY
from credsidecar.issuer.identities import AzureIdentity
from credsidecar.issuer.policy import parse_policy
from credsidecar.sandbox.azure.runner import AzureSandbox
from credsidecar.sandbox.seed import AZURE_IDENTITIES, AZURE_TENANT_ID
from tests.sandbox.conftest import ServedIssuer, ShiftedClock, call

AZURE_AUD = "api://AzureADTokenExchange"
STORAGE = "https://storage.azure.com"
IDENTITY = {i.name: i for i in AZURE_IDENTITIES}
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def entra_form(
    client_id: str, assertion: str, scope: str = f"{STORAGE}/.default"
) -> dict[str, str]:
    """What azure-identity's ClientAssertionCredential posts (aad_client_base.py)."""
    return {
        "client_assertion": assertion,
        "client_assertion_type": ASSERTION_TYPE,
        "client_id": client_id,
        "grant_type": "client_credentials",
        "scope": scope,
    }


async def assertion(issuer: ServedIssuer, user: str, identity: str | None = None) -> str:
    """The issuer's token for Entra: the user's default Azure identity unless one is named
    (the launch is in the genomics workspace, which is granted genomics-pipelines)."""
    return await issuer.cloud_token(
        user,
        audience=AZURE_AUD,
        identity=f"azure:{identity}" if identity else None,
        workspace="genomics",
    )


async def entra_token(
    azure: AzureSandbox, https: aiohttp.ClientSession, form: dict[str, str], tenant: str = ""
) -> tuple[int, Any]:
    url = f"{azure.authority_url}/{tenant or azure.tenant_id}/oauth2/v2.0/token"
    return await call(https, "POST", url, data=form)


async def access_token(
    azure: AzureSandbox,
    issuer: ServedIssuer,
    https: aiohttp.ClientSession,
    user: str,
    identity: str | None = None,
    resource: str = STORAGE,
) -> str:
    """An Entra access token for the user's (default or named) identity."""
    client_id = IDENTITY[identity or user].client_id
    form = entra_form(client_id, await assertion(issuer, user, identity), f"{resource}/.default")
    status, body = await entra_token(azure, https, form)
    assert status == 200, body
    return str(body["access_token"])


def assert_aadsts(status: int, body: Any, code: int, error: str, *fragments: str) -> None:
    assert status == 400, body
    assert body["error"] == error and body["error_codes"] == [code], body
    description = body["error_description"]
    assert description.startswith(f"AADSTS{code}: "), description
    assert "Trace ID: " in description and "Correlation ID: " in description
    for fragment in fragments:
        assert fragment in description, description


def test_the_example_policy_names_the_sandbox_identities() -> None:
    """What the issuer hands the sidecar is what the sandbox tenant holds."""
    azure = parse_policy(EXAMPLE_POLICY).identities["azure"]
    # (besides the node's own identities, which Entra does not federate)
    assert {n for n, i in azure.items() if isinstance(i, AzureIdentity)} == set(IDENTITY)
    for name, seeded in IDENTITY.items():
        granted = azure[name]
        assert isinstance(granted, AzureIdentity)
        assert (granted.tenant_id, granted.client_id, granted.subject) == (
            AZURE_TENANT_ID, seeded.client_id, seeded.subject,
        )  # fmt: skip
        assert (granted.object_id, granted.resource_id) == (seeded.object_id, seeded.resource_id)


async def test_alice_gets_a_storage_token_with_the_claims_entra_tokens_have(
    azure: AzureSandbox, issuer: ServedIssuer, https: aiohttp.ClientSession
) -> None:
    alice = IDENTITY["alice"]
    form = entra_form(alice.client_id, await assertion(issuer, "alice"))
    status, body = await entra_token(azure, https, form)
    assert status == 200, body
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == body["ext_expires_in"] == 3600
    _, jwks = await call(
        https, "GET", f"{azure.authority_url}/{AZURE_TENANT_ID}/discovery/v2.0/keys"
    )
    header = pyjwt.get_unverified_header(body["access_token"])
    assert header["alg"] == "RS256" and header["x5t"] == header["kid"]
    key = pyjwt.PyJWKSet.from_dict(jwks)[header["kid"]]
    claims = pyjwt.decode(
        body["access_token"],
        key.key,
        algorithms=["RS256"],
        audience=STORAGE,
        issuer=f"https://sts.windows.net/{AZURE_TENANT_ID}/",
    )
    assert claims["tid"] == AZURE_TENANT_ID
    assert claims["appid"] == alice.client_id
    assert claims["oid"] == claims["sub"] == alice.object_id
    assert claims["xms_mirid"] == alice.resource_id
    assert (claims["ver"], claims["idtyp"], claims["appidacr"]) == ("1.0", "app", "2")
    assert claims["nbf"] == claims["iat"] and claims["exp"] - claims["iat"] == 3600


async def test_alices_assertion_is_refused_for_bobs_client_id_echoing_the_assertion(
    azure: AzureSandbox, issuer: ServedIssuer, https: aiohttp.ClientSession
) -> None:
    form = entra_form(IDENTITY["bob"].client_id, await assertion(issuer, "alice"))
    status, body = await entra_token(azure, https, form)
    assert_aadsts(
        status,
        body,
        70021,
        "invalid_client",
        "No matching federated identity record found for presented assertion. "
        f"Assertion Issuer: '{issuer.url}'. Assertion Subject: 'credsidecar:azure:alice'. "
        f"Assertion Audience: '{AZURE_AUD}'.",
    )


async def test_a_second_granted_identity_is_accepted_for_its_own_client_id_only(
    azure: AzureSandbox, issuer: ServedIssuer, https: aiohttp.ClientSession
) -> None:
    token = await assertion(issuer, "alice", identity="genomics-pipelines")
    assert pyjwt.decode(token, options={"verify_signature": False})["sub"] == (
        "credsidecar:azure:genomics-pipelines"
    )
    status, body = await entra_token(
        azure, https, entra_form(IDENTITY["genomics-pipelines"].client_id, token)
    )
    assert status == 200, body
    claims = pyjwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["oid"] == IDENTITY["genomics-pipelines"].object_id
    status, body = await entra_token(azure, https, entra_form(IDENTITY["alice"].client_id, token))
    assert_aadsts(status, body, 70021, "invalid_client", "'credsidecar:azure:genomics-pipelines'")


async def test_unknown_client_tenant_and_audience_are_refused_as_entra_does(
    azure: AzureSandbox, issuer: ServedIssuer, https: aiohttp.ClientSession
) -> None:
    token = await assertion(issuer, "alice")
    unknown = "00000000-0000-4000-8000-00000000dead"
    status, body = await entra_token(azure, https, entra_form(unknown, token))
    assert_aadsts(
        status,
        body,
        700016,
        "unauthorized_client",
        f"Application with identifier '{unknown}' was not found in the directory "
        f"'{AZURE_TENANT_ID}'.",
    )
    form = entra_form(IDENTITY["alice"].client_id, token)
    status, body = await entra_token(azure, https, form, tenant=unknown)
    assert_aadsts(status, body, 90002, "invalid_request", f"Tenant '{unknown}' not found.")
    aws_token = await issuer.cloud_token("alice", audience="sts.amazonaws.com")
    status, body = await entra_token(
        azure, https, entra_form(IDENTITY["alice"].client_id, aws_token)
    )
    assert_aadsts(
        status,
        body,
        70021,
        "invalid_client",
        "Assertion Subject: 'alice'. Assertion Audience: 'sts.amazonaws.com'.",
    )


async def test_an_expired_assertion_is_outside_its_valid_time_range(
    azure: AzureSandbox,
    issuer: ServedIssuer,
    https: aiohttp.ClientSession,
    sandbox_clock: ShiftedClock,
) -> None:
    form = entra_form(IDENTITY["alice"].client_id, await assertion(issuer, "alice"))
    sandbox_clock.advance(601)  # exchanged tokens live 10 minutes
    status, body = await entra_token(azure, https, form)
    assert_aadsts(
        status,
        body,
        700024,
        "invalid_client",
        "Client assertion is not within its valid time range. Current time: ",
        ", expiry time of assertion ",
    )


@pytest.mark.parametrize(
    ("change", "code", "error", "fragment"),
    [
        ({"scope": STORAGE}, 1002012, "invalid_scope", "/.default suffixed"),
        ({"scope": "https://unknown.example/.default"}, 500011, "invalid_resource",
         "The resource principal named https://unknown.example was not found"),
        ({"client_assertion": ""}, 7000218, "invalid_client", "'client_assertion' or"),
        ({"client_assertion_type": "x"}, 70002, "invalid_client", "client_assertion_type"),
        ({"client_assertion": "not-a-jwt"}, 50027, "invalid_request", "malformed"),
        ({"grant_type": "password"}, 70003, "unsupported_grant_type", "'password'"),
        ({"client_id": ""}, 900144, "invalid_request", "parameter: 'client_id'"),
        ("tamper", 50013, "invalid_client", "signature validation"),
    ],
)  # fmt: skip
async def test_malformed_requests_and_forged_assertions_are_refused(
    azure: AzureSandbox,
    issuer: ServedIssuer,
    https: aiohttp.ClientSession,
    change: dict[str, str] | str,
    code: int,
    error: str,
    fragment: str,
) -> None:
    token = await assertion(issuer, "alice")
    form = entra_form(IDENTITY["alice"].client_id, token)
    if change == "tamper":
        form["client_assertion"] = token[:-6] + ("AAAAAA" if token[-6:] != "AAAAAA" else "BBBBBB")
    else:
        assert isinstance(change, dict)
        form.update(change)
    status, body = await entra_token(azure, https, form)
    assert_aadsts(status, body, code, error, fragment)


async def test_the_v1_endpoint_takes_a_resource_and_answers_strings(
    azure: AzureSandbox, issuer: ServedIssuer, https: aiohttp.ClientSession
) -> None:
    form = entra_form(IDENTITY["bob"].client_id, await assertion(issuer, "bob"))
    del form["scope"]
    form["resource"] = "https://management.azure.com/"
    url = f"{azure.authority_url}/{azure.tenant_id}/oauth2/token"
    status, body = await call(https, "POST", url, data=form)
    assert status == 200, body
    assert body["expires_in"] == "3600" and body["resource"] == "https://management.azure.com/"
    assert int(body["expires_on"]) - int(body["not_before"]) == 3600
    claims = pyjwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["aud"] == "https://management.azure.com/"


async def test_discovery_documents_point_at_the_sandbox(
    azure: AzureSandbox, https: aiohttp.ClientSession
) -> None:
    base, tid = azure.authority_url, azure.tenant_id
    status, v2 = await call(https, "GET", f"{base}/{tid}/v2.0/.well-known/openid-configuration")
    assert status == 200
    assert v2["token_endpoint"] == azure.token_url
    assert v2["issuer"] == f"{base}/{tid}/v2.0"
    status, keys = await call(https, "GET", v2["jwks_uri"])
    assert status == 200 and keys["keys"][0]["kty"] == "RSA" and "d" not in keys["keys"][0]
    _, v1 = await call(https, "GET", f"{base}/{tid}/.well-known/openid-configuration")
    assert v1["issuer"] == f"https://sts.windows.net/{tid}/"
    assert v1["token_endpoint"] == f"{base}/{tid}/oauth2/token"
    status, body = await call(https, "GET", f"{base}/nope/v2.0/.well-known/openid-configuration")
    assert status == 400 and body["error"] == "invalid_tenant"
    assert body["error_description"].startswith("AADSTS90002: Tenant 'nope' not found.")
    # MSAL asks about the host without its port; the answer points back at the port.
    asked = f"https://127.0.0.1/{tid}/oauth2/v2.0/authorize"
    status, body = await call(
        https,
        "GET",
        f"{base}/common/discovery/instance",
        params={"authorization_endpoint": asked, "api-version": "1.0"},
    )
    assert (
        body["tenant_discovery_endpoint"] == f"{base}/{tid}/v2.0/.well-known/openid-configuration"
    )


async def test_outage_hook_makes_the_token_endpoint_answer_503_and_stats_count_calls(
    azure: AzureSandbox, issuer: ServedIssuer, https: aiohttp.ClientSession
) -> None:
    form = entra_form(IDENTITY["alice"].client_id, await assertion(issuer, "alice"))
    hooks = f"{azure.authority_url}/_sandbox"
    assert (await call(https, "POST", f"{hooks}/outage", json={"seconds": 60}))[0] == 200
    status, body = await entra_token(azure, https, form)
    assert status == 503 and body["error"] == "temporarily_unavailable"
    assert (await call(https, "POST", f"{hooks}/outage", json={"seconds": 0}))[0] == 200
    assert (await entra_token(azure, https, form))[0] == 200
    assert (await call(https, "GET", f"{hooks}/stats"))[1] == {"entra.token": 2}
