"""Azure IMDS's `/metadata/instance`, as tools read it on the well-known address: the compute
fields, from the default identity's resource id, behind the same `Metadata: true` rule."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from credsidecar.audit import AuditLog
from credsidecar.cache_family import CacheFamily
from credsidecar.clouds.contracts import AzureIdentityRef, AzureToken
from credsidecar.endpoints.azure import AzureEndpoints, with_error_fields
from credsidecar.endpoints.guards import Guard, RefusalLog, allowed_hosts
from tests.support.ports import held_port

TENANT = "00000000-0000-4000-8000-000000000001"
RESOURCE_ID = ("/subscriptions/00000000-0000-4000-8000-000000000002/resourceGroups/"
               "credsidecar-sandbox/providers/Microsoft.ManagedIdentity/"
               "userAssignedIdentities/alice")  # fmt: skip
ALICE = AzureIdentityRef("alice", TENANT, "00000000-0000-4000-8000-0000000000a2",
                         resource_id=RESOURCE_ID)  # fmt: skip
QUERY = "?api-version=2021-02-01"
METADATA = {"Metadata": "true"}


async def _no_token(key: tuple[str, str]) -> AzureToken:
    raise AssertionError("instance metadata needs no token")


async def _client(aiohttp_client: Callable[..., Any], identity: AzureIdentityRef) -> TestClient:
    audit = AuditLog(io.StringIO())
    tokens: CacheFamily[tuple[str, str], AzureToken] = CacheFamily("Azure", _no_token, 0)
    port, server_kwargs = held_port()
    guard = Guard(allowed_hosts(port), RefusalLog(audit), decorate=with_error_fields)
    endpoints = AzureEndpoints(tokens, [identity], "secret", guard, audit, {"user": "alice"})
    app = web.Application()
    app.add_routes(guard.routes(endpoints.routes()))
    return await aiohttp_client(app, server_kwargs=server_kwargs)  # type: ignore[no-any-return]


@pytest.fixture
async def client(aiohttp_client: Callable[..., Any]) -> TestClient:
    return await _client(aiohttp_client, ALICE)


async def test_instance_compute_names_the_identitys_subscription_and_group(
    client: TestClient,
) -> None:
    resp = await client.get(f"/metadata/instance{QUERY}", headers=METADATA)
    assert resp.status == 200 and resp.content_type == "application/json"
    compute = (await resp.json())["compute"]
    assert compute["subscriptionId"] == "00000000-0000-4000-8000-000000000002"
    assert compute["resourceGroupName"] == "credsidecar-sandbox"
    assert compute["location"] == "eastus" and compute["vmId"]
    assert compute["resourceId"].endswith("/providers/Microsoft.Compute/virtualMachines/"
                                          + compute["name"])  # fmt: skip
    again = await (await client.get(f"/metadata/instance/compute{QUERY}", headers=METADATA)).json()
    assert again == compute  # one vmId for the sidecar's life


async def test_one_field_as_text(client: TestClient) -> None:
    path = f"/metadata/instance/compute/location{QUERY}&format=text"
    resp = await client.get(path, headers=METADATA)
    assert (resp.status, await resp.text()) == (200, "eastus")
    missing = await client.get(f"/metadata/instance/compute/nothing{QUERY}", headers=METADATA)
    assert missing.status == 404


async def test_instance_needs_the_metadata_header_and_an_api_version(client: TestClient) -> None:
    no_header = await client.get(f"/metadata/instance{QUERY}")
    assert no_header.status == 400
    assert "metadata header" in (await no_header.json())["error_description"]
    no_version = await client.get("/metadata/instance", headers=METADATA)
    assert no_version.status == 400
    assert "api-version" in (await no_version.json())["error_description"]


async def test_an_identity_without_resource_id_leaves_the_fields_empty(
    aiohttp_client: Callable[..., Any],
) -> None:
    client = await _client(aiohttp_client, AzureIdentityRef("app", TENANT, "c"))
    compute = await (
        await client.get(f"/metadata/instance/compute{QUERY}", headers=METADATA)
    ).json()
    assert compute["subscriptionId"] == "" and compute["resourceGroupName"] == ""
