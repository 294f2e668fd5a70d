"""A local IAM Credentials API: service account impersonation for federated principals.

- `POST /v1/projects/-/serviceAccounts/{email}:generateAccessToken` `{"scope": [...],
  "lifetime": "3600s"}` -> `{"accessToken", "expireTime"}` (RFC 3339 to the second with "Z":
  google-auth parses exactly "%Y-%m-%dT%H:%M:%SZ");
- `POST ...:generateIdToken` `{"audience", "includeEmail"}` -> `{"token"}`, a JWT signed with
  a sandbox "Google" key (RS256, `iss` https://accounts.google.com), whose key set is published
  at `GET /oauth2/v3/certs` (Google's own path, on www.googleapis.com).

The caller's `Authorization: Bearer` token must come from the sandbox STS (or IAM itself), and
its principal must hold roles/iam.workloadIdentityUser on the service account (`members`);
otherwise the answer is Google's 403 "Permission 'iam.serviceAccounts.getAccessToken' denied
on resource (or it may not exist)." Errors use Google's JSON shape
`{"error": {"code", "message", "status"}}`.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from joserfc import jwt
from joserfc.jwk import RSAKey

from credsidecar.sandbox.gcp.state import CLOUD_PLATFORM, GcpState, bearer_token
from credsidecar.sandbox.hooks import add_test_hooks

__all__ = ["GcpIamState", "create_gcp_iam_app", "unique_id"]

GOOGLE_ISSUER = "https://accounts.google.com"
ID_TOKEN_LIFETIME = 3600
# Google allows 3600 s, or 43200 s where an organization policy extends it; the sandbox also
# allows very short lifetimes so that tests can watch renewals.
MAX_LIFETIME = 43200
IAM_SCOPES = frozenset({CLOUD_PLATFORM, "https://www.googleapis.com/auth/iam"})
_LIFETIME = re.compile(r"(\d{1,6})(?:\.\d{1,9})?s")
_UNAUTHENTICATED = (
    "Request had invalid authentication credentials. Expected OAuth 2 access "
    "token, login cookie or other valid authentication credential. See "
    "https://developers.google.com/identity/sign-in/web/devconsole-project."
)
_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    503: "UNAVAILABLE",
}


@dataclass
class GcpIamState:
    shared: GcpState
    members: Mapping[str, frozenset[str]]  # service account email -> principals that may use it


STATE = web.AppKey("gcp_iam_state", GcpIamState)
SIGNING_KEY = web.AppKey("gcp_iam_key", RSAKey)


class IamError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def unique_id(email: str) -> str:
    """A service account's stable 21-digit unique ID, the `sub` of its ID tokens."""
    return "1" + str(int.from_bytes(hashlib.sha256(email.encode()).digest()[:9]))[:20].zfill(20)


