"""`credsidecar serve --secret-only`: every endpoint needs the per-job secret.

For hosts whose loopback other jobs share: AWS only through the container endpoint, Azure only
through IDENTITY_HEADER, GCP through an external-account file that unmodified google-auth and
google-cloud-storage follow to the sandbox's STS and IAM themselves. The metadata routes that
need no secret (IMDSv2, the GCE metadata server, Azure's IMDS path) are not served at all.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from credsidecar.sandbox.seed import AZURE_IDENTITIES
from tests.e2e.test_aws_sidecar import BOTO3_CLIENT, _status
from tests.e2e.test_azure_sidecar import client_args
from tests.support.processes import CLI
from tests.support.stack import IssuerProcess, SandboxProcess, SidecarProcess, run_client
from tests.support.timing import scaled

GOOGLE_EXTERNAL = [sys.executable, str(Path(__file__).parent / "clients" / "google_external.py")]
IDENTITY = {i.name: i for i in AZURE_IDENTITIES}


@pytest.fixture(scope="module")
def alice(
    stack: tuple[IssuerProcess, SandboxProcess], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SidecarProcess]:
    issuer, sandbox = stack
    token = issuer.mint("alice", f"secret-only-{os.getpid()}")["token"]
    directory = tmp_path_factory.mktemp("secret-only")
    sidecar = SidecarProcess(directory, token, sandbox, "--secret-only", cloud="aws,gcp,azure")
    try:
        yield sidecar
    finally:
        sidecar.stop()


def test_job_environment_names_only_secret_endpoints(alice: SidecarProcess) -> None:
    env = alice.env
    assert env["AWS_EC2_METADATA_DISABLED"] == "true"  # no fallback to the host's real IMDS
    assert env["NO_GCE_CHECK"] == "True"
    for name in ("AWS_EC2_METADATA_SERVICE_ENDPOINT", "GCE_METADATA_HOST", "GCE_METADATA_IP",
                 "AZURE_POD_IDENTITY_AUTHORITY_HOST"):  # fmt: skip
        assert name not in env, name
    assert env["IDENTITY_HEADER"] and env["AWS_CONTAINER_AUTHORIZATION_TOKEN"]
    path = Path(env["GOOGLE_APPLICATION_CREDENTIALS"])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    document = json.loads(path.read_text())
    assert document["type"] == "external_account"
    assert document["subject_token_type"] == "urn:ietf:params:oauth:token-type:jwt"
    assert document["credential_source"]["url"].startswith(env["CREDSIDECAR_URL"])
    assert document["service_account_impersonation_url"].endswith(
        "/v1/projects/-/serviceAccounts/alice@sandbox-project.iam.gserviceaccount.com"
        ":generateAccessToken"
    )


def test_google_libraries_act_as_alice_through_the_external_account_file(
    alice: SidecarProcess,
) -> None:
    done = run_client([*GOOGLE_EXTERNAL, "alice"], alice.env)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["credentials"] == "google.auth.identity_pool.Credentials"
    assert result["email"] == "alice@sandbox-project.iam.gserviceaccount.com"
    assert result["project"] == "sandbox-project"
    assert result["list_own"] == "ok"
    assert result["list_other"] == "Forbidden"  # bob's bucket: the sandbox's storage refuses


def test_boto3_acts_as_alice_through_the_container_endpoint(alice: SidecarProcess) -> None:
    done = run_client([*BOTO3_CLIENT, "alice"], alice.env)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["provider"] == "container-role"
    assert result["write_own"] == "ok" and result["list_other"] == "AccessDenied"


def test_azure_identity_acts_as_alice_through_app_service(
    stack: tuple[IssuerProcess, SandboxProcess], alice: SidecarProcess
) -> None:
    done = run_client(client_args(stack[1], "alice"), alice.env)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["managed_identity"]["appid"] == IDENTITY["alice"].client_id
    assert result["write_own"] == "ok"
    assert result["list_other"] == "AuthorizationPermissionMismatch"


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        ("PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "60"}),
        ("GET", "/latest/meta-data/iam/security-credentials/", {}),
        ("GET", "/computeMetadata/v1/instance/service-accounts/default/token",
         {"Metadata-Flavor": "Google"}),
        ("GET", "/", {"Metadata-Flavor": "Google"}),
        ("GET", "/metadata/identity/oauth2/token?api-version=2018-02-01"
         "&resource=https://storage.azure.com", {"Metadata": "true"}),
        # instance metadata: no credential, but the subscription and resource group
        ("GET", "/metadata/instance?api-version=2021-02-01", {"Metadata": "true"}),
        ("GET", "/latest/meta-data/placement/region", {}),
        ("GET", "/computeMetadata/v1/instance/zone", {"Metadata-Flavor": "Google"}),
    ],
)  # fmt: skip
def test_routes_without_a_secret_are_not_served(
    alice: SidecarProcess, method: str, path: str, headers: dict[str, str]
) -> None:
    url = alice.env["CREDSIDECAR_URL"]
    host = url.removeprefix("http://")
    assert _status(method, f"{url}{path}", {"Host": host, **headers}) == 404


def test_subject_token_needs_the_secret(alice: SidecarProcess) -> None:
    url = alice.env["CREDSIDECAR_URL"]
    host = url.removeprefix("http://")
    target = f"{url}/credsidecar/gcp/subject-token"
    assert _status("GET", target, {"Host": host}) == 401
    assert _status("GET", target, {"Host": host, "Authorization": "wrong"}) == 401
    secret = json.loads(Path(alice.env["GOOGLE_APPLICATION_CREDENTIALS"]).read_text())[
        "credential_source"
    ]["headers"]["Authorization"]
    assert _status("GET", target, {"Host": host, "Authorization": secret}) == 200


def test_healthcheck_reports_the_ready_sidecar(alice: SidecarProcess) -> None:
    done = subprocess.run(
        [*CLI, "healthcheck", "--run-dir", str(alice.run_dir)],
        capture_output=True, text=True, timeout=scaled(30), check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
