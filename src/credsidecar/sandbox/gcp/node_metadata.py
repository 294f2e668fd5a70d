"""A stand-in for a GCE node's own metadata server: the service account the node runs as.

    GET /computeMetadata/v1/instance/service-accounts/default/token[?scopes=S1,S2]
        Metadata-Flavor: Google      --> {"access_token", "expires_in", "token_type": "Bearer"}
    GET /computeMetadata/v1/instance/service-accounts/default/email    --> the account's email

as GCE's metadata server answers them: a request without `Metadata-Flavor: Google`, or with
X-Forwarded-For (the server refuses proxied requests), is 403. Scopes default to
cloud-platform. The token goes into the GCP stand-ins' shared token store as the node
account's, so IAM Credentials (impersonation) and storage accept and authorize it like any
service account's.

Test hook: `GET /_sandbox/requests`, the scopes asked for (the last `MAX_LOGGED`), so tests
see what the sidecar asked the node for.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from aiohttp import web

from credsidecar.sandbox.gcp.state import CLOUD_PLATFORM, GcpState

__all__ = ["MAX_LOGGED", "NodeMetadata", "create_node_metadata_app"]

ACCOUNT_PATH = "/computeMetadata/v1/instance/service-accounts/default"
TOKEN_LIFETIME = 3599  # what GCE answers for a fresh token
MAX_LOGGED = 256


@dataclass
class NodeMetadata:
    shared: GcpState  # the token store and clock of the GCP stand-ins
    email: str  # the node's service account
    requests: deque[dict[str, str | int]] = field(default_factory=lambda: deque(maxlen=MAX_LOGGED))


STATE = web.AppKey("gcp_node_metadata", NodeMetadata)


def _refusal(request: web.Request) -> web.Response | None:
    if request.headers.get("Metadata-Flavor") != "Google":
        return web.Response(status=403, text="Missing Metadata-Flavor:Google header.\n")
    if "X-Forwarded-For" in request.headers:
        return web.Response(status=403, text="Request had X-Forwarded-For header.\n")
    return None


async def token(request: web.Request) -> web.Response:
    node = request.app[STATE]
    scopes = frozenset(s for s in request.query.get("scopes", "").split(",") if s)
    response = _refusal(request)
    if response is None:
        expires_at = float(int(node.shared.clock()) + TOKEN_LIFETIME)
        issued = node.shared.tokens.issue(
            node.email, "service_account", scopes or frozenset({CLOUD_PLATFORM}), expires_at
        )
        response = web.json_response(
            {"access_token": issued, "expires_in": TOKEN_LIFETIME, "token_type": "Bearer"}
        )
    node.shared.count("node_metadata.token")
    node.requests.append(
        {"scopes": request.query.get("scopes", "")[:300], "status": response.status}
    )
    return response


async def email(request: web.Request) -> web.Response:
    return _refusal(request) or web.Response(text=request.app[STATE].email)


async def logged(request: web.Request) -> web.Response:
    return web.json_response(list(request.app[STATE].requests))


def create_node_metadata_app(node: NodeMetadata) -> web.Application:
    app = web.Application(client_max_size=4 * 1024)
    app[STATE] = node
    app.router.add_get(f"{ACCOUNT_PATH}/token", token)
    app.router.add_get(f"{ACCOUNT_PATH}/email", email)
    app.router.add_get("/_sandbox/requests", logged)
    return app
