"""AWS contracts: the container-credentials endpoint and IMDSv2, as DESIGN.md describes them.

Bodies are rendered once per credential generation and served as bytes: AWS documents carry an
absolute `Expiration`, so the same bytes stay correct until the next renewal.
"""

from __future__ import annotations

import json
import platform
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from aiohttp import web

from credsidecar.audit import AuditLog
from credsidecar.cache import Cached, CredentialCache
from credsidecar.clouds.contracts import AwsCredentials
from credsidecar.endpoints.guards import Guard, secret_bytes, secrets_match
from credsidecar.endpoints.session_tokens import SessionTokens
from credsidecar.errors import CredsidecarError, answer_status

__all__ = ["CONTAINER_PATH", "AwsEndpoints", "instance_id"]

CONTAINER_PATH = "/v1/credentials/aws"
TOKEN_TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"  # noqa: S105 - a header name
TOKEN_HEADER = "X-aws-ec2-metadata-token"  # noqa: S105 - a header name
MAX_TOKEN_TTL = 21600  # IMDSv2's own limit (6 h)
MAX_TTL_DIGITS = 6  # room for leading zeros; 21600 has five
_JSON = "application/json"
# The instance identity document's architecture, as EC2 names it.
_ARCHITECTURES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}


def instance_id() -> str:
    """An EC2-shaped instance id (`i-` and 17 hex digits), new for each sidecar."""
    return "i-" + secrets.token_hex(9)[:17]


