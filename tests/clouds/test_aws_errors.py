"""AWS refusals, from the sandbox's STS stand-in and the real issuer, read as sentences that name
the user, the run, the role, the cause in IAM's terms and the fix."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

import aiohttp
import pytest

from credsidecar.clouds.aws import AwsExchanger, AwsSettings
from credsidecar.errors import CredsidecarError, Forbidden, InvalidGrant, Unavailable
from credsidecar.launch import StaticTokenSource
from credsidecar.launch.exchange import FederatedToken, IssuerExchange, TokenSupplier
from credsidecar.listen import bind_loopback, port_of
from credsidecar.sandbox.aws.sts import StsState, create_sts_app
from credsidecar.sandbox.aws.trust import provider_id, trust_policy
from credsidecar.sandbox.seed import ROLES
from tests.sandbox.conftest import ServedIssuer, ShiftedClock

ALICE_ROLE, BOB_ROLE = ROLES[0], ROLES[1]
AUDIENCE = "sts.amazonaws.com"


class NoMoto:
    """The stand-in refuses before it would ask moto for credentials."""

    def admin_sts(self) -> object:
        return object()


async def sts_url(
    aiohttp_server: Any,
    providers: Mapping[str, tuple[str, ...]],
    trust: Mapping[str, Mapping[str, Any]],
    clock: ShiftedClock | None = None,
) -> str:
    state = StsState(moto=NoMoto(), providers=providers, trust=trust)  # type: ignore[arg-type]
    if clock is not None:
        state.clock = clock
    server = await aiohttp_server(create_sts_app(state))
    return str(server.make_url("/"))


async def launch(issuer: ServedIssuer, http: aiohttp.ClientSession, run: str) -> IssuerExchange:
    return IssuerExchange(issuer.url, StaticTokenSource(await issuer.mint("alice", run)), http)


async def refusal(
    supplier: TokenSupplier, http: aiohttp.ClientSession, url: str, role: str, run: str = "r1"
) -> CredsidecarError:
    settings = AwsSettings(role_arn=role, identity_name="alice-data", sts_endpoint=url)
    ex = AwsExchanger(settings, supplier, http, f"user alice (run {run})")
    with pytest.raises(CredsidecarError) as info:
        await ex.fetch()
    return info.value


def trusting(issuer: ServedIssuer) -> dict[str, Mapping[str, Any]]:
    return {role.arn: trust_policy(role, issuer.url, AUDIENCE) for role in ROLES}


def assert_names_launch(error: CredsidecarError, role: str, run: str = "r1") -> None:
    assert error.message.startswith(f"user alice (run {run}) may not assume {role}")
    assert "(aws identity 'alice-data')" in error.message
    assert "eyJ" not in error.message  # no token (a JWT's base64 header) in any message


async def test_a_trust_policy_that_does_not_admit_the_user_names_the_statement_to_add(
    issuer: ServedIssuer, http: aiohttp.ClientSession, aiohttp_server: Any
) -> None:
    url = await sts_url(aiohttp_server, {issuer.url: (AUDIENCE,)}, trusting(issuer))
    # alice's token shown to bob's role, whose trust policy admits sub=bob only
    error = await refusal(await launch(issuer, http, "r1"), http, url, BOB_ROLE.arn)
    assert isinstance(error, Forbidden)
    assert_names_launch(error, BOB_ROLE.arn)
    host = provider_id(issuer.url)
    assert (
        f"the role's trust policy does not trust issuer {issuer.url} with audience "
        f"{AUDIENCE} for sub alice; add a statement to the trust policy of {BOB_ROLE.arn}"
    ) in error.message
    assert f'"Federated": "arn:aws:iam::123456789012:oidc-provider/{host}"' in error.message
    assert f'"{host}:aud": "{AUDIENCE}", "{host}:sub": "alice"' in error.message
    assert "STS said: AccessDenied: Not authorized to perform" in error.message


async def test_a_missing_role_says_create_or_correct_it(
    issuer: ServedIssuer, http: aiohttp.ClientSession, aiohttp_server: Any
) -> None:
    url = await sts_url(aiohttp_server, {issuer.url: (AUDIENCE,)}, {})
    error = await refusal(await launch(issuer, http, "r1"), http, url, ALICE_ROLE.arn)
    assert isinstance(error, Forbidden)
    assert_names_launch(error, ALICE_ROLE.arn)
    assert f"the role does not exist; create role {ALICE_ROLE.arn}" in error.message


async def test_an_account_without_the_oidc_provider_names_the_command_to_create_it(
    issuer: ServedIssuer, http: aiohttp.ClientSession, aiohttp_server: Any
) -> None:
    url = await sts_url(aiohttp_server, {}, trusting(issuer))
    error = await refusal(await launch(issuer, http, "r1"), http, url, ALICE_ROLE.arn)
    assert isinstance(error, Forbidden)
    assert_names_launch(error, ALICE_ROLE.arn)
    assert f"account 123456789012 has no IAM OIDC provider for issuer {issuer.url}" in (
        error.message
    )
    assert (
        f"aws iam create-open-id-connect-provider --url {issuer.url} --client-id-list {AUDIENCE}"
    ) in error.message


async def test_an_audience_the_provider_does_not_list_names_the_client_id_to_add(
    issuer: ServedIssuer, http: aiohttp.ClientSession, aiohttp_server: Any
) -> None:
    url = await sts_url(aiohttp_server, {issuer.url: ("other",)}, trusting(issuer))
    error = await refusal(await launch(issuer, http, "r1"), http, url, ALICE_ROLE.arn)
    assert isinstance(error, Forbidden)
    assert_names_launch(error, ALICE_ROLE.arn)
    assert f"audience {AUDIENCE} is not a client ID of the account's OIDC provider" in (
        error.message
    )
    assert "add-client-id-to-open-id-connect-provider" in error.message
    assert f"--client-id {AUDIENCE}" in error.message


async def test_an_expired_token_points_at_the_clocks(
    issuer: ServedIssuer, http: aiohttp.ClientSession, aiohttp_server: Any,
    sandbox_clock: ShiftedClock,
) -> None:  # fmt: skip
    url = await sts_url(aiohttp_server, {issuer.url: (AUDIENCE,)}, trusting(issuer),
                        sandbox_clock)  # fmt: skip
    sandbox_clock.advance(7200)  # STS's clock is two hours ahead of the issuer's
    error = await refusal(await launch(issuer, http, "r1"), http, url, ALICE_ROLE.arn)
    assert isinstance(error, InvalidGrant)
    assert_names_launch(error, ALICE_ROLE.arn)
    assert f"STS says the token from {issuer.url} expired" in error.message
    assert "this host's clock and the issuer's agree (NTP)" in error.message


class Tampered:
    """The issuer's token with its signature replaced: STS cannot validate it."""

    def __init__(self, inner: TokenSupplier) -> None:
        self._inner = inner

    async def token(self, audience: str, provider: str, identity: str | None) -> FederatedToken:
        real = await self._inner.token(audience, provider, identity)
        head, body, _ = real.token.split(".")
        return FederatedToken(f"{head}.{body}.AAAA", real.expires_at, real.identity)