def _rfc3339(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _caller(request: web.Request) -> str:
    state = request.app[STATE]
    token = bearer_token(request)
    if token is None:
        raise IamError(
            401,
            "Request is missing required authentication credential. Expected "
            "OAuth 2 access token, login cookie or other valid authentication "
            "credential.",
        )
    grant = state.shared.tokens.lookup(token)
    if grant is None:
        raise IamError(401, _UNAUTHENTICATED)
    if not grant.scopes & IAM_SCOPES:
        raise IamError(403, "Request had insufficient authentication scopes.")
    return grant.principal


def _authorize(request: web.Request, email: str, permission: str) -> str:
    principal = _caller(request)
    members = request.app[STATE].members
    if email not in members:
        raise IamError(404, f"Not found; Gaia id not found for email {email}")
    if principal not in members[email]:
        # Google stops after "(or it may not exist)."; the sandbox names who asked for what.
        raise IamError(
            403,
            f"Permission '{permission}' denied on resource (or it may not "
            f"exist). ({principal} lacks roles/iam.workloadIdentityUser on "
            f"{email}.)",
        )
    return principal


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError as exc:
        raise IamError(400, "Invalid JSON payload received.") from exc
    if not isinstance(body, dict):
        raise IamError(400, "Invalid JSON payload received: expected an object.")
    if body.get("delegates"):
        raise IamError(400, "The sandbox does not support delegation chains (delegates).")
    return body


async def generate_access_token(request: web.Request, email: str) -> web.Response:
    state = request.app[STATE]
    _authorize(request, email, "iam.serviceAccounts.getAccessToken")
    body = await _body(request)
    scopes = body.get("scope")
    if not isinstance(scopes, list) or not scopes or not all(isinstance(s, str) for s in scopes):
        raise IamError(400, "Scope required: 'scope' must be a non-empty list of OAuth scopes.")
    match = _LIFETIME.fullmatch(str(body.get("lifetime", "3600s")))
    lifetime = int(match.group(1)) if match else 0
    if not 1 <= lifetime <= MAX_LIFETIME:
        raise IamError(
            400,
            f"The lifetime {body.get('lifetime')!r} is invalid: it must look "
            f"like '3600s' and lie within 1s..{MAX_LIFETIME}s.",
        )
    # Whole seconds, so that expireTime and the token's real expiry agree.
    expires_at = float(int(state.shared.clock()) + lifetime)
    token = state.shared.tokens.issue(email, "service_account", frozenset(scopes), expires_at)
    return web.json_response({"accessToken": token, "expireTime": _rfc3339(expires_at)})


async def generate_id_token(request: web.Request, email: str) -> web.Response:
    state = request.app[STATE]
    _authorize(request, email, "iam.serviceAccounts.getOpenIdToken")
    body = await _body(request)
    audience = body.get("audience")
    if not isinstance(audience, str) or not audience:
        raise IamError(400, "Audience required: 'audience' must be a non-empty string.")
    now = int(state.shared.clock())
    sub = unique_id(email)
    claims: dict[str, Any] = {
        "iss": GOOGLE_ISSUER,
        "aud": audience,
        "azp": sub,
        "sub": sub,
        "iat": now,
        "exp": now + ID_TOKEN_LIFETIME,
    }
    if body.get("includeEmail"):
        claims.update(email=email, email_verified=True)
    key = request.app[SIGNING_KEY]
    token = jwt.encode({"alg": "RS256", "kid": key.kid, "typ": "JWT"}, claims, key)
    return web.json_response({"token": token})


async def service_account_method(request: web.Request) -> web.Response:
    state = request.app[STATE]
    email, _, method = request.match_info["target"].rpartition(":")
    handlers = {"generateAccessToken": generate_access_token, "generateIdToken": generate_id_token}
    try:
        handler = handlers.get(method)
        if handler is None:
            raise IamError(404, f"The sandbox IAM Credentials API does not implement {method!r}.")
        state.shared.count(f"iam.{method}")
        if state.shared.in_outage():
            raise IamError(503, "The service is currently unavailable (sandbox outage).")
        return await handler(request, email)
    except IamError as exc:
        error = {"code": exc.code, "message": exc.message, "status": _STATUS[exc.code]}
        return web.json_response({"error": error}, status=exc.code)


async def certs(request: web.Request) -> web.Response:
    key = request.app[SIGNING_KEY]
    return web.json_response({"keys": [key.as_dict(private=False)]})


async def _signing_key(app: web.Application) -> AsyncIterator[None]:
    params: Any = {"use": "sig", "alg": "RS256"}
    app[SIGNING_KEY] = await asyncio.to_thread(RSAKey.generate_key, 2048, params, True, True)
    yield


def create_gcp_iam_app(state: GcpIamState) -> web.Application:
    app = web.Application(client_max_size=64 * 1024)
    app[STATE] = state
    app.router.add_post("/v1/projects/{project}/serviceAccounts/{target}", service_account_method)
    app.router.add_get("/oauth2/v3/certs", certs)
    add_test_hooks(app, state.shared)
    app.cleanup_ctx.append(_signing_key)
    return app
