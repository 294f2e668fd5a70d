"""A local Entra ID token endpoint that validates client assertions the way Entra does.

    POST /{tenant}/oauth2/v2.0/token   grant_type=client_credentials, client_id,
        client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer,
        client_assertion=<JWT>, scope=<resource>/.default      (what azure-identity sends)
    POST /{tenant}/oauth2/token        the v1.0 form: `resource=<resource>` instead of scope

Checks: the tenant (AADSTS90002); the grant type and client id (700016 when no app or
identity has it); the client assertion's presence and type; the scope (`/.default`, a known
resource: 1002012, 500011); then the assertion itself: its issuer, subject and audience must
equal those of one federated credential of that app or identity, exactly (70021, echoing all
three); its signature must verify against the keys the issuer publishes (discovery, then
jwks_uri; 50166 unreachable, 7000272 unknown key, 50013 bad signature); and it must be within
its validity (700024). Errors are Entra's (entra_errors.py): HTTP 400 with `{"error",
"error_description": "AADSTSnnnn: ... Trace ID: ... Correlation ID: ... Timestamp: ...",
"error_codes": [n], "timestamp", "trace_id", "correlation_id", "error_uri"}`.

Success: `{"token_type": "Bearer", "expires_in", "ext_expires_in", "access_token"}`, where the
access token is a v1.0 JWT like Entra's app tokens (aud = the resource, iss
https://sts.windows.net/{tid}/, tid, oid = sub = the service principal, appid, appidacr "2",
idtyp "app", xms_mirid for managed identities, uti, ver "1.0"), signed with a sandbox key
published at /{tenant}/discovery/v2.0/keys. The OIDC discovery documents MSAL reads (v2.0 and
v1.0) and its instance discovery answer too, for clients that are not azure-identity.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlparse

import aiohttp
from aiohttp import web
from joserfc import jwt
from joserfc.errors import InvalidKeyIdError, JoseError

from credsidecar.sandbox.azure.entra_errors import EntraError, error_response
from credsidecar.sandbox.azure.state import AzureState, EntraApp, sts_issuer
from credsidecar.sandbox.hooks import add_test_hooks, jwks_context
from credsidecar.sandbox.jwks import JwksCache

__all__ = ["KNOWN_RESOURCES", "create_entra_app"]

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# Entra tolerates a few minutes of clock skew on `nbf`; `exp` is taken as it is.
NOT_BEFORE_SKEW = 300
# Resources (application ID URIs) the sandbox tenant knows; Entra answers AADSTS500011 for
# others. Each may be asked for with or without a trailing slash; `aud` is what was asked.
KNOWN_RESOURCES = frozenset(
    {
        "https://storage.azure.com",
        "https://management.azure.com",
        "https://management.core.windows.net",
        "https://vault.azure.net",
        "https://batch.core.windows.net",
        "https://graph.microsoft.com",
        "https://ossrdbms-aad.database.windows.net",
        "https://database.windows.net",
    }
)

STATE = web.AppKey("azure_entra_state", AzureState)
JWKS = web.AppKey("azure_entra_jwks", JwksCache)


def _base(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


def _check_tenant(state: AzureState, tenant: str) -> str:
    if tenant.lower() != state.tenant_id.lower():
        raise EntraError.tenant_not_found(tenant)
    return state.tenant_id


def _resource(form: Mapping[str, str], v1: bool, tenant: str) -> str:
    if v1:
        resource = form.get("resource", "")
        if not resource:
            raise EntraError.missing("resource")
    else:
        scope = form.get("scope", "")
        if not scope:
            raise EntraError.missing("scope")
        if len(scope.split()) != 1 or not scope.endswith("/.default"):
            raise EntraError.invalid_scope(scope)
        resource = scope.removesuffix("/.default")
    if resource.rstrip("/") not in KNOWN_RESOURCES:
        raise EntraError.unknown_resource(resource, tenant)
    return resource


def _client(state: AzureState, form: Mapping[str, str]) -> tuple[EntraApp, str]:
    """The app or identity named by `client_id`, and the client assertion it presents."""
    grant = form.get("grant_type", "")
    if not grant:
        raise EntraError.missing("grant_type")
    if grant != "client_credentials":
        raise EntraError.unsupported_grant(grant)
    client_id = form.get("client_id", "")
    if not client_id:
        raise EntraError.missing("client_id")
    app = state.app(client_id)
    if app is None:
        raise EntraError.app_not_found(client_id, state.tenant_id)
    assertion = form.get("client_assertion", "")
    if not assertion:
        raise EntraError.no_client_credential()
    if form.get("client_assertion_type") != ASSERTION_TYPE:
        raise EntraError.bad_assertion_type(ASSERTION_TYPE)
    return app, assertion


def _segment(token: str, index: int) -> dict[str, Any]:
    try:
        value = json.loads(base64.urlsafe_b64decode(token.split(".")[index] + "=="))
    except (ValueError, IndexError) as exc:
        raise EntraError.malformed() from exc
    if not isinstance(value, dict) or token.count(".") != 2:
        raise EntraError.malformed()
    return value


def _match(app: EntraApp, claims: Mapping[str, Any]) -> None:
    issuer, subject = str(claims.get("iss", "")), str(claims.get("sub", ""))
    aud = claims.get("aud")
    audiences = [str(a) for a in aud] if isinstance(aud, list) else [str(aud or "")]
    for credential in app.federated_credentials:
        if (credential.issuer, credential.subject) == (issuer, subject) and (
            credential.audience in audiences
        ):
            return
    raise EntraError.no_matching_credential(issuer, subject, audiences)


async def _validate(request: web.Request, app: EntraApp, assertion: str) -> None:
    """Entra's checks on a federated client assertion, in its order."""
    state = request.app[STATE]
    header, unverified = _segment(assertion, 0), _segment(assertion, 1)
    _match(app, unverified)
    issuer, kid = str(unverified["iss"]), header.get("kid")
    try:
        keys = await request.app[JWKS].keys_for(issuer, kid)
        keys.get_by_kid(kid)
    except InvalidKeyIdError as exc:
        raise EntraError.unknown_key(kid, issuer) from exc
    except (aiohttp.ClientError, TimeoutError, KeyError, ValueError) as exc:
        raise EntraError.issuer_unreachable(issuer) from exc
    try:
        claims = jwt.decode(assertion, keys, algorithms=["RS256", "ES256"]).claims
    except (JoseError, ValueError) as exc:
        raise EntraError.bad_signature() from exc
    now = state.clock()
    exp, nbf = claims.get("exp"), claims.get("nbf", claims.get("iat", 0))
    if not isinstance(exp, int | float) or not isinstance(nbf, int | float):
        raise EntraError.time_range(now, 0, 0)
    if exp <= now or nbf > now + NOT_BEFORE_SKEW:
        raise EntraError.time_range(now, nbf, exp)


