"""Azure Resource Manager stand-in: what the az CLI asks of ARM around `az login --identity`.

    GET /metadata/endpoints      the cloud's endpoints, for ARM_CLOUD_METADATA_URL: the az CLI
                                 reads its clouds from this URL when the variable is set (how
                                 Azure Stack and sovereign clouds are configured), so a job
                                 needs no `az cloud register`
    GET /subscriptions           the subscriptions the caller holds a role in
    GET /subscriptions/{id}      one of them
    GET /tenants                 the tenant

The bearer token is checked as ARM does: signed by the sandbox Entra key, issued by the tenant,
for ARM's audience (https://management.azure.com or https://management.core.windows.net, with
or without a slash), within its lifetime; otherwise 401 InvalidAuthenticationToken with ARM's
WWW-Authenticate challenge. The sandbox subscription holds the storage account, so an identity
with a role on any of its containers sees it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from credsidecar.sandbox.azure.blob_auth import BlobState
from credsidecar.sandbox.azure.state import TokenRejected, verify_access_token
from credsidecar.sandbox.seed import AZURE_SUBSCRIPTION_ID

__all__ = ["ARM_AUDIENCES", "CLOUD_NAME", "create_arm_app"]

CLOUD_NAME = "CredsidecarSandbox"
ARM_AUDIENCES = frozenset(
    f"{base}{slash}"
    for base in ("https://management.azure.com", "https://management.core.windows.net")
    for slash in ("", "/")
)
SUBSCRIPTION_NAME = "credsidecar sandbox"

STATE = web.AppKey("azure_arm_state", BlobState)


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None
           ) -> web.Response:  # fmt: skip
    return web.json_response({"error": {"code": code, "message": message}}, status=status,
                             headers=headers)  # fmt: skip


def _cloud(base_url: str, authority_url: str) -> dict[str, Any]:
    """One entry of ARM's /metadata/endpoints, shaped like the public cloud's."""
    return {
        "name": CLOUD_NAME,
        "portal": "https://portal.azure.com",
        "resourceManager": f"{base_url}/",
        "authentication": {
            "loginEndpoint": authority_url,
            "audiences": ["https://management.core.windows.net/", "https://management.azure.com/"],
            "tenant": "common",
            "identityProvider": "AAD",
        },
        "graphAudience": "https://graph.windows.net/",
        "microsoftGraphResourceId": "https://graph.microsoft.com/",
        "batch": "https://batch.core.windows.net/",
        "sqlManagement": "https://management.core.windows.net:8443/",
        "suffixes": {
            "storage": "core.windows.net",
            "keyVaultDns": "vault.azure.net",
            "sqlServerHostname": "database.windows.net",
            "acrLoginServer": "azurecr.io",
        },
    }


def _subscription(tenant_id: str) -> dict[str, Any]:
    return {
        "id": f"/subscriptions/{AZURE_SUBSCRIPTION_ID}",
        "subscriptionId": AZURE_SUBSCRIPTION_ID,
        "tenantId": tenant_id,
        "displayName": SUBSCRIPTION_NAME,
        "state": "Enabled",
        "authorizationSource": "RoleBased",
        "managedByTenants": [],
        "subscriptionPolicies": {
            "locationPlacementId": "Public_2014-09-01",
            "quotaId": "PayAsYouGo_2014-09-01",
            "spendingLimit": "Off",
        },
    }


def _caller(request: web.Request) -> str | web.Response:
    """The object id of the bearer token's identity, or ARM's 401."""
    state = request.app[STATE]
    challenge = {
        "WWW-Authenticate": f'Bearer authorization_uri="{state.azure.authority_url}/'
        f'{state.azure.tenant_id}", error="invalid_token", '
        "error_description=\"The authentication failed because of missing 'Authorization' "
        'header."'
    }
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return _error(401, "AuthenticationFailed",
                      "Authentication failed. The 'Authorization' header is missing.",
                      challenge)  # fmt: skip
    try:
        claims = verify_access_token(state.azure, token.strip(), ARM_AUDIENCES)
    except TokenRejected as exc:
        return _error(401, "InvalidAuthenticationToken",
                      f"The access token is invalid. {exc}", challenge)  # fmt: skip
    return str(claims.get("oid", ""))


def _visible(state: BlobState, object_id: str) -> bool:
    return any(object_id in container.roles for container in state.containers.values())


def _needs_api_version(request: web.Request) -> web.Response | None:
    if request.query.get("api-version"):
        return None
    return _error(400, "MissingApiVersionParameter",
                  "The api-version query parameter (?api-version=) is required for all "
                  "requests.")  # fmt: skip


async def _metadata(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return web.json_response([_cloud(state.azure.arm_url, state.azure.authority_url)])


ArmHandler = Callable[[web.Request, str], Awaitable[web.Response]]


def _arm_call(handler: ArmHandler) -> Callable[[web.Request], Awaitable[web.Response]]:
    """ARM's checks before any resource call: api-version, then the bearer token; the handler
    gets the caller's object id."""

    async def checked(request: web.Request) -> web.Response:
        if (missing := _needs_api_version(request)) is not None:
            return missing
        caller = _caller(request)
        if isinstance(caller, web.Response):
            return caller
        return await handler(request, caller)

    return checked


@_arm_call
async def _subscriptions(request: web.Request, caller: str) -> web.Response:
    state = request.app[STATE]
    state.azure.count("arm.subscriptions")
    value = [_subscription(state.azure.tenant_id)] if _visible(state, caller) else []
    return web.json_response({"value": value, "count": {"type": "Total", "value": len(value)}})


@_arm_call
async def _one_subscription(request: web.Request, caller: str) -> web.Response:
    state = request.app[STATE]
    wanted = request.match_info["subscription"]
    if wanted.lower() != AZURE_SUBSCRIPTION_ID or not _visible(state, caller):
        return _error(404, "SubscriptionNotFound", f"The subscription '{wanted}' could not be "
                      "found.")  # fmt: skip
    return web.json_response(_subscription(state.azure.tenant_id))


@_arm_call
async def _tenants(request: web.Request, caller: str) -> web.Response:
    tenant = request.app[STATE].azure.tenant_id
    value = [{"id": f"/tenants/{tenant}", "tenantId": tenant, "tenantCategory": "Home",
              "displayName": "credsidecar sandbox tenant"}]  # fmt: skip
    return web.json_response({"value": value})


def create_arm_app(state: BlobState) -> web.Application:
    app = web.Application()
    app[STATE] = state
    app.router.add_get("/metadata/endpoints", _metadata)
    app.router.add_get("/subscriptions", _subscriptions)
    app.router.add_get("/subscriptions/{subscription}", _one_subscription)
    app.router.add_get("/tenants", _tenants)
    return app
