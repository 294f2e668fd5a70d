"""A stand-in for a node's own Azure IMDS: the managed identities the node holds.

    GET /metadata/identity/oauth2/token?api-version=2018-02-01&resource=R
        [&client_id=C | &object_id=O | &mi_res_id=ID]                     Metadata: true

as Azure's IMDS answers it on a VM or Batch node holding a system-assigned identity and several
user-assigned ones: no selector is the system-assigned identity; an identity the node does not
hold is 400 "Identity not found"; a resource the tenant does not know is 400 `invalid_resource`
(AADSTS500011); a request without `Metadata: true`, or with X-Forwarded-For (IMDS refuses
proxied requests), is 400. Success:
`{"access_token", "client_id", "expires_in", "expires_on", "ext_expires_in", "not_before",
"resource", "token_type"}`, numbers as strings. The access token is signed by the Entra
stand-in's key, like Entra's, so the Blob stand-in accepts it and authorizes its `oid`.

Test hook: `GET /_sandbox/requests`, the identities and resources asked for (the last
`MAX_LOGGED`), so tests see what the sidecar asked the node for.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from aiohttp import web

from credsidecar.sandbox.azure.entra import KNOWN_RESOURCES, _access_token
from credsidecar.sandbox.azure.state import AzureState, EntraApp
from credsidecar.sandbox.seed import SandboxNodeIdentity

__all__ = ["MAX_LOGGED", "NodeImds", "create_node_imds_app"]

TOKEN_PATH = "/metadata/identity/oauth2/token"  # noqa: S105 (a path)
MAX_LOGGED = 256


def _app(identity: SandboxNodeIdentity) -> EntraApp:
    """A node identity as the service principal its tokens name (no federated credential)."""
    return EntraApp(identity.name, identity.client_id, identity.object_id, (),
                    identity.resource_id)  # fmt: skip


@dataclass
class NodeImds:
    azure: AzureState  # the tenant: its signing key, clock and token lifetime
    system_assigned: EntraApp | None
    user_assigned: tuple[EntraApp, ...]
    requests: deque[dict[str, str | int | None]] = field(
        default_factory=lambda: deque(maxlen=MAX_LOGGED)
    )

    def find(self, client_id: str, object_id: str, mi_res_id: str) -> EntraApp | str | None:
        """The identity a selector names; None if the node holds none such; a message when
        the request names none and the node cannot choose."""
        held = (*((self.system_assigned,) if self.system_assigned else ()), *self.user_assigned)
        if client_id:
            return next((a for a in held if a.client_id.lower() == client_id.lower()), None)
        if object_id:
            return next((a for a in held if a.object_id.lower() == object_id.lower()), None)
        if mi_res_id:
            wanted = mi_res_id.lower()
            return next((a for a in held if (a.resource_id or "").lower() == wanted), None)
        if self.system_assigned is not None:
            return self.system_assigned
        if len(self.user_assigned) == 1:
            return self.user_assigned[0]
        return (
            "Multiple user assigned identities exist, please specify the clientId / resourceId "
            "of the identity in the token request"
        )

    @classmethod
    def holding(cls, azure: AzureState, identities: tuple[SandboxNodeIdentity, ...]) -> NodeImds:
        system = [_app(i) for i in identities if i.system_assigned]
        user = tuple(_app(i) for i in identities if not i.system_assigned)
        return cls(azure, system[0] if system else None, user)


STATE = web.AppKey("azure_node_imds", NodeImds)


def _bad(error: str, description: str) -> web.Response:
    return web.json_response({"error": error, "error_description": description}, status=400)


async def token(request: web.Request) -> web.Response:
    node = request.app[STATE]
    query = request.query
    client_id = query.get("client_id", "")
    object_id = query.get("object_id", "")
    mi_res_id = query.get("mi_res_id") or query.get("msi_res_id") or ""
    resource = query.get("resource", "")
    response = _answer(node, request, client_id, object_id, mi_res_id, resource)
    node.azure.count("node_imds.token")
    node.requests.append(
        {
            "client_id": client_id[:64] or None,
            "object_id": object_id[:64] or None,
            "mi_res_id": mi_res_id[:300] or None,
            "resource": resource[:200],
            "status": response.status,
        }
    )
    return response


def _answer(
    node: NodeImds,
    request: web.Request,
    client_id: str,
    object_id: str,
    mi_res_id: str,
    resource: str,
) -> web.Response:
    if request.headers.get("Metadata", "").lower() != "true":
        return _bad("invalid_request", "Required metadata header not specified")
    if "X-Forwarded-For" in request.headers:
        return _bad("invalid_request", "Request contains X-Forwarded-For header")
    if not request.query.get("api-version"):
        return _bad("invalid_request", "Required query variable 'api-version' is missing")
    if not resource:
        return _bad("invalid_request", "Required query variable 'resource' is missing")
    if resource.rstrip("/") not in KNOWN_RESOURCES:
        return _bad(
            "invalid_resource",
            f"AADSTS500011: The resource principal named {resource[:200]} was not found in the "
            f"tenant named {node.azure.tenant_id}.",
        )
    found = node.find(client_id, object_id, mi_res_id)
    if found is None:
        return _bad("invalid_request", "Identity not found")
    if isinstance(found, str):
        return _bad("invalid_request", found)
    access_token, now, expires = _access_token(node.azure, found, resource)
    lifetime = str(expires - now)
    return web.json_response(
        {
            "access_token": access_token,
            "client_id": found.client_id,
            "expires_in": lifetime,
            "expires_on": str(expires),
            "ext_expires_in": lifetime,
            "not_before": str(now),
            "resource": resource,
            "token_type": "Bearer",
        }
    )


async def logged(request: web.Request) -> web.Response:
    return web.json_response(list(request.app[STATE].requests))


def create_node_imds_app(node: NodeImds) -> web.Application:
    app = web.Application(client_max_size=4 * 1024)
    app[STATE] = node
    app.router.add_get(TOKEN_PATH, token)
    app.router.add_get("/_sandbox/requests", logged)
    return app