def _iso(epoch: float) -> str:
    # JS wants strict RFC 3339 with Z; botocore's IMDS path parses exactly this shape.
    return datetime.fromtimestamp(int(epoch), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_Kind = Literal["container", "imds", "imds_extended"]  # the fields of _Rendered


@dataclass(frozen=True)
class _Rendered:
    generation: int
    container: bytes
    imds: bytes
    imds_extended: bytes


def _no_credentials(exc: CredsidecarError) -> web.Response:
    """503 with Retry-After while renewal may still succeed; 403 once a refusal retrying will
    not change (a revoked run) has left nothing valid: the same statuses as GCP and Azure."""
    status, headers = answer_status(exc)
    return web.json_response(exc.to_json(), status=status, headers=headers)


class AwsEndpoints:
    def __init__(
        self,
        cache: CredentialCache[AwsCredentials],
        container_secret: str,
        audit: AuditLog,
        guard: Guard,
        role_name: str,
        who: Mapping[str, str | None],
        mono: Callable[[], float] = time.monotonic,
        *,
        region: str = "us-east-1",
        relative_path: str | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        """`region` is what the instance metadata says (placement, identity document);
        `relative_path`, if given, serves the container document with no Authorization
        (`--aws-relative-uri`: the path is the secret)."""
        self._region = region
        self._relative_path = relative_path
        self._instance_id = instance_id()
        self._started = _iso(wall())
        self._cache = cache
        self._role = role_name
        self._secret = secret_bytes(container_secret)
        self._audit = audit
        self._guard = guard
        self._who = dict(who)
        self._tokens = SessionTokens(mono)
        self._rendered: _Rendered | None = None
        self._served: set[tuple[int, str]] = set()

    def routes(self) -> list[web.RouteDef]:
        # The role is fixed for the sidecar's life, so its paths are static routes: aiohttp
        # finds those with one dict lookup; any other role name gets its plain 404.
        imds = "/latest/meta-data/iam"
        return [
            web.get(CONTAINER_PATH, self.container),
            web.put("/latest/api/token", self.imds_token),
            web.get(f"{imds}/security-credentials/", self.imds_role_list),
            web.get(f"{imds}/security-credentials-extended/", self.imds_role_list),
            web.get(f"{imds}/security-credentials/{self._role}", self.imds_credentials),
            web.get(f"{imds}/security-credentials-extended/{self._role}", self.imds_extended),
            web.get(f"{imds}/info", self.imds_info),
            *self._instance_routes(),
        ]

    def _instance_routes(self) -> list[web.RouteDef]:
        """What SDKs read besides credentials where no variable names a region (botocore asks
        for `availability-zone/` with its slash), and the relative-URI container path."""
        pairs = [
            ("/latest/meta-data/placement/availability-zone", self.imds_availability_zone),
            ("/latest/meta-data/placement/region", self.imds_region),
            ("/latest/meta-data/instance-id", self.imds_instance_id),
            ("/latest/dynamic/instance-identity/document", self.imds_identity_document),
        ]
        routes = [web.get(p + tail, h) for p, h in pairs for tail in ("", "/")]
        if self._relative_path is not None:
            routes.append(web.get(self._relative_path, self.relative))
        return routes

    # rendering ---------------------------------------------------------------------------------

    def _render(self, entry: Cached[AwsCredentials]) -> _Rendered:
        rendered = self._rendered
        if rendered is not None and rendered.generation == entry.generation:
            return rendered
        c = entry.value
        base = {
            "AccessKeyId": c.access_key_id,
            "SecretAccessKey": c.secret_access_key,
            "Token": c.session_token,
            "Expiration": _iso(c.expires_at),
        }
        # LastUpdated: when this generation was obtained (its lifetime before its expiry).
        imds = {"Code": "Success", "LastUpdated": _iso(c.expires_at - entry.lifetime),
                "Type": "AWS-HMAC", **base}  # fmt: skip
        rendered = _Rendered(
            generation=entry.generation,
            container=json.dumps({**base, "AccountId": c.account_id}).encode(),
            imds=json.dumps(imds).encode(),
            imds_extended=json.dumps({**imds, "AccountId": c.account_id}).encode(),
        )
        self._rendered = rendered
        return rendered

    def _serve(
        self, request: web.Request, kind: _Kind, entry_now: Callable[[], Cached[AwsCredentials]]
    ) -> web.Response:
        try:
            entry = entry_now()
        except CredsidecarError as exc:
            return _no_credentials(exc)
        rendered = self._render(entry)
        if (entry.generation, kind) not in self._served:
            # One audit line per credential and client path, not per request.
            self._served.add((entry.generation, kind))
            c = entry.value
            self._audit.event("credentials.served", **self._who, role=c.role_arn,
                              access_key_id=c.access_key_id, expiry=int(c.expires_at),
                              path=request.path)  # fmt: skip
        body: bytes = getattr(rendered, kind)  # `kind` names one of its fields
        return web.Response(body=body, content_type=_JSON)

    # container endpoint ------------------------------------------------------------------------

    async def container(self, request: web.Request) -> web.Response:
        # The SDKs send the raw secret as the whole Authorization header value.
        if not secrets_match(request.headers.get("Authorization"), self._secret):
            return self._guard.refuse(
                request,
                401,
                "missing or wrong Authorization",
                "; set AWS_CONTAINER_AUTHORIZATION_TOKEN(_FILE) from `credsidecar env`",
            )
        return self._serve(request, "container", self._cache.current_entry)

    # IMDSv2 ------------------------------------------------------------------------------------

    async def imds_token(self, request: web.Request) -> web.Response:
        raw = request.headers.get(TOKEN_TTL_HEADER, "")
        # ASCII digits only (str.isdigit accepts "²", which int() refuses), and few of them (int()
        # of thousands of digits is refused, and slow before that).
        ttl = int(raw) if len(raw) <= MAX_TTL_DIGITS and raw.isascii() and raw.isdigit() else 0
        if not 1 <= ttl <= MAX_TOKEN_TTL:
            return web.Response(
                status=400, text=f"{TOKEN_TTL_HEADER} must be an integer in 1..{MAX_TOKEN_TTL}"
            )
        # Go's SDK fails unless the TTL header is echoed.
        return web.Response(text=self._tokens.issue(ttl), headers={TOKEN_TTL_HEADER: str(ttl)})

    def _imds_entry(self, request: web.Request) -> Cached[AwsCredentials] | web.Response:
        """The entry to serve, or the refusal: a valid session token, then valid credentials."""
        if not self._tokens.valid(request.headers.get(TOKEN_HEADER)):
            return self._guard.refuse(request, 401, "missing or expired IMDSv2 session token")
        try:
            return self._cache.current_entry()
        except CredsidecarError as exc:
            return _no_credentials(exc)

    async def imds_role_list(self, request: web.Request) -> web.Response:
        entry = self._imds_entry(request)
        if isinstance(entry, web.Response):
            return entry
        return web.Response(text=self._role)  # no trailing newline: SDKs use it as the name

    def _imds_role(self, request: web.Request, kind: _Kind) -> web.Response:
        # Not a coroutine: called by the handlers below without a second await layer.
        entry = self._imds_entry(request)
        if isinstance(entry, web.Response):
            return entry
        return self._serve(request, kind, lambda: entry)

    async def imds_credentials(self, request: web.Request) -> web.Response:
        return self._imds_role(request, "imds")

    async def imds_extended(self, request: web.Request) -> web.Response:
        return self._imds_role(request, "imds_extended")

    async def imds_info(self, request: web.Request) -> web.Response:
        entry = self._imds_entry(request)
        if isinstance(entry, web.Response):
            return entry
        c = entry.value
        body = {"Code": "Success", "LastUpdated": _iso(c.expires_at - entry.lifetime),
                "InstanceProfileArn": c.role_arn.replace(":role/", ":instance-profile/"),
                "InstanceProfileId": "CREDSIDECAR"}  # fmt: skip
        return web.json_response(body)

    # instance metadata -------------------------------------------------------------------------

    def _token_missing(self, request: web.Request) -> web.Response | None:
        if self._tokens.valid(request.headers.get(TOKEN_HEADER)):
            return None
        return self._guard.refuse(request, 401, "missing or expired IMDSv2 session token")

    async def imds_region(self, request: web.Request) -> web.Response:
        return self._token_missing(request) or web.Response(text=self._region)

    async def imds_availability_zone(self, request: web.Request) -> web.Response:
        return self._token_missing(request) or web.Response(text=f"{self._region}a")

    async def imds_instance_id(self, request: web.Request) -> web.Response:
        return self._token_missing(request) or web.Response(text=self._instance_id)

    async def imds_identity_document(self, request: web.Request) -> web.Response:
        entry = self._imds_entry(request)  # the account is the credentials' own
        if isinstance(entry, web.Response):
            return entry
        machine = platform.machine().lower()
        body = {
            "accountId": entry.value.account_id,
            "architecture": _ARCHITECTURES.get(machine, machine),
            "availabilityZone": f"{self._region}a",
            "billingProducts": None,
            "devpayProductCodes": None,
            "marketplaceProductCodes": None,
            "instanceId": self._instance_id,
            "kernelId": None,
            "pendingTime": self._started,
            "ramdiskId": None,
            "region": self._region,
            "version": "2017-09-30",
        }
        return web.json_response(body)

    async def relative(self, request: web.Request) -> web.Response:
        """The ECS path at 169.254.170.2 (`--aws-relative-uri`): no Authorization, as a client
        given only AWS_CONTAINER_CREDENTIALS_RELATIVE_URI sends none."""
        return self._serve(request, "container", self._cache.current_entry)
