"""Credentials inside the job: only the job environment, through the sidecar's endpoints, and
the sidecar's cause when it has none to give. A small fake sidecar speaks the contracts."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from credsidecar.endpoints.gcp_external import (
    SUBJECT_TOKEN_FIELD,
    SUBJECT_TOKEN_PATH,
    external_account_config,
)
from credsidecar.errors import CredsidecarError
from credsidecar.preflight.credentials import AZURE_STORAGE, JobCredentials
from credsidecar.preflight.model import Outcome
from credsidecar.preflight.run import Preflight
from tests.preflight.fakes import table_check, target

SECRET = "container-secret"
A1, A2 = "00000000-0000-4000-8000-0000000000a1", "00000000-0000-4000-8000-0000000000a2"
EMAIL = "alice@sandbox-project.iam.gserviceaccount.com"
# What the sidecar has when its credentials ran out and renewal was refused (errors.py's body).
REVOKED = "user alice (run r1) may not assume arn:aws:iam::123456789012:role/alice-data: the run 'r1' was revoked"  # noqa: E501


def fake_sidecar(refuse: bool = False) -> web.Application:
    async def aws(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != SECRET:
            return web.json_response({"error": "unauthorized"}, status=401)
        if refuse:
            body = {"error": "access_denied", "error_description": REVOKED}
            return web.json_response(body, status=403)
        return web.json_response({"AccessKeyId": "AKIA", "SecretAccessKey": "s", "Token": "t",
                                  "Expiration": "2030-01-01T00:00:00Z",
                                  "AccountId": "123456789012"})  # fmt: skip

    async def imds_token(request: web.Request) -> web.Response:
        return web.Response(text="session")

    async def roles(request: web.Request) -> web.Response:
        ok = request.headers.get("X-aws-ec2-metadata-token") == "session"
        return web.Response(text="alice-data") if ok else web.Response(status=401)

    def flavored(text: str) -> Callable[[web.Request], object]:
        async def handler(request: web.Request) -> web.Response:
            if request.headers.get("Metadata-Flavor") != "Google":
                return web.Response(status=403)
            return web.Response(text=text)

        return handler

    async def azure(request: web.Request) -> web.Response:
        assert request.query["resource"] == AZURE_STORAGE
        if request.headers.get("X-IDENTITY-HEADER") != SECRET:
            return web.json_response({"error": "unauthorized"}, status=401)
        client = request.query.get("client_id", A1)
        if client not in (A1, A2):
            # endpoints/azure.py's answer to an identity it does not serve
            why = (f"identity {client!r} is not granted to this launch; granted: "
                   f"genomics-pipelines ({A1}), alice ({A2})")  # fmt: skip
            granted = [{"name": "genomics-pipelines", "client_id": A1},
                       {"name": "alice", "client_id": A2}]  # fmt: skip
            return web.json_response({"error": "invalid_request", "error_description": why,
                                      "granted_identities": granted}, status=400)  # fmt: skip
        return web.json_response({"access_token": f"token-{client}", "client_id": client})

    sa = "/computeMetadata/v1/instance/service-accounts/default"
    app = web.Application()
    app.add_routes([
        web.get("/v1/credentials/aws", aws),
        web.put("/latest/api/token", imds_token),
        web.get("/latest/meta-data/iam/security-credentials/", roles),
        web.get(f"{sa}/token", flavored(json.dumps({"access_token": "gcp-token",
                                                    "expires_in": 3600}))),
        web.get(f"{sa}/email", flavored(EMAIL)),
        web.get("/msi/token", azure),
    ])  # fmt: skip
    return app


def job_env(url: str, token_file: Path) -> dict[str, str]:
    """What `credsidecar env` exports for a sidecar at `url` (the parts preflight reads)."""
    token_file.write_text(SECRET)
    return {
        "CREDSIDECAR_URL": url,
        "AWS_CONTAINER_CREDENTIALS_FULL_URI": f"{url}/v1/credentials/aws",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": str(token_file),
        "AWS_EC2_METADATA_SERVICE_ENDPOINT": url,
        "GCE_METADATA_HOST": url.removeprefix("http://"),
        "IDENTITY_ENDPOINT": f"{url}/msi/token",
        "IDENTITY_HEADER": SECRET,
    }


@pytest.fixture
async def sidecar(request: pytest.FixtureRequest) -> object:
    server = TestServer(fake_sidecar(refuse=getattr(request, "param", False)))
    await server.start_server()
    yield server
    await server.close()


def _url(server: TestServer) -> str:
    return str(server.make_url("")).rstrip("/")


async def test_aws_credentials_and_the_role_arn_come_from_the_job_endpoints(
    sidecar: TestServer, tmp_path: Path
) -> None:
    async with aiohttp.ClientSession() as session:
        source = JobCredentials(job_env(_url(sidecar), tmp_path / "secret"), session)
        identity = source.default("aws")
        assert identity is not None
        got = await source.obtain(identity)
    assert got.aws is not None and got.aws.access_key_id == "AKIA"
    assert got.identity.label == "arn:aws:iam::123456789012:role/alice-data"
    assert source.user is None  # the endpoints do not say who launched the run


@pytest.mark.parametrize("sidecar", [True], indirect=True)
async def test_the_sidecars_refusal_is_no_credentials_with_its_cause(
    sidecar: TestServer, tmp_path: Path
) -> None:
    async with aiohttp.ClientSession() as session:
        source = JobCredentials(job_env(_url(sidecar), tmp_path / "secret"), session)
        (finding,) = await Preflight(source, {"aws": table_check({})}).run([target("s3://b/")])
    assert finding.verdict.outcome is Outcome.NO_CREDENTIALS
    assert finding.verdict.detail == f"the sidecar answered HTTP 403 for AWS credentials: {REVOKED}"


async def test_the_gcp_token_and_service_account_come_from_the_metadata_server(
    sidecar: TestServer, tmp_path: Path
) -> None:
    async with aiohttp.ClientSession() as session:
        source = JobCredentials(job_env(_url(sidecar), tmp_path / "secret"), session)
        identity = source.default("gcp")
        assert identity is not None
        got = await source.obtain(identity)
    assert (got.token, got.identity.label) == ("gcp-token", EMAIL)


async def test_azure_other_identities_are_the_ones_the_sidecar_says_it_grants(
    sidecar: TestServer, tmp_path: Path
) -> None:
    async with aiohttp.ClientSession() as session:
        source = JobCredentials(job_env(_url(sidecar), tmp_path / "secret"), session)
        default = source.default("azure")
        assert default is not None
        got = await source.obtain(default)
        others = await source.others("azure")
        other = await source.obtain(others[1])
    assert got.identity.label == A1
    assert [(i.name, i.label) for i in others] == [("genomics-pipelines", A1), ("alice", A2)]
    assert f"client_id={A2}" in others[1].select
    assert other.token == f"token-{A2}"


async def test_the_job_sees_no_other_aws_or_gcp_identities(
    sidecar: TestServer, tmp_path: Path
) -> None:
    async with aiohttp.ClientSession() as session:
        source = JobCredentials(job_env(_url(sidecar), tmp_path / "secret"), session)
        assert await source.others("aws") == []
        assert await source.others("gcp") == []


async def test_a_cloud_the_job_environment_does_not_name_has_no_default() -> None:
    async with aiohttp.ClientSession() as session:
        source = JobCredentials({"AWS_REGION": "eu-west-1"}, session)
        assert [source.default(c) for c in ("aws", "gcp", "azure")] == [None, None, None]


async def test_a_sidecar_that_does_not_answer_says_to_check_it_is_running(
    tmp_path: Path, unused_tcp_port: int
) -> None:
    env = job_env(f"http://127.0.0.1:{unused_tcp_port}", tmp_path / "secret")
    async with aiohttp.ClientSession() as session:
        source = JobCredentials(env, session)
        identity = source.default("aws")
        assert identity is not None
        with pytest.raises(CredsidecarError, match=r"is the sidecar running\?"):
            await source.obtain(identity)


def external_account_services() -> web.Application:
    """A secret-only sidecar's subject-token endpoint, Google STS and IAM Credentials."""

    async def subject(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != SECRET:
            return web.json_response({"error": "unauthorized"}, status=401)
        return web.json_response({SUBJECT_TOKEN_FIELD: "subject-jwt"})

    async def sts(request: web.Request) -> web.Response:
        form = await request.post()
        assert (form["subject_token"], form["audience"]) == ("subject-jwt", "//pool/provider")
        return web.json_response({"access_token": "federated", "expires_in": 3600})

    async def impersonate(request: web.Request) -> web.Response:
        assert request.match_info["sa"] == EMAIL
        assert request.headers["Authorization"] == "Bearer federated"
        return web.json_response({"accessToken": "sa-token",
                                  "expireTime": "2030-01-01T00:00:00Z"})  # fmt: skip

    app = web.Application()
    app.add_routes([
        web.get(SUBJECT_TOKEN_PATH, subject),
        web.post("/v1/token", sts),
        web.post("/iam/v1/projects/-/serviceAccounts/{sa}:generateAccessToken", impersonate),
    ])  # fmt: skip
    return app


async def test_a_secret_only_jobs_gcp_token_comes_from_its_external_account_file(
    tmp_path: Path,
) -> None:
    server = TestServer(external_account_services())
    await server.start_server()
    url = _url(server)
    document = external_account_config(
        audience="//pool/provider", subject_token_url=f"{url}{SUBJECT_TOKEN_PATH}",
        secret=SECRET, token_url=f"{url}/v1/token",
        impersonation_url=f"{url}/iam/v1/projects/-/serviceAccounts/{EMAIL}:generateAccessToken",
        lifetime=3600,
    )  # fmt: skip
    path = tmp_path / "gcp-external-account.json"
    path.write_text(json.dumps(document))
    try:
        async with aiohttp.ClientSession() as session:
            source = JobCredentials({"GOOGLE_APPLICATION_CREDENTIALS": str(path)}, session)
            identity = source.default("gcp")
            assert identity is not None
            got = await source.obtain(identity)
    finally:
        await server.close()
    assert (got.token, got.identity.label) == ("sa-token", EMAIL)