async def test_a_token_sts_cannot_validate_names_discovery_and_thumbprint(
    issuer: ServedIssuer, http: aiohttp.ClientSession, aiohttp_server: Any
) -> None:
    url = await sts_url(aiohttp_server, {issuer.url: (AUDIENCE,)}, trusting(issuer))
    error = await refusal(Tampered(await launch(issuer, http, "r1")), http, url, ALICE_ROLE.arn)
    assert isinstance(error, InvalidGrant)
    assert_names_launch(error, ALICE_ROLE.arn)
    assert f"STS could not validate the token from issuer {issuer.url}" in error.message
    assert f"{issuer.url}/.well-known/openid-configuration and its jwks_uri" in error.message
    assert "thumbprint" in error.message


def _segment(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


async def test_an_issuer_aws_cannot_reach_is_retryable_and_names_its_discovery_url(
    http: aiohttp.ClientSession, aiohttp_server: Any
) -> None:
    with bind_loopback() as held:  # bound, never listening: nothing answers there
        dead = f"http://127.0.0.1:{port_of(held)}"
        claims = {"iss": dead, "sub": "alice", "aud": AUDIENCE, "exp": 2**31}
        token = f"{_segment({'alg': 'RS256', 'kid': 'k'})}.{_segment(claims)}.c2ln"

        class Unreachable:
            async def token(self, audience: str, provider: str, who: str | None) -> FederatedToken:
                return FederatedToken(token, None, {})

        url = await sts_url(aiohttp_server, {dead: (AUDIENCE,)}, {})
        error = await refusal(Unreachable(), http, url, ALICE_ROLE.arn)
    assert isinstance(error, Unavailable) and error.retryable
    assert error.message.startswith(f"user alice (run r1) may not assume {ALICE_ROLE.arn}")
    assert f"AWS could not fetch the discovery document or keys of issuer {dead}" in (error.message)
    assert f"make {dead}/.well-known/openid-configuration and its jwks_uri reachable" in (
        error.message
    )


async def test_an_issuer_refusal_names_the_launch_the_role_and_the_issuers_reason(
    issuer: ServedIssuer, http: aiohttp.ClientSession, aiohttp_server: Any
) -> None:
    url = await sts_url(aiohttp_server, {issuer.url: (AUDIENCE,)}, trusting(issuer))
    supplier = await launch(issuer, http, "run-9")
    headers = {"Authorization": f"Bearer {issuer.api_key}"}
    async with http.post(f"{issuer.url}/v1/runs/run-9/revoke", headers=headers) as resp:
        assert resp.status == 200
    error = await refusal(supplier, http, url, ALICE_ROLE.arn, run="run-9")
    assert isinstance(error, Forbidden)
    assert error.message.startswith(
        f"user alice (run run-9) cannot get credentials for aws identity 'alice-data' "
        f"({ALICE_ROLE.arn}): the issuer refused the exchange: run 'run-9' of user 'alice' was "
        "revoked; start a new run to get new credentials"
    )


async def test_upstream_text_is_cut_to_a_bounded_length(
    issuer: ServedIssuer, http: aiohttp.ClientSession, aiohttp_server: Any
) -> None:
    from aiohttp import web

    async def verbose(request: web.Request) -> web.Response:
        body = ('<ErrorResponse><Error><Code>AccessDenied</Code><Message>'
                + "x" * 100_000 + "</Message></Error></ErrorResponse>")  # fmt: skip
        return web.Response(status=403, text=body, content_type="text/xml")

    app = web.Application()
    app.router.add_post("/", verbose)
    server = await aiohttp_server(app)
    error = await refusal(await launch(issuer, http, "r1"), http, str(server.make_url("/")),
                          ALICE_ROLE.arn)  # fmt: skip
    assert len(error.message) < 2000 and error.message.endswith("...")