def _access_token(state: AzureState, app: EntraApp, resource: str) -> tuple[str, int, int]:
    """(JWT, issued at, expires at) for `app` to call `resource`."""
    now = int(state.clock())
    expires = now + state.token_lifetime
    issuer = sts_issuer(state.tenant_id)
    claims: dict[str, Any] = {
        "aud": resource,
        "iss": issuer,
        "iat": now,
        "nbf": now,
        "exp": expires,
        "appid": app.client_id,
        "appidacr": "2",  # the client authenticated with an assertion
        "idp": issuer,
        "idtyp": "app",
        "oid": app.object_id,
        "sub": app.object_id,
        "tid": state.tenant_id,
        "uti": secrets.token_urlsafe(16),
        "ver": "1.0",
    }
    if app.resource_id:
        claims["xms_mirid"] = app.resource_id
    key = state.signing_key
    header = {"typ": "JWT", "alg": "RS256", "x5t": key.kid, "kid": key.kid}
    return jwt.encode(header, claims, key), now, expires


async def token(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.count("entra.token")
    v1 = not request.path.endswith("/v2.0/token")
    try:
        if state.in_outage():
            raise EntraError.outage()
        tenant = _check_tenant(state, request.match_info["tenant"])
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        app, assertion = _client(state, form)
        resource = _resource(form, v1, tenant)
        await _validate(request, app, assertion)
    except EntraError as exc:
        return error_response(request, exc, state.clock())
    access_token, now, expires = _access_token(state, app, resource)
    lifetime = expires - now
    if v1:  # the v1.0 endpoint answers numbers as strings
        return web.json_response(
            {
                "token_type": "Bearer",
                "expires_in": str(lifetime),
                "ext_expires_in": str(lifetime),
                "expires_on": str(expires),
                "not_before": str(now),
                "resource": resource,
                "access_token": access_token,
            }
        )
    return web.json_response(
        {
            "token_type": "Bearer",
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": access_token,
        }
    )


def _discovery_tenant(request: web.Request) -> str:
    tenant = request.match_info["tenant"]
    if tenant.lower() in ("common", "organizations"):
        return "{tenantid}"  # as Entra writes it in multi-tenant documents
    return _check_tenant(request.app[STATE], tenant)


async def openid_configuration(request: web.Request) -> web.Response:
    try:
        tid = _discovery_tenant(request)
    except EntraError as exc:
        exc.error = "invalid_tenant"
        return error_response(request, exc, request.app[STATE].clock())
    base, v2 = _base(request), "/v2.0/" in request.path
    suffix = "v2.0/" if v2 else ""
    document = {
        "token_endpoint": f"{base}/{tid}/oauth2/{suffix}token",
        "token_endpoint_auth_methods_supported": [
            "client_secret_post",
            "private_key_jwt",
            "client_secret_basic",
        ],
        "jwks_uri": f"{base}/{tid}/discovery/{suffix}keys",
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code", "id_token", "code id_token", "token id_token"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "issuer": f"{base}/{tid}/v2.0" if v2 else sts_issuer(tid),
        "request_uri_parameter_supported": False,
        "authorization_endpoint": f"{base}/{tid}/oauth2/{suffix}authorize",
        "device_authorization_endpoint": f"{base}/{tid}/oauth2/{suffix}devicecode",
        "tenant_region_scope": "EU",
        "cloud_instance_name": "microsoftonline.com",
    }
    return web.json_response(document)


async def keys(request: web.Request) -> web.Response:
    key = request.app[STATE].signing_key
    return web.json_response({"keys": [{**key.as_dict(private=False), "x5t": key.kid}]})


async def instance_discovery(request: web.Request) -> web.Response:
    """MSAL's authority validation; it drops the port from the host it asks about."""
    asked = urlparse(request.query.get("authorization_endpoint", ""))
    tenant = asked.path.strip("/").split("/")[0] or "common"
    host = request.host.split(":")[0]
    return web.json_response(
        {
            "tenant_discovery_endpoint": f"{_base(request)}/{tenant}/v2.0/.well-known/"
            "openid-configuration",
            "api-version": "1.1",
            "metadata": [{"preferred_network": host, "preferred_cache": host, "aliases": [host]}],
        }
    )


def create_entra_app(state: AzureState) -> web.Application:
    app = web.Application(client_max_size=64 * 1024)
    app[STATE] = state
    app.router.add_get("/common/discovery/instance", instance_discovery)
    app.router.add_post("/{tenant}/oauth2/v2.0/token", token)
    app.router.add_post("/{tenant}/oauth2/token", token)
    app.router.add_get("/{tenant}/v2.0/.well-known/openid-configuration", openid_configuration)
    app.router.add_get("/{tenant}/.well-known/openid-configuration", openid_configuration)
    app.router.add_get("/{tenant}/discovery/v2.0/keys", keys)
    app.router.add_get("/{tenant}/discovery/keys", keys)
    add_test_hooks(app, state)
    app.cleanup_ctx.append(jwks_context(JWKS))
    return app
