"""The node's own managed identities through the node's IMDS: the sandbox's node-IMDS stand-in
for what a node holds and refuses, a fake IMDS for outages and odd answers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from aiohttp import web

from credsidecar.clouds.azure_node import AzureNodeExchanger
from credsidecar.clouds.contracts import AzureIdentityRef
from credsidecar.errors import BadRequest, Forbidden, Unavailable
from credsidecar.sandbox.azure.runner import AzureSandbox
from credsidecar.sandbox.azure.state import verify_access_token
from credsidecar.sandbox.seed import AZURE_NODE_IDENTITIES
from credsidecar.sandbox.serving import serve_app

NODE = {i.name: i for i in AZURE_NODE_IDENTITIES}
STORAGE = "https://storage.azure.com/"
WHO = "user alice (run r1)"


def ref(name: str, client_id: str = "", resource_id: str | None = None) -> AzureIdentityRef:
    return AzureIdentityRef(name, "", client_id, resource_id=resource_id)


async def requests_seen(azure: AzureSandbox, http: aiohttp.ClientSession) -> list[dict[str, str]]:
    async with http.get(f"{azure.node_imds_url}/_sandbox/requests") as resp:
        seen: list[dict[str, str]] = await resp.json()
        return seen


@pytest.mark.parametrize(
    ("name", "selector"),
    [("node-alice", "client_id"), ("node-bob", "mi_res_id"), ("node", None)],
)
async def test_each_node_identity_comes_from_the_node_imds_by_its_selector(
    azure: AzureSandbox, http: aiohttp.ClientSession, name: str, selector: str | None
) -> None:
    seed = NODE[name]
    identity = (
        ref(name, client_id=seed.client_id)
        if selector == "client_id"
        else ref(name, resource_id=seed.resource_id)
        if selector == "mi_res_id"
        else ref(name)
    )
    exchanger = AzureNodeExchanger(http, WHO, azure.node_imds_url)
    token = await exchanger.token(identity, STORAGE)
    claims = verify_access_token(azure.state, token.access_token, frozenset({STORAGE}))
    assert (claims["oid"], claims["xms_mirid"]) == (seed.object_id, seed.resource_id)
    assert token.client_id == seed.client_id
    asked = (await requests_seen(azure, http))[-1]
    assert {k: v for k, v in asked.items() if v} == {
        **({selector: seed.client_id if selector == "client_id" else seed.resource_id}
           if selector else {}),
        "resource": STORAGE, "status": 200,
    }  # fmt: skip


async def test_an_identity_the_node_does_not_hold_is_forbidden_with_the_node_answer(
    azure: AzureSandbox, http: aiohttp.ClientSession
) -> None:
    exchanger = AzureNodeExchanger(http, WHO, azure.node_imds_url)
    missing = ref("node-carol", client_id="00000000-0000-4000-8000-0000000000ff")
    with pytest.raises(Forbidden) as info:
        await exchanger.token(missing, STORAGE)
    assert info.value.message == (
        "user alice (run r1) may not use node identity 'node-carol' (client_id "
        "00000000-0000-4000-8000-0000000000ff): the node does not hold it; attach the identity "
        "to the node (VM, scale set or Batch pool), or correct its client_id or mi_res_id in "
        "the identity policy. the node's IMDS said (HTTP 400): Identity not found"
    )


async def test_an_unknown_resource_is_a_bad_request(
    azure: AzureSandbox, http: aiohttp.ClientSession
) -> None:
    exchanger = AzureNodeExchanger(http, WHO, azure.node_imds_url)
    with pytest.raises(BadRequest) as info:
        await exchanger.token(ref("node"), "https://nothing.example")
    expected = (
        "asked for resource 'https://nothing.example' as node identity 'node' (the node's "
        "system-assigned identity), which the tenant does not know"
    )
    assert expected in info.value.message
    assert "AADSTS500011" in info.value.message


@pytest.fixture
async def fake_imds() -> AsyncIterator[tuple[str, list[web.Response]]]:
    """A node IMDS answering whatever the test queues."""
    answers: list[web.Response] = []

    async def token(request: web.Request) -> web.Response:
        assert request.headers["Metadata"] == "true"
        return answers.pop(0)

    app = web.Application()
    app.router.add_get("/metadata/identity/oauth2/token", token)
    runners: list[web.AppRunner] = []
    url = await serve_app(app, runners)
    yield url, answers
    for runner in runners:
        await runner.cleanup()


@pytest.mark.parametrize("status", [500, 503, 429, 410])
async def test_a_failing_node_imds_is_unavailable_and_quotes_no_token(
    fake_imds: tuple[str, list[web.Response]], http: aiohttp.ClientSession, status: int
) -> None:
    url, answers = fake_imds
    answers.append(web.json_response({"error": "unknown", "error_description": "x" * 5000},
                                     status=status))  # fmt: skip
    with pytest.raises(Unavailable) as info:
        await AzureNodeExchanger(http, WHO, url).token(ref("node"), STORAGE)
    message = info.value.message
    assert message.startswith("the node's IMDS failed for user alice (run r1) as node identity "
                              f"'node' (the node's system-assigned identity); retrying. the "
                              f"node's IMDS said (HTTP {status}): xxx")  # fmt: skip
    assert len(message) < 600


async def test_the_lifetime_is_read_from_expires_in_else_expires_on(
    fake_imds: tuple[str, list[web.Response]], http: aiohttp.ClientSession
) -> None:
    url, answers = fake_imds
    now = 1_000_000.0
    clock: Callable[[], float] = lambda: now  # noqa: E731
    answers.append(web.json_response({"access_token": "t1", "expires_in": "600"}))
    answers.append(web.json_response({"access_token": "t2", "expires_on": str(int(now) + 900)}))
    exchanger = AzureNodeExchanger(http, WHO, url, clock=clock)
    assert (await exchanger.token(ref("node"), STORAGE)).expires_at == now + 600
    assert (await exchanger.token(ref("node"), STORAGE)).expires_at == now + 900


async def test_an_unreachable_node_imds_says_where_it_was_looked_for(
    http: aiohttp.ClientSession,
) -> None:
    runners: list[web.AppRunner] = []
    url = await serve_app(web.Application(), runners)
    for runner in runners:
        await runner.cleanup()  # nothing listens there any more
    with pytest.raises(Unavailable) as info:
        await AzureNodeExchanger(http, WHO, url).token(ref("node"), STORAGE)
    where = f"the node's IMDS is unreachable for {WHO} (GET {url}/metadata/identity/oauth2/token?"
    assert where in info.value.message
    assert "--azure-node-imds-url" in info.value.message
