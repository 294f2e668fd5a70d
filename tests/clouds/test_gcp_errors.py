"""Google STS and IAM Credentials refusals, from the sandbox stand-ins and the real issuer, read
as sentences that name the user, the run, the identity, the provider setting or IAM binding
that did not match, and the fix."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from credsidecar.clouds.gcp import CLOUD_PLATFORM, GcpExchanger, GcpSettings
from credsidecar.errors import CredsidecarError, Forbidden
from credsidecar.launch import StaticTokenSource
from credsidecar.launch.exchange import IssuerExchange
from credsidecar.sandbox.gcp.iam import GcpIamState, create_gcp_iam_app
from credsidecar.sandbox.gcp.state import GcpState
from credsidecar.sandbox.gcp.sts import GcpProvider, GcpStsState, create_gcp_sts_app
from credsidecar.sandbox.seed import (
    GCP_AUDIENCE,
    GCP_POOL_RESOURCE,
    GCP_PROVIDER_RESOURCE,
    GCP_SERVICE_ACCOUNTS,
    gcp_principal,
)
from tests.sandbox.conftest import ServedIssuer, ShiftedClock

ALICE_SA = "alice@sandbox-project.iam.gserviceaccount.com"
BOB_SA = "bob@sandbox-project.iam.gserviceaccount.com"
ALICE_PRINCIPAL = f"principal://iam.googleapis.com/{GCP_POOL_RESOURCE}/subject/alice"


async def stand_ins(
    aiohttp_server: Any, served: ServedIssuer, clock: ShiftedClock, **provider: Any
) -> tuple[str, str]:
    """Google STS (one provider, as configured by `provider`) and IAM Credentials."""
    shared = GcpState(clock=clock)
    settings: dict[str, Any] = {"resource": GCP_PROVIDER_RESOURCE, "issuer": served.url,
                                "allowed_subjects": ("alice", "bob"), **provider}  # fmt: skip
    sts = GcpStsState(shared, {GCP_AUDIENCE: GcpProvider(**settings)})
    members = {a.email: frozenset(map(gcp_principal, a.subjects)) for a in GCP_SERVICE_ACCOUNTS}
    sts_server = await aiohttp_server(create_gcp_sts_app(sts))
    iam_server = await aiohttp_server(create_gcp_iam_app(GcpIamState(shared, members)))
    return str(sts_server.make_url("/v1/token")), str(iam_server.make_url("")).rstrip("/")


async def refusal(
    issuer: ServedIssuer, http: aiohttp.ClientSession, urls: tuple[str, str], **settings: Any
) -> CredsidecarError:
    supplier = IssuerExchange(issuer.url, StaticTokenSource(await issuer.mint("alice", "r1")),
                              http)  # fmt: skip
    config = GcpSettings(**{"audience": GCP_AUDIENCE, "identity_name": "alice",
                            "sts_url": urls[0], "iam_url": urls[1], **settings})  # fmt: skip
    ex = GcpExchanger(config, supplier, http, "user alice (run r1)")
    with pytest.raises(CredsidecarError) as info:
        await ex.access_token([CLOUD_PLATFORM])
    assert "eyJ" not in info.value.message  # no token in any message
    return info.value


async def test_a_missing_workload_identity_user_binding_names_the_principal_to_add(
    issuer: ServedIssuer, http: aiohttp.ClientSession, aiohttp_server: Any,
    sandbox_clock: ShiftedClock,
) -> None:  # fmt: skip
    urls = await stand_ins(aiohttp_server, issuer, sandbox_clock)
    error = await refusal(issuer, http, urls, service_account=BOB_SA)
    assert isinstance(error, Forbidden)
    assert error.message.startswith(
        f"user alice (run r1) may not impersonate {BOB_SA} (gcp identity 'alice'): "
        f"iam.serviceAccounts.getAccessToken denied to {ALICE_PRINCIPAL}; grant it "
        f"roles/iam.workloadIdentityUser on {BOB_SA}: gcloud iam "
        f"service-accounts add-iam-policy-binding {BOB_SA} --role=roles/iam.workloadIdentityUser "
        f"--member={ALICE_PRINCIPAL}."
    )
    assert "IAM said: Permission 'iam.serviceAccounts.getAccessToken' denied" in error.message


async def test_an_attribute_condition_that_rejects_the_user_names_the_subject(
    issuer: ServedIssuer, http: aiohttp.ClientSession, aiohttp_server: Any,
    sandbox_clock: ShiftedClock,
) -> None:  # fmt: skip
    urls = await stand_ins(aiohttp_server, issuer, sandbox_clock, allowed_subjects=("bob",))
    error = await refusal(issuer, http, urls, service_account=ALICE_SA)
    assert isinstance(error, Forbidden)
    assert error.message.startswith(
        f"user alice (run r1) may not use workload identity provider {GCP_AUDIENCE} (gcp "
        "identity 'alice'): the provider's attribute condition rejects subject alice; make the "
        "provider's attribute condition admit assertion.sub == 'alice' (gcloud iam "
        f"workload-identity-pools providers update-oidc {GCP_PROVIDER_RESOURCE} "
        "--attribute-condition=...)"
    )
    assert "Google STS said: unauthorized_client:" in error.message


async def test_an_audience_the_provider_does_not_allow_names_the_audience_to_add(
    issuer: ServedIssuer, http: aiohttp.ClientSession, aiohttp_server: Any,
    sandbox_clock: ShiftedClock,
) -> None:  # fmt: skip
    urls = await stand_ins(aiohttp_server, issuer, sandbox_clock,
                           allowed_audiences=("https://elsewhere",))  # fmt: skip
    error = await refusal(issuer, http, urls)
    assert isinstance(error, Forbidden)
    assert f"the provider does not accept audience {GCP_AUDIENCE}; add {GCP_AUDIENCE} to the " in (
        error.message
    )
    assert f"--allowed-audiences=...,{GCP_AUDIENCE}" in error.message
    assert error.message.startswith("user alice (run r1) may not use workload identity provider")


async def test_a_provider_trusting_another_issuer_names_the_issuer_uri_to_set(
    issuer: ServedIssuer, http: aiohttp.ClientSession, aiohttp_server: Any,
    sandbox_clock: ShiftedClock,
) -> None:  # fmt: skip
    urls = await stand_ins(aiohttp_server, issuer, sandbox_clock, issuer="https://old.example")
    error = await refusal(issuer, http, urls)
    assert isinstance(error, Forbidden)
    assert f"the provider does not trust issuer {issuer.url}; set the provider's issuer to " in (
        error.message
    )
    assert f"--issuer-uri={issuer.url}" in error.message


async def test_a_missing_provider_is_named_with_what_to_check(
    issuer: ServedIssuer, http: aiohttp.ClientSession, aiohttp_server: Any,
    sandbox_clock: ShiftedClock,
) -> None:  # fmt: skip
    urls = await stand_ins(aiohttp_server, issuer, sandbox_clock)
    other = GCP_AUDIENCE.replace("/providers/sandbox", "/providers/gone")
    # The issuer is asked for alice's own identity; the exchanger shows Google another provider.
    supplier = IssuerExchange(issuer.url, StaticTokenSource(await issuer.mint("alice", "r1")),
                              http)  # fmt: skip

    class SameToken:
        async def token(self, audience: str, provider: str, identity: str | None) -> Any:
            return await supplier.token(GCP_AUDIENCE, provider, identity)

    config = GcpSettings(audience=other, identity_name="alice", sts_url=urls[0],
                         iam_url=urls[1])  # fmt: skip
    ex = GcpExchanger(config, SameToken(), http, "user alice (run r1)")
    with pytest.raises(Forbidden) as info:
        await ex.access_token([CLOUD_PLATFORM])
    assert info.value.message.startswith(
        f"user alice (run r1) may not use workload identity provider {other} (gcp identity "
        "'alice'): the provider or its pool does not exist or is disabled; check that provider "
    )


async def test_an_expired_token_points_at_the_clocks(
    issuer: ServedIssuer, http: aiohttp.ClientSession, aiohttp_server: Any,
    sandbox_clock: ShiftedClock,
) -> None:  # fmt: skip
    urls = await stand_ins(aiohttp_server, issuer, sandbox_clock)
    sandbox_clock.advance(7200)
    error = await refusal(issuer, http, urls)
    assert isinstance(error, Forbidden)
    assert f"the token from {issuer.url} expired; check that this host's clock" in error.message


async def test_a_service_account_that_does_not_exist_says_so(
    issuer: ServedIssuer, http: aiohttp.ClientSession, aiohttp_server: Any,
    sandbox_clock: ShiftedClock,
) -> None:  # fmt: skip
    urls = await stand_ins(aiohttp_server, issuer, sandbox_clock)
    nobody = "nobody@sandbox-project.iam.gserviceaccount.com"
    error = await refusal(issuer, http, urls, service_account=nobody)
    assert isinstance(error, Forbidden)
    assert f"may not impersonate {nobody} (gcp identity 'alice'): service account {nobody} " in (
        error.message
    )
    assert "does not exist; create it or correct the identity's service_account" in error.message
