"""A small aiohttp server speaking every contract smoke checks, correctly unless told a fault.

Each fault breaks one contract the way a buggy endpoint would; tests name a fault and assert
that smoke fails the check that relies on it, naming the violation.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestServer

__all__ = ["SECRETS", "FakeSidecar", "ServerFactory", "unsigned_jwt"]

ServerFactory = Callable[..., Awaitable[TestServer]]  # pytest-aiohttp's aiohttp_server

ROLE = "alice-data"
EMAIL = "alice@sandbox-project.iam.gserviceaccount.com"
CLIENT_ID = "00000000-0000-4000-8000-0000000000a2"
TENANT = "00000000-0000-4000-8000-000000000001"
CONTAINER_SECRET = "container-secret-value"
IDENTITY_HEADER = "identity-header-value"
AWS_SECRET_KEY = "aws-secret-access-key-value"
AWS_SESSION_TOKEN = "aws-session-token-value"
GCP_ACCESS_TOKEN = "ya29.gcp-access-token-value"
# Every value smoke must never print.
SECRETS = (CONTAINER_SECRET, IDENTITY_HEADER, AWS_SECRET_KEY, AWS_SESSION_TOKEN, GCP_ACCESS_TOKEN)
FLAVOR = {"Metadata-Flavor": "Google"}


def unsigned_jwt(claims: dict[str, object]) -> str:
    def part(value: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


class FakeSidecar:
    def __init__(self, faults: set[str] | frozenset[str] = frozenset()) -> None:
        self.faults = set(faults)
        self.hang = False  # every request waits for `release`: an endpoint that never answers
        self.release = asyncio.Event()
        self.lifetime = 3600
        self.account_email = EMAIL

    # the app ---------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        sa = "/computeMetadata/v1/instance/service-accounts/default"
        app.add_routes([
            web.get("/v1/credentials/aws", self._wrap(self.container)),
            web.put("/latest/api/token", self._wrap(self.imds_token)),
            web.get("/latest/meta-data/iam/{kind}/", self._wrap(self.role_list)),
            web.get("/latest/meta-data/iam/{kind}/{role}", self._wrap(self.role)),
            web.get("/", self._wrap(self.ping)),
            web.get(f"{sa}/token", self._wrap(self.gcp_token)),
            web.get(f"{sa}/email", self._wrap(self.email)),
            web.get(f"{sa}/", self._wrap(self.account)),
            web.get(f"{sa}/identity", self._wrap(self.identity)),
            web.get("/computeMetadata/v1/project/project-id", self._wrap(self.project)),
            web.get("/msi/token", self._wrap(self.app_service)),
            web.get("/metadata/identity/oauth2/token", self._wrap(self.azure_imds)),
            web.get("/subject-token", self._wrap(self.subject_token)),
        ])  # fmt: skip
        return app

    def _wrap(
        self, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            if self.hang:
                await self.release.wait()
            return await handler(request)

        return wrapped

    def env(self, url: str, token_dir: Path) -> dict[str, str]:
        """The job environment `credsidecar env` would print for this server."""
        token_file = token_dir / "aws-container-token"
        token_file.write_text(CONTAINER_SECRET)
        host = url.removeprefix("http://")
        return {
            "CREDSIDECAR_URL": url,
            "AWS_CONTAINER_CREDENTIALS_FULL_URI": f"{url}/v1/credentials/aws",
            "AWS_CONTAINER_AUTHORIZATION_TOKEN": CONTAINER_SECRET,
            "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": str(token_file),
            "AWS_EC2_METADATA_SERVICE_ENDPOINT": url,
            "GCE_METADATA_HOST": host,
            "GCE_METADATA_IP": host,
            "GOOGLE_CLOUD_PROJECT": "sandbox-project",
            "IDENTITY_ENDPOINT": f"{url}/msi/token",
            "IDENTITY_HEADER": IDENTITY_HEADER,
            "AZURE_POD_IDENTITY_AUTHORITY_HOST": url,
        }

    # AWS -------------------------------------------------------------------------------------

    def _aws_body(self, imds: bool, extended: bool = False) -> dict[str, object]:
        offset = {"expired": -60, "near_expiry": 600}.get(self._fault("aws_expiration"),
                                                          self.lifetime)  # fmt: skip
        expires = datetime.fromtimestamp(int(time.time()) + offset, UTC)
        shape = "%Y-%m-%dT%H:%M:%S+00:00" if "aws_expiration_offset_form" in self.faults else (
            "%Y-%m-%dT%H:%M:%SZ")  # fmt: skip
        body: dict[str, object] = {"AccessKeyId": "ASIAFAKEKEYID0000001",
                                   "SecretAccessKey": AWS_SECRET_KEY,
                                   "Token": AWS_SESSION_TOKEN,
                                   "Expiration": expires.strftime(shape)}  # fmt: skip
        if imds:
            code = "Failure" if "imds_code_not_success" in self.faults else "Success"
            body.update(Code=code, LastUpdated="2026-11-29T20:00:00Z", Type="AWS-HMAC")
        if not imds or extended:
            body["AccountId"] = "123456789012"
        if "aws_no_token_field" in self.faults:
            del body["Token"]
        return body

    def _fault(self, prefix: str) -> str:
        for fault in self.faults:
            if fault.startswith(prefix + ":"):
                return fault.split(":", 1)[1]
        return ""

    def _aws_json(self, body: dict[str, object]) -> web.Response:
        if "aws_no_content_type" in self.faults:
            return web.Response(body=json.dumps(body).encode())  # application/octet-stream
        return web.json_response(body)

    async def container(self, request: web.Request) -> web.Response:
        if ("aws_secret_not_enforced" not in self.faults
                and request.headers.get("Authorization") != CONTAINER_SECRET):  # fmt: skip
            return web.json_response({"error": "unauthorized"}, status=401)
        return self._aws_json(self._aws_body(imds=False))

    async def imds_token(self, request: web.Request) -> web.Response:
        ttl = request.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "")
        if not ttl.isdigit():
            return web.Response(status=400)
        echoed = {} if "imds_ttl_not_echoed" in self.faults else {
            "X-aws-ec2-metadata-token-ttl-seconds": ttl}  # fmt: skip
        return web.Response(text="session-token", headers=echoed)

    def _session_ok(self, request: web.Request) -> bool:
        if "imds_no_session_needed" in self.faults:
            return True
        return request.headers.get("X-aws-ec2-metadata-token") == "session-token"

    async def role_list(self, request: web.Request) -> web.Response:
        if not self._session_ok(request):
            return web.Response(status=401)
        if request.match_info["kind"].endswith("-extended") and "imds_no_extended" in self.faults:
            return web.Response(status=404, text="Not Found")
        newline = "\n" if "imds_role_trailing_newline" in self.faults else ""
        return web.Response(text=ROLE + newline)

    async def role(self, request: web.Request) -> web.Response:
        if not self._session_ok(request):
            return web.Response(status=401)
        if request.match_info["role"] != ROLE:
            return web.Response(status=404, text="Not Found")
        extended = request.match_info["kind"].endswith("-extended")
        if extended and "imds_no_extended" in self.faults:
            return web.Response(status=404, text="Not Found")
        return self._aws_json(self._aws_body(imds=True, extended=extended))

    # GCP -------------------------------------------------------------------------------------

    def _flavor(self) -> dict[str, str]:
        return {} if "gcp_no_response_flavor" in self.faults else FLAVOR

    def _refused(self, request: web.Request) -> web.Response | None:
        if "gcp_flavor_not_checked" in self.faults:
            return None
        if request.headers.get("Metadata-Flavor") == "Google":
            return None
        return web.Response(status=403, text="Missing Metadata-Flavor\n", headers=self._flavor())

    async def ping(self, request: web.Request) -> web.Response:
        return web.Response(text="", headers=self._flavor())

    async def gcp_token(self, request: web.Request) -> web.Response:
        refused = self._refused(request)
        if refused:
            return refused
        expires_in: object = self.lifetime
        if "gcp_expires_in_string" in self.faults:
            expires_in = str(self.lifetime)
        token_type = "bearer" if "gcp_token_type_lowercase" in self.faults else "Bearer"
        body = {"access_token": GCP_ACCESS_TOKEN, "expires_in": expires_in,
                "token_type": token_type}  # fmt: skip
        return web.json_response(body, headers=self._flavor())

    async def email(self, request: web.Request) -> web.Response:
        return self._refused(request) or web.Response(
            text=self.account_email, headers=self._flavor()
        )

    async def account(self, request: web.Request) -> web.Response:
        body = {"aliases": ["default"], "email": self.account_email,
                "scopes": ["https://www.googleapis.com/auth/cloud-platform"]}  # fmt: skip
        return self._refused(request) or web.json_response(body, headers=self._flavor())

    async def identity(self, request: web.Request) -> web.Response:
        refused = self._refused(request)
        if refused:
            return refused
        audience = request.query.get("audience", "")
        if "gcp_id_token_wrong_aud" in self.faults:
            audience = "https://someone-else.example"
        token = unsigned_jwt({"aud": audience, "email": EMAIL, "exp": int(time.time()) + 3600})
        return web.Response(text=token, headers=self._flavor())

    async def project(self, request: web.Request) -> web.Response:
        return self._refused(request) or web.Response(text="sandbox-project",
                                                      headers=self._flavor())  # fmt: skip

    async def subject_token(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != CONTAINER_SECRET:
            return web.json_response({"error": "unauthorized"}, status=401)
        token = unsigned_jwt({"sub": "alice", "exp": int(time.time()) + 600})
        return web.json_response({"subject_token": token, "expires_in": 600})

    # Azure -----------------------------------------------------------------------------------

    def _azure_body(self, resource: str) -> dict[str, object]:
        claims: dict[str, object] = {"appid": CLIENT_ID, "exp": int(time.time()) + self.lifetime}
        if "azure_no_tid" not in self.faults:
            claims["tid"] = TENANT
        body: dict[str, object] = {
            "access_token": unsigned_jwt(claims),
            "expires_on": str(int(time.time()) + self.lifetime),
            "expires_in": self.lifetime,
            "resource": resource,
            "token_type": "Bearer",
            "client_id": CLIENT_ID,
        }
        if "azure_no_expires_on" in self.faults:
            del body["expires_on"]
        if "azure_expires_on_number" in self.faults:
            body["expires_on"] = int(time.time()) + self.lifetime
        return body

    async def app_service(self, request: web.Request) -> web.Response:
        if ("azure_header_not_enforced" not in self.faults
                and request.headers.get("X-IDENTITY-HEADER") != IDENTITY_HEADER):  # fmt: skip
            return web.json_response({"error": "unauthorized"}, status=401)
        return web.json_response(self._azure_body(request.query.get("resource", "")))

    async def azure_imds(self, request: web.Request) -> web.Response:
        if request.headers.get("Metadata") != "true":
            if "azure_imds_probe_unanswered" in self.faults:
                return web.Response(status=404, text="Not Found")
            return web.json_response({"error": "invalid_request"}, status=400)
        return web.json_response(self._azure_body(request.query.get("resource", "")))
