"""The GCP exchanger against the real issuer and the sandbox's STS and IAM stand-ins."""

from __future__ import annotations

import aiohttp
import jwt as pyjwt
import pytest

from credsidecar.clouds.gcp import CLOUD_PLATFORM, GcpExchanger, GcpSettings
from credsidecar.errors import BadRequest, Forbidden, Unavailable
from credsidecar.launch import StaticTokenSource
from credsidecar.launch.exchange import FederatedToken, IssuerExchange
from credsidecar.listen import bind_loopback, port_of
from credsidecar.sandbox.gcp.runner import GcpSandbox
from credsidecar.sandbox.seed import GCP_AUDIENCE
from tests.sandbox.conftest import ServedIssuer

ALICE_SA = "alice@sandbox-project.iam.gserviceaccount.com"
BOB_SA = "bob@sandbox-project.iam.gserviceaccount.com"


async def exchanger(
    issuer: ServedIssuer, gcp: GcpSandbox, http: aiohttp.ClientSession, user: str = "alice",
    run: str = "run-1", **settings: object,
) -> GcpExchanger:  # fmt: skip
    supplier = IssuerExchange(issuer.url, StaticTokenSource(await issuer.mint(user, run)), http)
    config = GcpSettings(audience=GCP_AUDIENCE, identity_name=user, sts_url=gcp.sts_url,
                         iam_url=gcp.iam_url, **settings)  # type: ignore[arg-type]  # fmt: skip
    return GcpExchanger(config, supplier, http, f"user {user} (run {run})")


async def test_access_and_id_tokens_for_the_users_service_account(
    issuer: ServedIssuer, gcp: GcpSandbox, http: aiohttp.ClientSession
) -> None:
    ex = await exchanger(issuer, gcp, http, service_account=ALICE_SA, lifetime=600)
    token = await ex.access_token([CLOUD_PLATFORM])
    assert token.access_token and token.scopes == (CLOUD_PLATFORM,)
    assert 590 <= token.expires_at - ex._clock() <= 600
    id_token = await ex.id_token("https://svc.example")
    async with http.get(gcp.id_token_certs_url) as resp:
        keys = pyjwt.PyJWKSet.from_dict(await resp.json())
    kid = pyjwt.get_unverified_header(id_token.token)["kid"]
    claims = pyjwt.decode(id_token.token, keys[kid].key, algorithms=["RS256"],
                          audience="https://svc.example")  # fmt: skip
    assert claims["email"] == ALICE_SA


async def test_direct_federation_gives_a_federated_token_and_no_id_token(
    issuer: ServedIssuer, gcp: GcpSandbox, http: aiohttp.ClientSession
) -> None:
    ex = await exchanger(issuer, gcp, http)
    assert (await ex.access_token([])).scopes == (CLOUD_PLATFORM,)
    with pytest.raises(BadRequest, match="ID tokens need a service account"):
        await ex.id_token("https://svc.example")


async def test_impersonating_another_users_service_account_is_refused(
    issuer: ServedIssuer, gcp: GcpSandbox, http: aiohttp.ClientSession
) -> None:
    ex = await exchanger(issuer, gcp, http, service_account=BOB_SA)
    with pytest.raises(Forbidden) as info:
        await ex.access_token([CLOUD_PLATFORM])
    message = info.value.message
    assert f"user alice (run run-1) may not impersonate {BOB_SA}" in message
    assert "iam.serviceAccounts.getAccessToken" in message
    assert "roles/iam.workloadIdentityUser" in message


async def test_unknown_provider_audience_is_refused_with_the_cause(
    issuer: ServedIssuer, gcp: GcpSandbox, http: aiohttp.ClientSession
) -> None:
    class WrongAudience:
        async def token(self, audience: str, provider: str, identity: str | None) -> FederatedToken:
            return FederatedToken(await issuer.cloud_token("alice"), None, {})

    other = GCP_AUDIENCE.replace("/providers/sandbox", "/providers/other")
    ex = GcpExchanger(GcpSettings(audience=other, sts_url=gcp.sts_url, iam_url=gcp.iam_url),
                      WrongAudience(), http, "user alice (run r)")  # fmt: skip
    with pytest.raises(Forbidden) as info:
        await ex.access_token([CLOUD_PLATFORM])
    assert f"user alice (run r) may not use workload identity provider {other}" in (
        info.value.message
    )


async def test_revoked_run_is_refused_by_the_issuer(
    issuer: ServedIssuer, gcp: GcpSandbox, http: aiohttp.ClientSession
) -> None:
    ex = await exchanger(issuer, gcp, http, run="run-9", service_account=ALICE_SA)
    headers = {"Authorization": f"Bearer {issuer.api_key}"}
    async with http.post(f"{issuer.url}/v1/runs/run-9/revoke", headers=headers) as resp:
        assert resp.status == 200
    with pytest.raises(Forbidden, match="run 'run-9' of user 'alice' was revoked"):
        await ex.access_token([CLOUD_PLATFORM])


async def test_unreachable_issuer_is_a_retryable_error(
    gcp: GcpSandbox, http: aiohttp.ClientSession
) -> None:
    with bind_loopback() as held:  # bound, never listening: connections to it are refused
        dead = f"http://127.0.0.1:{port_of(held)}"
        supplier = IssuerExchange(dead, StaticTokenSource("a.b.c"), http)
        ex = GcpExchanger(GcpSettings(audience=GCP_AUDIENCE, sts_url=gcp.sts_url), supplier, http,
                          "user alice (run r)")  # fmt: skip
        with pytest.raises(Unavailable, match=f"issuer {dead} is unreachable") as info:
            await ex.access_token([CLOUD_PLATFORM])
    assert info.value.retryable
