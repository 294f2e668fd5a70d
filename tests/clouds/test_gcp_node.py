"""The node's own GCP service account through the node's metadata server: the sandbox's
stand-in for the node's account and its impersonation of alice's, a fake metadata server for
refusals and outages."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from credsidecar.clouds.gcp import CLOUD_PLATFORM, GcpSettings
from credsidecar.clouds.gcp_node import NODE_TOKEN_PATH, GcpNodeExchanger
from credsidecar.errors import BadRequest, Forbidden, Unavailable
from credsidecar.launch.exchange import FederatedToken
from credsidecar.sandbox.gcp.runner import GcpSandbox
from credsidecar.sandbox.seed import GCP_NODE_SERVICE_ACCOUNT

ALICE = "alice@sandbox-project.iam.gserviceaccount.com"
WHO = "user alice (run r1)"
STORAGE_READ = "https://www.googleapis.com/auth/devstorage.read_only"


class NoSupplier:
    """A node identity presents nothing of the issuer's: asking for a token is a bug."""

    async def token(self, audience: str, provider: str, identity: str | None) -> FederatedToken:
        raise AssertionError("a node identity must not ask the issuer")


def node_exchanger(
    http: aiohttp.ClientSession,
    metadata_url: str,
    iam_url: str = "http://127.0.0.1:9",
    service_account: str | None = None,
) -> GcpNodeExchanger:
    settings = GcpSettings(audience="", identity_name="node-alice",
                           service_account=service_account, iam_url=iam_url)  # fmt: skip
    return GcpNodeExchanger(settings, NoSupplier(), http, WHO, metadata_url)


async def asked(gcp: GcpSandbox, http: aiohttp.ClientSession) -> list[dict[str, Any]]:
    async with http.get(f"{gcp.node_metadata_url}/_sandbox/requests") as resp:
        found: list[dict[str, Any]] = await resp.json()
        return found


async def test_the_nodes_own_account_comes_from_the_metadata_server_for_the_scopes_asked(
    gcp: GcpSandbox, http: aiohttp.ClientSession
) -> None:
    exchanger = node_exchanger(http, gcp.node_metadata_url)
    token = await exchanger.access_token((STORAGE_READ,))
    grant = gcp.state.tokens.lookup(token.access_token)
    assert grant is not None
    assert (grant.principal, grant.scopes) == (GCP_NODE_SERVICE_ACCOUNT.email,
                                               frozenset({STORAGE_READ}))  # fmt: skip
    assert (await asked(gcp, http))[-1] == {"scopes": STORAGE_READ, "status": 200}


async def test_with_a_service_account_the_nodes_token_impersonates_it(
    gcp: GcpSandbox, http: aiohttp.ClientSession
) -> None:
    exchanger = node_exchanger(http, gcp.node_metadata_url, gcp.iam_url, ALICE)
    token = await exchanger.access_token((CLOUD_PLATFORM,))
    grant = gcp.state.tokens.lookup(token.access_token)
    assert grant is not None and grant.principal == ALICE
    assert (await exchanger.id_token("https://pipelines.example.org")).token.count(".") == 2
    assert [a["scopes"] for a in await asked(gcp, http)] == [CLOUD_PLATFORM] * 2


async def test_impersonating_an_account_that_does_not_exist_is_forbidden_naming_it(
    gcp: GcpSandbox, http: aiohttp.ClientSession
) -> None:
    carol = "carol@sandbox-project.iam.gserviceaccount.com"
    exchanger = node_exchanger(http, gcp.node_metadata_url, gcp.iam_url, carol)
    with pytest.raises(Forbidden) as info:
        await exchanger.access_token((CLOUD_PLATFORM,))
    assert info.value.message.startswith(
        f"{WHO} may not impersonate {carol} with the node's service account (gcp node identity "
        f"'node-alice'): service account {carol} does not exist"
    )


async def test_the_stand_in_refuses_requests_without_the_metadata_flavor(
    gcp: GcpSandbox, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{gcp.node_metadata_url}{NODE_TOKEN_PATH}") as resp:
        assert resp.status == 403
        assert "Metadata-Flavor" in await resp.text()


async def test_id_tokens_of_the_nodes_own_account_are_a_bad_request(
    http: aiohttp.ClientSession,
) -> None:
    exchanger = node_exchanger(http, "http://127.0.0.1:9")
    with pytest.raises(BadRequest, match="add `service_account` to it in the policy"):
        await exchanger.id_token("https://pipelines.example.org")


class FakeMetadata:
    def __init__(self) -> None:
        self.answers: list[tuple[int, Any]] = []
        self.iam: list[tuple[int, Any]] = []
        self.flavors: list[str | None] = []

    async def token(self, request: web.Request) -> web.Response:
        self.flavors.append(request.headers.get("Metadata-Flavor"))
        status, body = self.answers.pop(0)
        return web.json_response(body, status=status)

    async def generate(self, request: web.Request) -> web.Response:
        status, body = self.iam.pop(0)
        return web.json_response(body, status=status)


@pytest.fixture
async def fake(aiohttp_server: Any) -> AsyncIterator[tuple[FakeMetadata, str]]:
    fake = FakeMetadata()
    app = web.Application()
    app.router.add_get(NODE_TOKEN_PATH, fake.token)
    app.router.add_post("/v1/projects/-/serviceAccounts/{sa}", fake.generate)
    server = await aiohttp_server(app)
    yield fake, str(server.make_url("")).rstrip("/")


@pytest.mark.parametrize(
    ("status", "kind", "fragment"),
    [
        (503, Unavailable, "the node's metadata server failed for user alice (run r1) as gcp "
                           "node identity 'node-alice' (the node's service account); retrying"),
        (404, Forbidden, "the node has no service account; attach one to the VM"),
        (403, Forbidden, "the node's metadata server refused"),
    ],
)  # fmt: skip
async def test_metadata_server_refusals_name_user_run_identity_and_its_answer(
    fake: tuple[FakeMetadata, str],
    http: aiohttp.ClientSession,
    status: int,
    kind: type[Exception],
    fragment: str,
) -> None:
    server, url = fake
    server.answers.append((status, {"error": "nope"}))
    with pytest.raises(kind) as info:
        await node_exchanger(http, url).access_token((CLOUD_PLATFORM,))
    message = str(info.value)
    assert fragment in message and f"(HTTP {status}): nope" in message
    assert server.flavors == ["Google"]


async def test_iam_denial_tells_to_grant_the_node_token_creator(
    fake: tuple[FakeMetadata, str], http: aiohttp.ClientSession
) -> None:
    server, url = fake
    server.answers.append((200, {"access_token": "ya29.node", "expires_in": 3599}))
    server.iam.append((403, {"error": {"code": 403, "message": "Permission denied"}}))
    with pytest.raises(Forbidden) as info:
        await node_exchanger(http, url, url, ALICE).access_token((CLOUD_PLATFORM,))
    assert "grant the node's service account roles/iam.serviceAccountTokenCreator on " \
           f"{ALICE}. IAM said: Permission denied" in info.value.message  # fmt: skip


async def test_an_unreachable_metadata_server_names_the_flag(http: aiohttp.ClientSession) -> None:
    with pytest.raises(Unavailable) as info:
        await node_exchanger(http, "http://127.0.0.1:9").access_token((CLOUD_PLATFORM,))
    assert "the node's metadata server is unreachable for user alice (run r1)" in str(info.value)
    assert "--gcp-node-metadata-url" in str(info.value)
