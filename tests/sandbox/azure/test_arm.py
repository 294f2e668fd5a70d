"""The ARM stand-in over HTTPS: the cloud metadata the az CLI reads, and the subscription list
`az login --identity` asks for, with ARM's token checks."""

from __future__ import annotations

import aiohttp

from credsidecar.sandbox.azure.runner import AzureSandbox
from credsidecar.sandbox.seed import AZURE_SUBSCRIPTION_ID, AZURE_TENANT_ID
from tests.sandbox.azure.test_entra import IDENTITY, access_token
from tests.sandbox.conftest import ServedIssuer, ShiftedClock, call

API = "api-version=2022-12-01"
ARM = "https://management.core.windows.net/"  # the az CLI's ARM resource


async def test_cloud_metadata_names_the_sandbox_endpoints(
    azure: AzureSandbox, https: aiohttp.ClientSession
) -> None:
    assert azure.job_env()["ARM_CLOUD_METADATA_URL"] == azure.cloud_metadata_url
    status, body = await call(https, "GET", azure.cloud_metadata_url)
    assert status == 200
    [cloud] = body
    assert cloud["name"] == azure.describe()["azure"]["az_cloud"]
    assert cloud["resourceManager"] == f"{azure.arm_url}/"
    assert cloud["authentication"]["loginEndpoint"] == azure.authority_url
    # The az CLI takes audiences[0] as the resource of its ARM tokens.
    assert cloud["authentication"]["audiences"][0] == ARM
    assert cloud["suffixes"]["storage"] == "core.windows.net"


async def test_alices_identity_sees_the_sandbox_subscription(
    azure: AzureSandbox, issuer: ServedIssuer, https: aiohttp.ClientSession
) -> None:
    token = await access_token(azure, issuer, https, "alice", resource=ARM)
    status, body = await call(https, "GET", f"{azure.arm_url}/subscriptions?{API}", token)
    assert status == 200, body
    [subscription] = body["value"]
    assert subscription["subscriptionId"] == AZURE_SUBSCRIPTION_ID
    assert subscription["tenantId"] == AZURE_TENANT_ID and subscription["state"] == "Enabled"
    one = f"{azure.arm_url}/subscriptions/{AZURE_SUBSCRIPTION_ID}?{API}"
    assert (await call(https, "GET", one, token))[1] == subscription
    status, body = await call(https, "GET", f"{azure.arm_url}/tenants?{API}", token)
    assert [t["tenantId"] for t in body["value"]] == [AZURE_TENANT_ID]


async def test_an_identity_without_any_role_sees_no_subscription(
    azure: AzureSandbox, issuer: ServedIssuer, https: aiohttp.ClientSession
) -> None:
    token = await access_token(azure, issuer, https, "alice", resource=ARM)
    for container in azure.blob.containers.values():
        container.roles.pop(IDENTITY["alice"].object_id, None)
    status, body = await call(https, "GET", f"{azure.arm_url}/subscriptions?{API}", token)
    assert (status, body["value"]) == (200, [])
    one = f"{azure.arm_url}/subscriptions/{AZURE_SUBSCRIPTION_ID}?{API}"
    status, body = await call(https, "GET", one, token)
    assert status == 404 and body["error"]["code"] == "SubscriptionNotFound"


async def test_missing_misdirected_and_expired_tokens_are_refused_as_arm_does(
    azure: AzureSandbox,
    issuer: ServedIssuer,
    https: aiohttp.ClientSession,
    sandbox_clock: ShiftedClock,
) -> None:
    url = f"{azure.arm_url}/subscriptions?{API}"
    status, body = await call(https, "GET", url)
    assert status == 401 and body["error"]["code"] == "AuthenticationFailed"
    storage = await access_token(azure, issuer, https, "alice")
    status, body = await call(https, "GET", url, storage)
    assert status == 401 and body["error"]["code"] == "InvalidAuthenticationToken"
    assert "Audience validation failed" in body["error"]["message"]
    status, body = await call(https, "GET", url, "not-a-jwt")
    assert status == 401 and "Signature validation failed" in body["error"]["message"]
    token = await access_token(azure, issuer, https, "alice", resource=ARM)
    status, body = await call(https, "GET", f"{azure.arm_url}/subscriptions", token)
    assert status == 400 and body["error"]["code"] == "MissingApiVersionParameter"
    assert (await call(https, "GET", url, token))[0] == 200
    sandbox_clock.advance(3600)
    status, body = await call(https, "GET", url, token)
    assert status == 401 and "The token is expired" in body["error"]["message"]
