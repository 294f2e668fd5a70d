"""Azure managed-identity contracts (DESIGN.md, Azure): the App Service endpoint
(`IDENTITY_ENDPOINT` + `IDENTITY_HEADER`, which Go's MSAL can be pointed at), the IMDS path
(`AZURE_POD_IDENTITY_AUTHORITY_HOST`, for Python and Node), and the legacy App Service contract
2017-09-01 (`MSI_ENDPOINT` + `MSI_SECRET`, a `secret` header: msrestazure, az CLI <= 2.45,
Azure ML clients). One token per identity and resource.

The 2017-09-01 answer sends `expires_on` as epoch seconds, as Azure ML does, not App Service's
date string ("11/29/2026 22:00:00 +00:00"): every client of that contract parses the number
(azure-identity and az 2.45 try int() before the date, MSAL Node takes a number or ISO 8601,
MSAL Python only int(); msrestazure passes it on unparsed), where the date breaks both MSALs.

400 `invalid_request` only for requests that are wrong (no `Metadata` header, no resource, an
identity the launch does not grant); anything transient is 503 with `Retry-After`, because
azure-identity takes a 400 as "no managed identity here" for good.

A resource is cached under one normalised key (`resource_key`): `https://storage.azure.com/` and
`https://STORAGE.azure.com` share one token; each answer echoes the resource as it was asked.
"""

from __future__ import annotations

import functools
import json
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Literal

from aiohttp import web

from credsidecar.audit import AuditLog
from credsidecar.cache import Cached
from credsidecar.cache_family import CacheFamily
from credsidecar.clouds.contracts import AzureIdentityRef, AzureToken
from credsidecar.endpoints.guards import Guard, secret_bytes, secrets_match
from credsidecar.errors import CredsidecarError, answer_status

__all__ = [
    "APP_SERVICE_PATH", "IMDS_PATH", "LEGACY_API_VERSION", "LEGACY_APP_SERVICE_PATH",
    "AzureEndpoints", "resource_key", "with_error_fields",
]  # fmt: skip

APP_SERVICE_PATH = "/msi/token"
IMDS_PATH = "/metadata/identity/oauth2/token"
# MSI_ENDPOINT: a path of its own, so the audit tells which contract a client used.
LEGACY_APP_SERVICE_PATH = "/msi/2017-09-01/token"
LEGACY_API_VERSION = "2017-09-01"
MAX_ECHOED = 40  # characters of a wrong api-version quoted back

TokenKey = tuple[str, str]  # (identity name, resource)
INSTANCE_PATH = "/metadata/instance"
# The instance metadata's location: the sidecar is not a VM; tools read it for a default region.
DEFAULT_LOCATION = "eastus"
_RESOURCE_GROUP = re.compile(r"/subscriptions/([^/]+)/resourceGroups/([^/]+)/", re.IGNORECASE)
Contract = Literal["app_service", "imds", "legacy"]
_JSON_HEADERS = {"Content-Type": "application/json; charset=utf-8"}
MAX_FIXED = 256  # pre-serialised bodies kept (identities x resources x three contracts)
MAX_SERVED = 256  # (identity, resource, path) keys whose last served expiry is kept for the audit
# Resource URIs are short (`https://storage.azure.com`, an app ID URI, a GUID); a longer one is a
# wrong request, and would otherwise be kept in caches and written to logs.
MAX_RESOURCE_LENGTH = 400
MAX_ASKED = 256  # query strings whose parse is kept (each client asks a few, again and again)
_Asked = tuple[AzureIdentityRef, str, str]  # identity, resource as asked, its resource_key


def resource_key(resource: str) -> str:
    """The one key for the spellings of a resource Entra treats alike: with or without
    trailing slashes, any case of scheme and host. The exchanger asks Entra for
    `<resource>/.default` with trailing slashes stripped, so every spelling gets the same token."""
    scheme, sep, rest = resource.partition("://")
    if sep:
        host, slash, path = rest.partition("/")
        resource = f"{scheme.lower()}://{host.lower()}{slash}{path}"
    return resource.rstrip("/")


