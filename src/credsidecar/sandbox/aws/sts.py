"""A local STS that validates web identity tokens the way AWS does, then asks moto.

Checks, in AWS's order: an OIDC provider is registered for the token's `iss`; the signature
verifies against that issuer's JWKS; `aud` is one of the provider's client IDs; `exp`/`nbf`;
the role exists and its trust policy admits the provider and the token's `sub` and `aud`.
Then an admin-signed `AssumeRole` against moto (which enforces S3 permissions per role) yields
real session credentials. Errors use AWS's codes and XML shape so botocore parses them.

Test hooks under /_sandbox/: `outage` (answer 503 for N seconds) and `stats` (call counts).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape

import aiohttp
from aiohttp import web
from botocore.exceptions import ClientError
from joserfc import jwt
from joserfc.errors import ExpiredTokenError, InvalidClaimError, JoseError

from credsidecar.sandbox.aws.moto_backend import MotoBackend
from credsidecar.sandbox.aws.trust import provider_id, trust_allows
from credsidecar.sandbox.hooks import add_test_hooks
from credsidecar.sandbox.jwks import JwksCache

__all__ = ["StsState", "create_sts_app"]

NS = "https://sts.amazonaws.com/doc/2011-06-15/"
MAX_DURATION = 43200


@dataclass
class StsState:
    moto: MotoBackend
    providers: Mapping[str, tuple[str, ...]]  # issuer URL -> client IDs (audiences)
    trust: Mapping[str, Mapping[str, Any]]  # role ARN -> trust policy
    clock: Callable[[], float] = time.time
    outage_until: float = 0.0
    calls: dict[str, int] = field(
        default_factory=lambda: {"AssumeRoleWithWebIdentity": 0, "AssumeRole": 0}
    )
    # AssumeRole requests seen (the last 256): role, session, session policy, caller's key.
    assume_role_requests: deque[dict[str, str | None]] = field(
        default_factory=lambda: deque(maxlen=256)
    )


STATE = web.AppKey("state", StsState)
JWKS = web.AppKey("jwks", JwksCache)
STS_CLIENT = web.AppKey("sts_client", object)


class StsError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _error(status: int, code: str, message: str) -> web.Response:
    kind = "Receiver" if status >= 500 else "Sender"
    body = (
        f'<ErrorResponse xmlns="{NS}"><Error><Type>{kind}</Type><Code>{escape(code)}</Code>'
        f"<Message>{escape(message)}</Message></Error>"
        f"<RequestId>{uuid.uuid4()}</RequestId></ErrorResponse>"
    )
    return web.Response(status=status, text=body, content_type="text/xml")


def _denied(detail: str) -> StsError:
    # AWS gives no detail here; the sandbox adds it in parentheses to help people learn.
    return StsError(
        403, "AccessDenied", f"Not authorized to perform sts:AssumeRoleWithWebIdentity ({detail})"
    )


async def _validate(request: web.Request, form: Mapping[str, str]) -> dict[str, Any]:
    state = request.app[STATE]
    token = form.get("WebIdentityToken", "")
    try:
        unverified = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
        header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    except (ValueError, IndexError) as exc:
        raise StsError(
            400, "InvalidIdentityToken", "Couldn't parse the web identity token"
        ) from exc
    issuer = str(unverified.get("iss", ""))
    if issuer not in state.providers:
        raise StsError(400, "InvalidIdentityToken",
                       f"No OpenIDConnect provider found in your account for {issuer}")  # fmt: skip
    try:
        keys = await request.app[JWKS].keys_for(issuer, header.get("kid"))
    except (aiohttp.ClientError, TimeoutError, KeyError, ValueError) as exc:
        raise StsError(400, "IDPCommunicationError",
                       f"Couldn't retrieve verification key from your identity provider {issuer}",
                       ) from exc  # fmt: skip
    try:
        claims = jwt.decode(token, keys, algorithms=["RS256", "ES256"]).claims
    except (JoseError, ValueError) as exc:
        raise StsError(400, "InvalidIdentityToken",
                       "The web identity token that was passed could not be validated by AWS. "
                       "Get a new identity token from the identity provider and then retry.",
                       ) from exc  # fmt: skip
    aud = claims.get("aud")
    audiences = aud if isinstance(aud, list) else [aud]
    if not set(audiences) & set(state.providers[issuer]):
        raise StsError(400, "InvalidIdentityToken", "Incorrect token audience")
    try:
        jwt.JWTClaimsRegistry(now=int(state.clock()), exp={"essential": True}).validate(claims)
    except ExpiredTokenError as exc:
        raise StsError(400, "ExpiredTokenException", "Token expired: current date/time must be "
                       "before the expiration date/time") from exc  # fmt: skip
    except InvalidClaimError as exc:
        raise StsError(400, "InvalidIdentityToken", f"Token {exc.description}") from exc
    role_arn = form.get("RoleArn", "")
    policy = state.trust.get(role_arn)
    if policy is None:
        raise _denied(f"role {role_arn} does not exist")
    if not trust_allows(policy, issuer, claims):
        pid = provider_id(issuer)
        raise _denied(f"the trust policy of {role_arn} does not admit {pid}:sub="
                      f"{claims.get('sub')!r} with {pid}:aud={aud!r}")  # fmt: skip
    return dict(claims)


async def assume_role_with_web_identity(
    request: web.Request, form: Mapping[str, str]
) -> web.Response:
    state = request.app[STATE]
    state.calls["AssumeRoleWithWebIdentity"] += 1
    claims = await _validate(request, form)
    duration = int(form.get("DurationSeconds", "3600") or 3600)
    session = form.get("RoleSessionName", "")
    if not 1 <= duration <= MAX_DURATION or not 2 <= len(session) <= 64:
        raise StsError(400, "ValidationError", "DurationSeconds or RoleSessionName out of range")
    kwargs: dict[str, Any] = {"RoleArn": form["RoleArn"], "RoleSessionName": session,
                              "DurationSeconds": duration}  # fmt: skip
    source_identity = claims.get("https://aws.amazon.com/source_identity")
    if source_identity:
        kwargs["SourceIdentity"] = source_identity
    if form.get("Policy"):
        kwargs["Policy"] = form["Policy"]
    client = request.app[STS_CLIENT]
    try:
        result = await asyncio.to_thread(client.assume_role, **kwargs)  # type: ignore[attr-defined]
    except ClientError as exc:
        error = exc.response.get("Error", {})
        raise StsError(
            403, str(error.get("Code", "AccessDenied")), str(error.get("Message"))
        ) from exc
    creds, user = result["Credentials"], result["AssumedRoleUser"]
    expiration = creds["Expiration"].strftime("%Y-%m-%dT%H:%M:%SZ")
    aud = claims.get("aud")
    body = f"""<AssumeRoleWithWebIdentityResponse xmlns="{NS}">
  <AssumeRoleWithWebIdentityResult>
    <SubjectFromWebIdentityToken>{escape(str(claims.get("sub")))}</SubjectFromWebIdentityToken>
    <Audience>{escape(str(aud[0] if isinstance(aud, list) else aud))}</Audience>
    <AssumedRoleUser><Arn>{escape(user["Arn"])}</Arn>
      <AssumedRoleId>{escape(user["AssumedRoleId"])}</AssumedRoleId></AssumedRoleUser>
    <Credentials>
      <SessionToken>{escape(creds["SessionToken"])}</SessionToken>
      <SecretAccessKey>{escape(creds["SecretAccessKey"])}</SecretAccessKey>
      <Expiration>{expiration}</Expiration>
      <AccessKeyId>{escape(creds["AccessKeyId"])}</AccessKeyId>
    </Credentials>
    <SourceIdentity>{escape(str(source_identity or ""))}</SourceIdentity>
    <Provider>{escape(provider_id(str(claims.get("iss"))))}</Provider>
  </AssumeRoleWithWebIdentityResult>
  <ResponseMetadata><RequestId>{uuid.uuid4()}</RequestId></ResponseMetadata>
