"""The GCE metadata server contract, as google-auth, the Google Cloud client libraries and gcloud
read it (DESIGN.md, GCP): `GET /` answers the ping; everything under /computeMetadata/v1/ needs
`Metadata-Flavor: Google`; every response, errors included, carries that header back.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

from credsidecar.audit import AuditLog
from credsidecar.cache import Cached
from credsidecar.cache_family import CacheFamily
from credsidecar.clouds.contracts import GCP_CLOUD_PLATFORM as CLOUD_PLATFORM
from credsidecar.clouds.contracts import GcpIdToken, GcpToken
from credsidecar.errors import BadRequest, CredsidecarError, answer_status

__all__ = ["FLAVOR", "GcpEndpoints", "add_flavor"]

Handler = Callable[[web.Request], Awaitable[web.Response]]

FLAVOR = {"Metadata-Flavor": "Google"}
V1 = "/computeMetadata/v1"
UNIVERSE = "googleapis.com"
_JSON_HEADERS = {"Content-Type": "application/json", **FLAVOR}
MAX_ESCAPED = 64
MAX_SERVED = 256  # (kind, key) pairs whose last served expiry is remembered for the audit
# What a client may ask for is bounded, so no request can make caches, keys or log lines large:
# real scope sets are a few URLs of ~50 characters, audiences one URL.
MAX_SCOPES = 32
MAX_SCOPES_LENGTH = 2048  # of the whole `scopes` parameter
MAX_AUDIENCE_LENGTH = 512
# The zone `instance/zone` names: the sidecar is not a GCE instance, and a zone is only read by
# tools that pick a default location.
DEFAULT_ZONE = "us-central1-a"


def add_flavor(response: web.StreamResponse) -> None:
    response.headers.update(FLAVOR)


def _text(body: str, status: int = 200) -> web.Response:
    return web.Response(text=body, status=status, headers=FLAVOR, content_type="application/text")


def _json(body: object) -> web.Response:
    return web.json_response(body, headers=FLAVOR)


def _error(exc: CredsidecarError) -> web.Response:
    status, headers = answer_status(exc)
    return web.json_response(exc.to_json(), status=status, headers={**headers, **FLAVOR})


class GcpEndpoints:
    def __init__(
        self,
        tokens: CacheFamily[tuple[str, ...], GcpToken],
        id_tokens: CacheFamily[str, GcpIdToken],
        email: str,
        project_id: str | None,
        project_number: str | None,
        audit: AuditLog,
        who: Mapping[str, str | None],
        wall: Callable[[], float] = time.time,
        *,
        zone: str = DEFAULT_ZONE,
    ) -> None:
        self._zone = zone
        # A GCE-shaped numeric instance id, new for each sidecar.
        self._instance_id = str(10**18 + secrets.randbelow(9 * 10**18))
        self._tokens = tokens
        self._id_tokens = id_tokens
        self._email = email
        self._project_id = project_id
        self._project_number = project_number
        self._audit = audit
        self._who = dict(who)
        self._wall = wall
        self._served: dict[tuple[str, str | tuple[str, ...]], float] = {}
        self._escaped: dict[str, str] = {}
        self._scope_sets: dict[str, tuple[str, ...]] = {}
        self._audiences: dict[str, str] = {}  # identity's query string -> its valid audience

    def routes(self) -> list[web.RouteDef]:
        sa = f"{V1}/instance/service-accounts/{{account}}"
        return [
            web.get("/", self.ping),
            # The default account's hot paths as static routes: aiohttp resolves those with one
            # dict lookup instead of trying each {account} pattern in turn.
            web.get(f"{V1}/instance/service-accounts/default/token", self.token),
            web.get(f"{V1}/instance/service-accounts/default/identity", self.identity),
            web.get(f"{V1}/", self.listing("instance/\nproject/\nuniverse/\n")),
            web.get(f"{V1}/instance/", self.listing("id\nservice-accounts/\nzone\n")),
            web.get(f"{V1}/instance/id", self.instance_field(lambda: self._instance_id)),
            web.get(f"{V1}/instance/zone", self.instance_field(self._zone_path)),
            web.get(f"{V1}/instance/service-accounts/", self.accounts),
            web.get(f"{sa}/", self.account),
            web.get(f"{sa}/email", self.account_field("email")),
            web.get(f"{sa}/aliases", self.account_field("aliases")),
            web.get(f"{sa}/scopes", self.account_field("scopes")),
            web.get(f"{sa}/token", self.token),
            web.get(f"{sa}/identity", self.identity),
            web.get(f"{V1}/project/", self.listing("numeric-project-id\nproject-id\n")),
            web.get(f"{V1}/project/project-id", self.project("id")),
            web.get(f"{V1}/project/numeric-project-id", self.project("number")),
            web.get(f"{V1}/universe/universe-domain", self.universe),
            # Directories without their slash redirect, as the real server does.
            web.get(V1, self.redirect),
            web.get(f"{V1}/instance", self.redirect),
            web.get(f"{V1}/instance/service-accounts", self.redirect),
            web.get(sa, self.redirect),
            web.get(f"{V1}/project", self.redirect),
            web.get(f"{V1}/{{tail:.*}}", self.not_found),
        ]

    # helpers ------------------------------------------------------------------------------------

    @staticmethod
    def _flavor_missing(request: web.Request) -> web.Response | None:
        if request.headers.get("Metadata-Flavor") == "Google":
            return None
        return _text("Missing required header: Metadata-Flavor: Google\n", 403)

    def _account_ok(self, request: web.Request) -> bool:
        return request.match_info.get("account") in ("default", self._email)

    def _refusal(self, request: web.Request) -> web.Response | None:
        missing = self._flavor_missing(request)
        if missing is not None:
            return missing
        if "account" in request.match_info and not self._account_ok(request):
            return _text(f"no service account {request.match_info['account']!r} here\n", 404)
        return None

    async def _checked(
        self, request: web.Request, handler: Callable[[], web.Response]
    ) -> web.Response:
        return self._refusal(request) or handler()

    # handlers -----------------------------------------------------------------------------------

    async def ping(self, request: web.Request) -> web.Response:
        return _text("")

    def listing(self, body: str) -> Handler:
        async def handler(request: web.Request) -> web.Response:
            return await self._checked(request, lambda: _text(body))

        return handler

    async def redirect(self, request: web.Request) -> web.Response:
        missing = self._flavor_missing(request)
        if missing is not None:
            return missing
        # From the raw (still %-encoded) path and query: decoded, a `%0d%0a` would put CR LF in
        # the header, which aiohttp refuses to send (the client got no answer at all).
        url = request.rel_url
        location = url.raw_path + "/" + (f"?{url.raw_query_string}" if url.raw_query_string else "")
        return web.Response(status=301, headers={**FLAVOR, "Location": location})

    async def not_found(self, request: web.Request) -> web.Response:
        return await self._checked(request, lambda: _text("Not found\n", 404))

    async def accounts(self, request: web.Request) -> web.Response:
        return await self._checked(request, lambda: _text(f"default/\n{self._email}/\n"))

    def _info(self) -> dict[str, object]:
        return {"aliases": ["default"], "email": self._email, "scopes": [CLOUD_PLATFORM]}

    async def account(self, request: web.Request) -> web.Response:
        if request.query.get("recursive", "").lower() == "true":
            return await self._checked(request, lambda: _json(self._info()))
        return await self._checked(
            request, lambda: _text("aliases\nemail\nidentity\nscopes\ntoken\n")
        )

    def account_field(self, field: str) -> Handler:
        async def handler(request: web.Request) -> web.Response:
            value = self._info()[field]
            text = "\n".join(value) + "\n" if isinstance(value, list) else str(value)
            return await self._checked(request, lambda: _text(text))

        return handler

    def project(self, which: str) -> Handler:
        async def handler(request: web.Request) -> web.Response:
            value = self._project_id if which == "id" else self._project_number
            if value is None:
                return await self._checked(request, lambda: _text("Not found\n", 404))
            return await self._checked(request, lambda: _text(value))

        return handler

    def _zone_path(self) -> str:
        # As GCE writes it: projects/NUMBER/zones/ZONE (the id when the number is unknown).
        return f"projects/{self._project_number or self._project_id or '0'}/zones/{self._zone}"

    def instance_field(self, value: Callable[[], str]) -> Handler:
        async def handler(request: web.Request) -> web.Response:
            return await self._checked(request, lambda: _text(value()))

        return handler

    async def universe(self, request: web.Request) -> web.Response:
        return await self._checked(request, lambda: _text(UNIVERSE))

    def _audit_served(self, kind: str, key: str | tuple[str, ...],
                      entry: Cached[GcpToken] | Cached[GcpIdToken], path: str) -> None:  # fmt: skip
        """One audit line per token obtained and first served (the last expiry per key)."""
        if self._served.get((kind, key)) == entry.wall_expiry:
            return
        if len(self._served) >= MAX_SERVED:
            self._served.clear()  # at worst a token is audited as served twice
        self._served[(kind, key)] = entry.wall_expiry
        shown = ",".join(key) if isinstance(key, tuple) else key
        self._audit.event("credentials.served", **self._who, provider="gcp",
                          identity=self._email, kind=kind, key=shown,
                          expiry=int(entry.wall_expiry), path=path)  # fmt: skip

    def _parse_scopes(self, raw: str) -> tuple[str, ...]:
        """Scope sets are few and asked for again and again: parse each raw string once.
        Order and repeats do not matter: one sorted set is one cache key."""
        if len(raw) > MAX_SCOPES_LENGTH:
            raise BadRequest(f"scopes is longer than {MAX_SCOPES_LENGTH} characters")
        scopes = tuple(sorted({s for s in raw.replace(" ", ",").split(",") if s}))
        if len(scopes) > MAX_SCOPES:
            raise BadRequest(f"more than {MAX_SCOPES} scopes asked for at once ({len(scopes)})")
        if len(self._scope_sets) > MAX_ESCAPED:
            self._scope_sets.clear()
        self._scope_sets[raw] = scopes or (CLOUD_PLATFORM,)
        return self._scope_sets[raw]

    async def token(self, request: web.Request) -> web.Response:
        refused = self._refusal(request)
        if refused is not None:
            return refused
        # Most clients send no query at all: parsing one (`request.query`) costs ~2 us a request.
        raw = request.query.get("scopes", "") if request.query_string else ""
        scopes = self._scope_sets.get(raw)
        if scopes is None:
            try:
                scopes = self._parse_scopes(raw)
            except BadRequest as exc:
                return _text(f"{exc.message}\n", 400)
        try:
            entry = self._tokens.get_now(scopes) or await self._tokens.get(scopes)
        except CredsidecarError as exc:
            return _error(exc)
        self._audit_served("access_token", scopes, entry, request.path)
        # Lifetimes are computed at response time; google-auth reads expires_in as an integer.
        expires_in = max(0, int(entry.wall_expiry - self._wall()))
        # Only expires_in changes per response: the escaped token is encoded once per token.
        token = entry.value.access_token
        escaped = self._escaped.get(token)
        if escaped is None:
            if len(self._escaped) > MAX_ESCAPED:
                self._escaped.clear()
            escaped = self._escaped[token] = json.dumps(token)
        body = f'{{"access_token":{escaped},"expires_in":{expires_in},"token_type":"Bearer"}}'
        return web.Response(body=body.encode(), headers=_JSON_HEADERS)

    async def identity(self, request: web.Request) -> web.Response:
        refused = self._refusal(request)
        if refused is not None:
            return refused
        # Clients ask with the same query again and again: a valid one is parsed once (~2 us).
        audience = self._audiences.get(request.query_string)
        if audience is None:
            audience = request.query.get("audience", "")
            if not audience:
                return _text("audience is required: identity?audience=...\n", 400)
            if len(audience) > MAX_AUDIENCE_LENGTH:
                return _text(f"audience is longer than {MAX_AUDIENCE_LENGTH} characters\n", 400)
            if len(self._audiences) > MAX_ESCAPED:
                self._audiences.clear()
            self._audiences[request.query_string] = audience
        try:
            entry = self._id_tokens.get_now(audience) or await self._id_tokens.get(audience)
        except CredsidecarError as exc:
            return _error(exc)
        self._audit_served("id_token", audience, entry, request.path)
        return _text(entry.value.token)