def _error(body: Mapping[str, object], status: int, headers: Mapping[str, str] | None = None
           ) -> web.Response:  # fmt: skip
    # MSAL's App Service client reports only `statusCode` and `message` of an error body; IMDS
    # clients read the OAuth `error` and `error_description`: give both.
    full = {**body, "statusCode": str(status), "message": body.get("error_description", "")}
    return web.json_response(full, status=status, headers=headers)


def with_error_fields(response: web.StreamResponse) -> None:
    """Guard decorator: the same error fields on the guard's refusals."""
    if isinstance(response, web.Response) and isinstance(response.body, bytes):
        body = json.loads(response.body)
        body.setdefault("statusCode", str(response.status))
        body.setdefault("message", body.get("error_description", ""))
        response.body = json.dumps(body).encode()


def _invalid(message: str) -> web.Response:
    return _error({"error": "invalid_request", "error_description": message}, 400)


def _failure(exc: CredsidecarError) -> web.Response:
    # A wrong request (unknown resource) is 400; a refusal retrying will not change (no
    # matching federated credential, revoked run) is 403 with Entra's explanation; anything
    # transient 503 with Retry-After.
    status, headers = answer_status(exc)
    return _error(exc.to_json(), status, headers)


class AzureEndpoints:
    def __init__(
        self,
        tokens: CacheFamily[TokenKey, AzureToken],
        identities: Sequence[AzureIdentityRef],
        header_secret: str,
        guard: Guard,
        audit: AuditLog,
        who: Mapping[str, str | None],
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._tokens = tokens
        self._identities = list(identities)
        self._secret = secret_bytes(header_secret)
        self._guard = guard
        self._audit = audit
        self._who = dict(who)
        self._wall = wall
        self._served: dict[tuple[str, str, str], float] = {}
        self._fixed: dict[tuple[str, str, Contract], tuple[Cached[AzureToken], str]] = {}
        self._asked_by_query: dict[str, _Asked] = {}
        self.app_service = self._token_handler(
            "app_service", APP_SERVICE_PATH, self._app_service_refusal
        )
        self.imds = self._token_handler("imds", IMDS_PATH, self._imds_refusal)
        self.legacy_app_service = self._token_handler(
            "legacy", LEGACY_APP_SERVICE_PATH, self._legacy_refusal
        )

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(APP_SERVICE_PATH, self.app_service),
            web.get(IMDS_PATH, self.imds),
            *self._instance_routes(),
            # msrestazure asks for f"{MSI_ENDPOINT}/?resource=...": the same with a slash.
            web.get(LEGACY_APP_SERVICE_PATH, self.legacy_app_service),
            web.get(f"{LEGACY_APP_SERVICE_PATH}/", self.legacy_app_service),
        ]

    def _select(self, query: Mapping[str, str]) -> AzureIdentityRef | web.Response:
        client_id = query.get("client_id") or query.get("clientid")
        object_id = query.get("object_id") or query.get("principal_id")
        mi_res_id = query.get("mi_res_id") or query.get("msi_res_id")
        for identity in self._identities:
            if identity.matches(client_id, object_id, mi_res_id):
                return identity
        asked = client_id or object_id or mi_res_id
        granted = ", ".join(f"{i.name} ({i.client_id})" for i in self._identities)
        message = f"identity {asked!r} is not granted to this launch; granted: {granted}"
        # The same list as data, for the job's own tools (`credsidecar preflight`).
        listed = [{"name": i.name, "client_id": i.client_id} for i in self._identities]
        return _error({"error": "invalid_request", "error_description": message,
                       "granted_identities": listed}, 400)  # fmt: skip

    def _asked(self, request: web.Request) -> _Asked | web.Response:
        """What the query asks for (identity, resource, its key), or the 400 saying what is
        wrong. Clients ask the same query again and again: a valid one is parsed once."""
        raw = request.query_string
        asked = self._asked_by_query.get(raw)
        if asked is not None:
            return asked
        query = request.query
        resource = query.get("resource", "")
        if not resource:
            return _invalid("resource is required, e.g. resource=https://storage.azure.com")
        if len(resource) > MAX_RESOURCE_LENGTH:
            return _invalid(
                f"resource is longer than {MAX_RESOURCE_LENGTH} characters; ask for the "
                "resource's URI, e.g. resource=https://storage.azure.com"
            )
        if not query.get("api-version"):
            return _invalid("api-version is required")
        identity = self._select(query)
        if isinstance(identity, web.Response):
            return identity
        if len(self._asked_by_query) >= MAX_ASKED:
            self._asked_by_query.clear()  # a client varying its queries: parse them again
        asked = self._asked_by_query[raw] = (identity, resource, resource_key(resource))
        return asked

    def _token_handler(
        self, contract: Contract, path: str, refusal: Callable[[web.Request], web.Response | None]
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        """One contract's handler: its own checks (`refusal`), then the token, in one coroutine
        (this runs on every request)."""

        async def handler(request: web.Request) -> web.Response:
            refused = refusal(request)
            if refused is not None:
                return refused
            asked = self._asked(request)
            if isinstance(asked, web.Response):
                return asked
            identity, resource, key = asked
            try:
                entry = self._tokens.get_now((identity.name, key)) or await self._tokens.get(
                    (identity.name, key)
                )
            except CredsidecarError as exc:
                return _failure(exc)
            return self._answer(identity, resource, key, entry, contract, path)

        return handler

    def _answer(
        self, identity: AzureIdentityRef, resource: str, key: str, entry: Cached[AzureToken],
        contract: Contract, path: str,
    ) -> web.Response:  # fmt: skip
        self._audit_served(identity, key, entry, path)
        expires_in = max(0, int(entry.wall_expiry) - int(self._wall()))  # at response time
        fixed = self._fixed.get((identity.name, resource, contract))
        if fixed is None or fixed[0] is not entry:
            fixed = (entry, self._fixed_fields(identity, resource, entry, contract))
            if len(self._fixed) > MAX_FIXED:
                self._fixed.clear()
            self._fixed[(identity.name, resource, contract)] = fixed
        # App Service sends expires_in as a number, IMDS (with ext_expires_in) as a string;
        # 2017-09-01 sends none.
        if contract == "app_service":
            tail = f'"expires_in":{expires_in}}}'
        elif contract == "imds":
            tail = f'"expires_in":"{expires_in}","ext_expires_in":"{expires_in}"}}'
        else:
            return web.Response(body=fixed[1].encode(), headers=_JSON_HEADERS)
        return web.Response(body=(fixed[1] + tail).encode(), headers=_JSON_HEADERS)

    @staticmethod
    def _fixed_fields(identity: AzureIdentityRef, resource: str, entry: Cached[AzureToken],
                      contract: Contract) -> str:  # fmt: skip
        """The body up to expires_in, which alone changes between responses for one token:
        serialised once per token rather than at every request (whole for 2017-09-01)."""
        expires_on = int(entry.wall_expiry)
        fields: dict[str, object] = {
            "access_token": entry.value.access_token,
            # Epoch seconds as a string, as all three services send (Azure ML for 2017-09-01).
            "expires_on": str(expires_on),
            "resource": resource,
            "token_type": "Bearer",
            "client_id": identity.client_id,
        }
        if contract == "imds":
            fields["not_before"] = str(int(entry.wall_expiry - entry.lifetime))
        body = json.dumps(fields, separators=(",", ":"))
        return body if contract == "legacy" else body[:-1] + ","

    def _audit_served(self, identity: AzureIdentityRef, resource: str, entry: Cached[AzureToken],
                      path: str) -> None:  # fmt: skip
        # One line per token and contract served, not per request; the last expiry per key
        # keeps this bounded.
        key = (identity.name, resource, path)
        if self._served.get(key) != entry.wall_expiry:
            if len(self._served) >= MAX_SERVED:
                self._served.clear()  # at worst a token is audited as served twice
            self._served[key] = entry.wall_expiry
            self._audit.event("credentials.served", **self._who, provider="azure",
                              identity=identity.name, client_id=identity.client_id,
                              resource=resource, expiry=int(entry.wall_expiry),
                              path=path)  # fmt: skip

    def _app_service_refusal(self, request: web.Request) -> web.Response | None:
        if secrets_match(request.headers.get("X-IDENTITY-HEADER"), self._secret):
            return None
        return self._guard.refuse(request, 401, "missing or wrong X-IDENTITY-HEADER",
                                  "; set IDENTITY_HEADER from `credsidecar env`")  # fmt: skip

    @staticmethod
    def _imds_refusal(request: web.Request) -> web.Response | None:
        if request.headers.get("Metadata", "").lower() == "true":
            return None
        # azure-identity probes without the header and needs this exact answer quickly.
        return _invalid("Required metadata header not specified")

    def _legacy_refusal(self, request: web.Request) -> web.Response | None:
        """App Service 2017-09-01: the per-job secret in a `secret` header, `clientid`."""
        if not secrets_match(request.headers.get("secret"), self._secret):
            return self._guard.refuse(request, 401, "missing or wrong secret header",
                                      "; set MSI_SECRET from `credsidecar env`")  # fmt: skip
        version = request.query.get("api-version", "")
        if version != LEGACY_API_VERSION:
            asked = version[:MAX_ECHOED] + ("..." if len(version) > MAX_ECHOED else "")
            return _invalid(
                f"api-version {asked!r} is not served at MSI_ENDPOINT: use "
                f"api-version={LEGACY_API_VERSION} there, or 2019-08-01 at IDENTITY_ENDPOINT"
            )
        return None

    # instance metadata (IMDS /metadata/instance) --------------------------------------------

    def _instance_routes(self) -> list[web.RouteDef]:
        return [
            web.get(INSTANCE_PATH, self.instance),
            web.get(f"{INSTANCE_PATH}/compute", self.instance),
            web.get(f"{INSTANCE_PATH}/compute/{{field}}", self.instance),
        ]

    @functools.cached_property
    def _vm_id(self) -> str:
        return str(uuid.uuid4())  # one per sidecar, as a VM has one

    def _compute(self) -> dict[str, object]:
        """The compute fields clients read, with the subscription and resource group of the
        default identity's resource id (the sandbox's, or the real one's)."""
        found = _RESOURCE_GROUP.search(self._identities[0].resource_id or "")
        subscription, group = found.groups() if found else ("", "")
        name = "credsidecar"
        vm = "/".join(("", "subscriptions", subscription, "resourceGroups", group, "providers",
                       "Microsoft.Compute", "virtualMachines", name)) if found else ""  # fmt: skip
        return {"azEnvironment": "AzurePublicCloud", "location": DEFAULT_LOCATION, "name": name,
                "osType": "Linux", "resourceGroupName": group, "resourceId": vm,
                "subscriptionId": subscription, "tagsList": [], "vmId": self._vm_id}  # fmt: skip

    async def instance(self, request: web.Request) -> web.Response:
        """`/metadata/instance[/compute[/FIELD]]?api-version=...` with `Metadata: true`; a
        single field as text with `format=text`, as IMDS answers it."""
        if request.headers.get("Metadata", "").lower() != "true":
            return _invalid("Required metadata header not specified")
        if not request.query.get("api-version"):
            return _invalid("Bad request. api-version was not specified in the request")
        compute = self._compute()
        field = request.match_info.get("field")
        if field is not None:
            if field not in compute:
                return _error({"error": "not_found", "error_description": "Not found"}, 404)
            value = compute[field]
            if request.query.get("format") == "text":
                return web.Response(text=str(value))
            return web.json_response(value)
        if request.path.endswith("/compute"):
            return web.json_response(compute)
        return web.json_response({"compute": compute, "network": {"interface": []}})