</AssumeRoleWithWebIdentityResponse>"""
    return web.Response(text=body, content_type="text/xml")


_HOP_BY_HOP = frozenset({"content-length", "transfer-encoding", "connection"})


async def assume_role(request: web.Request, form: Mapping[str, str]) -> web.Response:
    """A signed AssumeRole (the node's instance profile assuming a role): recorded, then passed
    to moto as it came, Host header included, so moto checks its SigV4 signature, the caller's
    permission and the role's trust policy. moto does not apply session policies: the record
    shows what a real STS would have been asked to apply."""
    state = request.app[STATE]
    state.calls["AssumeRole"] += 1
    credential = request.headers.get("Authorization", "").partition("Credential=")[2]
    state.assume_role_requests.append(
        {"RoleArn": form.get("RoleArn"), "RoleSessionName": form.get("RoleSessionName"),
         "Policy": form.get("Policy"), "AccessKeyId": credential.split("/", 1)[0] or None}
    )  # fmt: skip
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
    async with (
        aiohttp.ClientSession(auto_decompress=False) as session,
        session.post(f"{state.moto.url}/", data=await request.read(), headers=headers) as resp,
    ):
        body = await resp.read()
        return web.Response(status=resp.status, body=body, content_type="text/xml")


async def assume_role_requests(request: web.Request) -> web.Response:
    return web.json_response(list(request.app[STATE].assume_role_requests))


async def sts_endpoint(request: web.Request) -> web.Response:
    state = request.app[STATE]
    form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
    form.update({k: v for k, v in request.query.items()})
    if state.clock() < state.outage_until:
        return _error(503, "ServiceUnavailable", "sandbox STS outage (injected by a test)")
    action = form.get("Action")
    try:
        if action == "AssumeRoleWithWebIdentity":
            return await assume_role_with_web_identity(request, form)
        if action == "AssumeRole":
            return await assume_role(request, form)
        raise StsError(
            400, "InvalidAction", f"the sandbox STS stand-in does not implement {action}"
        )
    except StsError as exc:
        return _error(exc.status, exc.code, exc.message)


async def _resources(app: web.Application) -> Any:
    session = aiohttp.ClientSession()
    app[JWKS] = JwksCache(session)
    app[STS_CLIENT] = await asyncio.to_thread(app[STATE].moto.admin_sts)
    yield
    await session.close()


def create_sts_app(state: StsState) -> web.Application:
    app = web.Application(client_max_size=64 * 1024)
    app[STATE] = state
    app.router.add_post("/", sts_endpoint)
    app.router.add_get("/", sts_endpoint)
    app.router.add_get("/_sandbox/assume-role-requests", assume_role_requests)
    add_test_hooks(app, state)
    app.cleanup_ctx.append(_resources)
    return app
