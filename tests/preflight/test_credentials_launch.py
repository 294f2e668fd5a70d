"""Credentials before launch: the launch token's grants, exchanged in-process as the sidecar
would (the full exchange against the real issuer and sandbox: tests/e2e/test_preflight.py)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from credsidecar.config import SidecarConfig
from credsidecar.errors import Forbidden
from credsidecar.launch import read_claims
from credsidecar.preflight.credentials import LaunchCredentials

ROLE = "arn:aws:iam::123456789012:role/"
AUDIENCE = "//iam.googleapis.com/projects/0/locations/global/workloadIdentityPools/p/providers/x"
IDENTITIES = {
    "aws": [{"name": "genomics-readonly", "role_arn": ROLE + "genomics-readonly"},
            {"name": "alice-data", "role_arn": ROLE + "alice-data"}],
    "gcp": [{"name": "alice", "audience": AUDIENCE,
             "service_account": "alice@p.iam.gserviceaccount.com"}],
    "azure": [{"name": "genomics-pipelines", "tenant_id": "t",
               "client_id": "00000000-0000-4000-8000-0000000000a1"},
              {"name": "alice", "tenant_id": "t",
               "client_id": "00000000-0000-4000-8000-0000000000a2"}],
}  # fmt: skip
REVOKED = "user alice (run r1) may not use this launch token: the run 'r1' was revoked"


def _part(value: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


def launch_token(issuer: str) -> str:
    claims = {"iss": issuer, "sub": "alice", "user": "alice", "run": "r1",
              "identities": IDENTITIES}  # fmt: skip
    return f"{_part({'alg': 'RS256'})}.{_part(claims)}.c2ln"


def credentials(issuer: str, session: aiohttp.ClientSession, tmp_path: Path) -> LaunchCredentials:
    token = launch_token(issuer)
    config = SidecarConfig(token_file=tmp_path / "token", aws_sts_endpoint="http://127.0.0.1:9")
    return LaunchCredentials(token, read_claims(token), config, session)


async def test_the_default_identity_is_the_launch_tokens_first_and_the_rest_are_others(
    tmp_path: Path,
) -> None:
    async with aiohttp.ClientSession() as session:
        source = credentials("http://127.0.0.1:9", session, tmp_path)
        default = source.default("aws")
        others = await source.others("aws")
    assert default is not None and (default.name, default.label) == (
        "genomics-readonly", ROLE + "genomics-readonly")  # fmt: skip
    assert [(o.name, o.default) for o in others] == [("alice-data", False)]
    assert '`"identities": {"aws": ["alice-data"]}` in the launch request' in others[0].select
    assert "--aws-identity alice-data" in others[0].select
    assert source.user == "alice" and source.run == "r1"
    assert "user alice (run r1)" in source.where


async def test_labels_are_the_service_account_and_the_azure_client_id(tmp_path: Path) -> None:
    async with aiohttp.ClientSession() as session:
        source = credentials("http://127.0.0.1:9", session, tmp_path)
        gcp, azure = source.default("gcp"), source.default("azure")
        azure_others = await source.others("azure")
    assert gcp is not None and gcp.label == "alice@p.iam.gserviceaccount.com"
    assert azure is not None and azure.label == "00000000-0000-4000-8000-0000000000a1"
    assert "client_id=00000000-0000-4000-8000-0000000000a2" in azure_others[0].select
    assert source.default("hpc") is None


@pytest.fixture
async def refusing_issuer() -> Any:
    async def token(request: web.Request) -> web.Response:
        form = await request.post()
        assert form["resource"] == "urn:credsidecar:identity:aws:genomics-readonly"
        body = {"error": "access_denied", "error_description": REVOKED}
        return web.json_response(body, status=403)

    app = web.Application()
    app.add_routes([web.post("/v1/token", token)])
    server = TestServer(app)
    await server.start_server()
    yield server
    await server.close()


async def test_an_issuer_refusal_is_the_cause_of_no_credentials(
    refusing_issuer: TestServer, tmp_path: Path
) -> None:
    issuer = str(refusing_issuer.make_url("")).rstrip("/")
    async with aiohttp.ClientSession() as session:
        source = credentials(issuer, session, tmp_path)
        default = source.default("aws")
        assert default is not None
        with pytest.raises(Forbidden, match="the run 'r1' was revoked"):
            await source.obtain(default)
