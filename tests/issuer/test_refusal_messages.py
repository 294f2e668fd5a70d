"""The issuer's refusals, over its HTTP API, say who (user, run), which identity, why, and what
to do: the text a sidecar quotes in its log and in the 403/400 body an SDK shows."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from credsidecar.issuer.app import create_app
from tests.issuer.conftest import IssuerFixture
from tests.issuer.test_app import AWS_AUD, exchange, mint


@pytest.fixture
async def client(aiohttp_client: Any, issuer: IssuerFixture) -> TestClient:
    return await aiohttp_client(create_app(issuer.service))


async def refusal(resp: Any, status: int) -> str:
    assert resp.status == status, await resp.text()
    return str((await resp.json())["error_description"])


async def test_a_user_an_admin_disabled_hears_who_and_the_command_that_enables_them(
    client: TestClient, issuer: IssuerFixture
) -> None:
    minted = await mint(client, issuer)
    resp = await client.post("/v1/users/alice/disable", json={"reason": "left the lab"},
                             headers=issuer.auth)  # fmt: skip
    assert resp.status == 200, await resp.text()
    message = await refusal(await exchange(client, minted["token"]), 403)
    assert message == (
        "user 'alice' (run 'run-1') was disabled by an administrator (left the lab); "
        "`credsidecar issuer enable-user alice` lets them launch again"
    )


async def test_a_revoked_run_says_to_start_a_new_one(
    client: TestClient, issuer: IssuerFixture
) -> None:
    minted = await mint(client, issuer)
    resp = await client.post("/v1/runs/run-1/revoke", json={"reason": "x" * 500},
                             headers=issuer.auth)  # fmt: skip
    assert resp.status == 200, await resp.text()
    message = await refusal(await exchange(client, minted["token"]), 403)
    assert message.startswith("run 'run-1' of user 'alice' was revoked (xxx")
    assert message.endswith("...); start a new run to get new credentials")
    assert len(message) < 400  # an admin's long reason is cut, not repeated at every refresh


async def test_an_identity_the_policy_no_longer_grants_names_it_and_how_to_see_grants(
    client: TestClient, issuer: IssuerFixture
) -> None:
    minted = await mint(client, issuer)
    policy = issuer.config.policy_path
    policy.write_text(
        policy.read_text().replace('users = ["alice"]\nprovider = "aws"',
                                   'users = ["bob"]\nprovider = "aws"')
    )  # fmt: skip
    assert await asyncio.to_thread(issuer.service.policy_holder.reload)
    message = await refusal(await exchange(client, minted["token"]), 403)
    assert message == (
        "user 'alice' (run 'run-1') may no longer use aws identity 'alice-data': the policy in "
        "force no longer grants it; grant it again, or start a new run with an identity the "
        "policy grants (`credsidecar issuer explain --config CONFIG --user alice --workspace "
        "genomics` shows what the policy grants)"
    )


async def test_an_expired_launch_token_names_run_and_user(
    client: TestClient, issuer: IssuerFixture
) -> None:
    minted = await mint(client, issuer, lifetime=60)
    issuer.clock.advance(3600)
    message = await refusal(await exchange(client, minted["token"]), 400)
    assert message.startswith("the launch token of run 'run-1' of user 'alice' expired at ")
    assert message.endswith("so relaunch it (or mint with a longer lifetime)")


async def test_a_wrong_audience_for_the_identity_names_the_one_expected(
    client: TestClient, issuer: IssuerFixture
) -> None:
    minted = await mint(client, issuer)
    resp = await exchange(client, minted["token"], "api://elsewhere",
                          resource="urn:credsidecar:identity:aws:alice-data")  # fmt: skip
    message = await refusal(resp, 400)
    assert message == (
        "aws identity 'alice-data' of user 'alice' (run 'run-1') expects audience "
        f"'{AWS_AUD}', not 'api://elsewhere'; set the sidecar's audience for aws to "
        f"'{AWS_AUD}' (or leave it unset)"
    )


async def test_an_audience_no_identity_has_names_the_run_and_user(
    client: TestClient, issuer: IssuerFixture
) -> None:
    minted = await mint(client, issuer)
    message = await refusal(await exchange(client, minted["token"], "a" * 5000), 400)
    assert "belongs to none of the identities of run 'run-1' of user 'alice'" in message
    assert len(message) < 1000  # the caller's audience is quoted cut


async def test_selecting_an_ungranted_identity_names_what_is_granted_and_how_to_see_why(
    client: TestClient, issuer: IssuerFixture
) -> None:
    resp = await client.post(
        "/v1/launch-tokens", headers=issuer.auth,
        json={"user": "bob", "run": "r2", "workspace": "genomics",
              "identities": {"aws": "alice-data"}},
    )  # fmt: skip
    message = await refusal(resp, 403)
    assert message == (
        "user 'bob' (run 'r2') may not use aws identity 'alice-data' in workspace 'genomics': "
        "no grant in the policy gives it to them (they may use bob-data, genomics-readonly); "
        "add it to a [[grants]] entry for them, or select a granted one (`credsidecar issuer "
        "explain --config CONFIG --user bob --workspace genomics` shows what the policy grants)"
    )
