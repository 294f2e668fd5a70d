"""A local Google STS (`POST /v1/token`) that validates subject tokens the way Google does.

Request (RFC 8693 as google-auth's `oauth2/sts.py` sends it, form-encoded; the REST API's JSON
body with camelCase names works too): `grant_type` token-exchange, `requested_token_type`
access_token, `subject_token_type` jwt or id_token, `audience` = "//iam.googleapis.com/" + the
provider's resource name, `scope` (space-separated), `subject_token`, `options` (ignored).

Checks, as a workload identity pool OIDC provider does: the audience names a known provider;
the token's `iss` is the provider's issuer; the signature verifies against the issuer's JWKS;
`aud` is one of the provider's allowed audiences (none configured: the provider's resource name
with or without "https:"); `exp`; `google.subject` (= `sub`) <= 127 bytes; the attribute
condition (`assertion.sub in [...]`). Errors are Google's: HTTP 400 with
`{"error": "invalid_grant" | "unauthorized_client" | ..., "error_description": "..."}`.

The answer is an opaque federated access token for
principal://iam.googleapis.com/projects/N/locations/global/workloadIdentityPools/P/subject/SUB,
valid for an hour whatever the subject token's own lifetime (as Google's).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from joserfc import jwt
from joserfc.errors import ExpiredTokenError, InvalidClaimError, JoseError

from credsidecar.sandbox.gcp.state import CLOUD_PLATFORM, GcpState
from credsidecar.sandbox.hooks import add_test_hooks, jwks_context
from credsidecar.sandbox.jwks import JwksCache

__all__ = ["FEDERATED_LIFETIME", "GcpProvider", "GcpStsState", "create_gcp_sts_app"]

FEDERATED_LIFETIME = 3600
GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105 - a URN
SUBJECT_TOKEN_TYPES = (
    "urn:ietf:params:oauth:token-type:jwt",
    "urn:ietf:params:oauth:token-type:id_token",
)
MAX_SUBJECT_BYTES = 127
_CAMEL = {
    "grantType": "grant_type",
    "requestedTokenType": "requested_token_type",
    "subjectTokenType": "subject_token_type",
    "subjectToken": "subject_token",
}


@dataclass(frozen=True)
class GcpProvider:
    """An OIDC provider of a workload identity pool, as configured in IAM."""

    resource: str  # projects/N/locations/global/workloadIdentityPools/P/providers/X
    issuer: str
    allowed_subjects: tuple[str, ...]  # attribute condition: assertion.sub in [...]
    allowed_audiences: tuple[str, ...] = ()  # empty: the resource name, with or without https:

    @property
    def pool(self) -> str:
        return self.resource.rsplit("/providers/", 1)[0]

    def audiences(self) -> tuple[str, ...]:
        default = (
            f"//iam.googleapis.com/{self.resource}",
            f"https://iam.googleapis.com/{self.resource}",
        )
        return self.allowed_audiences or default


@dataclass
class GcpStsState:
    shared: GcpState
    providers: Mapping[str, GcpProvider]  # the `audience` parameter ("//iam...") -> provider
    lifetime: int = FEDERATED_LIFETIME


STATE = web.AppKey("gcp_sts_state", GcpStsState)
JWKS = web.AppKey("gcp_sts_jwks", JwksCache)


class StsError(Exception):
    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error, self.description, self.status = error, description, status


def _invalid_grant(description: str) -> StsError:
    return StsError("invalid_grant", description)


def _form_fields(raw: Mapping[str, Any]) -> dict[str, str]:
    return {_CAMEL.get(k, k): v for k, v in raw.items() if isinstance(v, str)}


async def _read_form(request: web.Request) -> dict[str, str]:
    if request.content_type != "application/json":
        return _form_fields(await request.post())
    try:
        body = await request.json()
    except ValueError as exc:
        raise StsError("invalid_request", "The request body is not valid JSON.") from exc
    return _form_fields(body if isinstance(body, dict) else {})


def _check_request(state: GcpStsState, form: Mapping[str, str]) -> GcpProvider:
    if form.get("grant_type") != GRANT_TYPE:
        raise StsError(
            "unsupported_grant_type", f"Unsupported grant_type: only {GRANT_TYPE} is supported."
        )
    if form.get("requested_token_type", ACCESS_TOKEN_TYPE) != ACCESS_TOKEN_TYPE:
        raise StsError(
            "invalid_request",
            f'Invalid value for "requested_token_type": only {ACCESS_TOKEN_TYPE} is supported.',
        )
    if form.get("subject_token_type") not in SUBJECT_TOKEN_TYPES:
        raise StsError(
            "invalid_request",
            'Invalid value for "subject_token_type": an OIDC '
            f"provider accepts {' or '.join(SUBJECT_TOKEN_TYPES)}.",
        )
    audience = form.get("audience", "")
    if not audience.startswith("//iam.googleapis.com/"):
        raise StsError(
            "invalid_request",
            'Invalid value for "audience". This value should be '
            "the full resource name of the Identity Provider, e.g. "
            "//iam.googleapis.com/projects/N/locations/global/"
            "workloadIdentityPools/POOL/providers/PROVIDER.",
        )
    provider = state.providers.get(audience)
    if provider is None:
        raise StsError(
            "invalid_target",
            'The target service indicated by the "audience" '
            "parameters is invalid. This might either be because the pool or "
            "provider is disabled or deleted or because it doesn't exist "
            f"(the sandbox knows {', '.join(state.providers) or 'none'}).",
        )
    if not form.get("subject_token"):
        raise StsError("invalid_request", 'Missing required parameter: "subject_token".')
    return provider


def _segment(token: str, index: int) -> dict[str, Any]:
    try:
        value = json.loads(base64.urlsafe_b64decode(token.split(".")[index] + "=="))
    except (ValueError, IndexError) as exc:
        raise _invalid_grant("Unable to parse the ID Token: it is not a JWT.") from exc
    if not isinstance(value, dict):
        raise _invalid_grant("Unable to parse the ID Token: it is not a JWT.")
    return value


async def _validate(request: web.Request, provider: GcpProvider, token: str) -> dict[str, Any]:
    state = request.app[STATE]
    header, unverified = _segment(token, 0), _segment(token, 1)
    issuer = str(unverified.get("iss", ""))
    if issuer != provider.issuer:
        raise _invalid_grant(
            f"The issuer in ID Token {issuer!r} does not match the expected "
            f"issuer {provider.issuer!r} of provider {provider.resource}."
        )
    try:
        keys = await request.app[JWKS].keys_for(issuer, header.get("kid"))
    except (aiohttp.ClientError, TimeoutError, KeyError, ValueError) as exc:
        raise _invalid_grant(
            f"Unable to retrieve the public keys of the OIDC issuer {issuer} "
            "(discovery document or jwks_uri unreachable)."
        ) from exc
    try:
        claims = dict(jwt.decode(token, keys, algorithms=["RS256", "ES256"]).claims)
    except (JoseError, ValueError) as exc:
        raise _invalid_grant(
            "Invalid JWT signature: the ID Token does not verify against "
            f"the keys published by {issuer}."
        ) from exc
    aud = claims.get("aud")
    audiences = [str(a) for a in aud] if isinstance(aud, list) else [str(aud)]
    if not set(audiences) & set(provider.audiences()):
        raise _invalid_grant(
            f"The audience in ID Token {audiences} does not match the "
            f"expected audience {' or '.join(provider.audiences())}."
        )
    try:
        registry = jwt.JWTClaimsRegistry(now=int(state.shared.clock()), exp={"essential": True})
        registry.validate(claims)
    except ExpiredTokenError as exc:
        raise _invalid_grant(
            f"The ID Token expired at {claims.get('exp')}; get a new one from the issuer and retry."
        ) from exc
    except InvalidClaimError as exc:
        raise _invalid_grant(f"The ID Token's {exc.description}.") from exc
    subject = str(claims.get("sub", ""))
    if not subject or len(subject.encode()) > MAX_SUBJECT_BYTES:
        raise _invalid_grant(
            f"The mapped attribute google.subject must be 1..{MAX_SUBJECT_BYTES}"
            f" bytes; assertion.sub is {len(subject.encode())} bytes."
        )
    if subject not in provider.allowed_subjects:
        # Google says no more than this; the subject in parentheses is the sandbox's addition.
        raise StsError(
            "unauthorized_client",
            "The given credential is rejected by the "
            f"attribute condition (assertion.sub {subject!r} is not in "
            f"{list(provider.allowed_subjects)}).",
        )
    return claims


async def token(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.shared.count("sts.token")
    if state.shared.in_outage():
        return web.json_response(
            {
                "error": "temporarily_unavailable",
                "error_description": "sandbox STS outage (injected by a test)",
            },
            status=503,
        )
    try:
        form = await _read_form(request)
        provider = _check_request(state, form)
        claims = await _validate(request, provider, form["subject_token"])
    except StsError as exc:
        body = {"error": exc.error, "error_description": exc.description}
        return web.json_response(body, status=exc.status)
    scopes = frozenset(form.get("scope", "").split()) or frozenset({CLOUD_PLATFORM})
    principal = f"principal://iam.googleapis.com/{provider.pool}/subject/{claims['sub']}"
    expires_at = state.shared.clock() + state.lifetime
    access_token = state.shared.tokens.issue(principal, "federated", scopes, expires_at)
    return web.json_response(
        {
            "access_token": access_token,
            "issued_token_type": ACCESS_TOKEN_TYPE,
            "token_type": "Bearer",
            "expires_in": state.lifetime,
        }
    )


def create_gcp_sts_app(state: GcpStsState) -> web.Application:
    app = web.Application(client_max_size=64 * 1024)
    app[STATE] = state
    app.router.add_post("/v1/token", token)
    add_test_hooks(app, state.shared)
    app.cleanup_ctx.append(jwks_context(JWKS))
    return app
