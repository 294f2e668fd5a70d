"""The node-IMDS stand-in answers as Azure's IMDS does on a node holding several identities."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from credsidecar.sandbox.azure.node_imds import MAX_LOGGED, NodeImds
from credsidecar.sandbox.azure.runner import AzureSandbox
from credsidecar.sandbox.seed import AZURE_NODE_IDENTITIES

NODE = {i.name: i for i in AZURE_NODE_IDENTITIES}
PATH = "/metadata/identity/oauth2/token"


async def ask(
    azure: AzureSandbox,
    http: aiohttp.ClientSession,
    headers: dict[str, str] | None = None,
    **query: str,
) -> tuple[int, Any]:
    params = {"api-version": "2018-02-01", "resource": "https://storage.azure.com", **query}
    async with http.get(
        f"{azure.node_imds_url}{PATH}",
        params=params,
        headers={"Metadata": "true"} if headers is None else headers,
    ) as resp:
        return resp.status, await resp.json()  # fmt: skip


async def test_no_selector_is_the_system_assigned_identity(
    azure: AzureSandbox, http: aiohttp.ClientSession
) -> None:
    status, body = await ask(azure, http)
    assert status == 200
    assert body["client_id"] == NODE["node"].client_id
    assert body["expires_in"].isdigit() and body["token_type"] == "Bearer"


@pytest.mark.parametrize(
    ("headers", "description"),
    [({}, "Required metadata header not specified"),
     ({"Metadata": "true", "X-Forwarded-For": "10.0.0.1"},
      "Request contains X-Forwarded-For header")],
)  # fmt: skip
async def test_requests_without_the_header_or_through_a_proxy_are_refused(
    azure: AzureSandbox, http: aiohttp.ClientSession, headers: dict[str, str], description: str
) -> None:
    assert await ask(azure, http, headers) == (
        400,
        {"error": "invalid_request", "error_description": description},
    )


async def test_an_identity_the_node_does_not_hold_is_not_found(
    azure: AzureSandbox, http: aiohttp.ClientSession
) -> None:
    status, body = await ask(azure, http, client_id="00000000-0000-4000-8000-0000000000ff")
    assert (status, body["error_description"]) == (400, "Identity not found")


def test_a_node_without_a_system_identity_needs_a_selector(azure: AzureSandbox) -> None:
    user_only = NodeImds.holding(azure.state, AZURE_NODE_IDENTITIES[1:])
    assert isinstance(user_only.find("", "", ""), str)  # "Multiple user assigned identities..."
    one = NodeImds.holding(azure.state, AZURE_NODE_IDENTITIES[1:2])
    found = one.find("", "", "")
    assert not isinstance(found, str) and found is not None
    assert found.client_id == NODE["node-alice"].client_id


async def test_the_request_log_is_bounded(azure: AzureSandbox, http: aiohttp.ClientSession) -> None:
    for _ in range(MAX_LOGGED + 5):
        await ask(azure, http, {})
    async with http.get(f"{azure.node_imds_url}/_sandbox/requests") as resp:
        assert len(await resp.json()) == MAX_LOGGED
