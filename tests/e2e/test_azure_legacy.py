"""The real sidecar serving the App Service 2017-09-01 contract (`MSI_ENDPOINT` + `MSI_SECRET`)
beside 2019-08-01 (`IDENTITY_ENDPOINT` + `IDENTITY_HEADER`): newer SDKs keep choosing the newer
contract when both are set, and legacy clients (msrestazure's MSIAuthentication, az 2.45) get
the user's own managed identity through the older one.

The audit's `credentials.served` events name the path each token went out through, one per
token and path: which contract a client used, read from the sidecar itself.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.parse
from pathlib import Path

import pytest

from credsidecar.endpoints.azure import APP_SERVICE_PATH, LEGACY_APP_SERVICE_PATH
from tests.e2e.test_aws_sidecar import _status
from tests.e2e.test_azure_sidecar import AZ_OFFLINE, IDENTITY, azure_sidecar, token_claims
from tests.support.stack import IssuerProcess, SandboxProcess, SidecarProcess, run_client

CLIENTS = str(Path(__file__).parent / "clients" / "azure_legacy_clients.py")
# msrestazure and az 2.45 live in their own environment (they pin old azure-* packages); the
# README's test command (./scripts/test) installs it.
LEGACY = Path(os.environ.get("CREDSIDECAR_TEST_LEGACY",
                             Path(__file__).parents[2] / ".venv-legacy"))  # fmt: skip
STORAGE = "https://storage.azure.com"
NEWER_ONLY = ("IDENTITY_ENDPOINT", "IDENTITY_HEADER", "AZURE_POD_IDENTITY_AUTHORITY_HOST")


def legacy_tool(name: str) -> str:
    tool = LEGACY / "bin" / name
    if not tool.exists():
        pytest.fail(f"{tool} is missing: run ./scripts/test, which installs .venv-legacy")
    return str(tool)


def served_paths(sidecar: SidecarProcess) -> set[str]:
    return {e["path"] for e in sidecar.audit_events("credentials.served")}


def assert_alices(sandbox: SandboxProcess, token: str, audience: str = STORAGE) -> None:
    claims = token_claims(sandbox, token, audience)
    alice = IDENTITY["alice"]
    assert (claims["oid"], claims["appid"]) == (alice.object_id, alice.client_id)


def test_the_job_env_carries_both_contracts_with_one_secret(
    stack: tuple[IssuerProcess, SandboxProcess], tmp_path: Path
) -> None:
    sidecar = azure_sidecar(stack, tmp_path / "env", "alice")
    sidecar.stop()
    env = sidecar.env
    assert env["MSI_ENDPOINT"] == env["CREDSIDECAR_URL"] + LEGACY_APP_SERVICE_PATH
    assert env["IDENTITY_ENDPOINT"] == env["CREDSIDECAR_URL"] + APP_SERVICE_PATH
    assert env["MSI_SECRET"] == env["IDENTITY_HEADER"] and len(env["MSI_SECRET"]) >= 40
    assert env["APPSETTING_WEBSITE_SITE_NAME"] == "credsidecar"


def test_every_guard_on_the_2017_path_and_it_stays_in_secret_only_mode(
    stack: tuple[IssuerProcess, SandboxProcess], tmp_path: Path
) -> None:
    """The 2017 path checks a secret, so --secret-only keeps it (and drops only IMDS)."""
    sidecar = azure_sidecar(stack, tmp_path / "guards", "alice", "--secret-only")
    try:
        url = f"{sidecar.env['MSI_ENDPOINT']}/?resource={STORAGE}/&api-version=2017-09-01"
        host = {"Host": urllib.parse.urlsplit(url).netloc}
        secret = {**host, "secret": sidecar.env["MSI_SECRET"]}
        assert _status("GET", url, secret) == 200
        assert _status("GET", url, host) == 401
        assert _status("GET", url, {**host, "secret": "guess"}) == 401
        assert _status("GET", url, {**host, "X-IDENTITY-HEADER": sidecar.env["MSI_SECRET"]}) == 401
        newer = url.replace("version=2017-09-01", "version=2019-08-01")
        assert _status("GET", newer, secret) == 400
        assert _status("GET", url, {**secret, "X-Forwarded-For": "10.0.0.1"}) == 403
        assert _status("GET", url, {**secret, "Host": "rebind.attacker.example"}) == 403
        assert _status("GET", url, {**secret, "Origin": "http://a.example"}) == 403
        assert _status("POST", url, secret) == 405  # Cloud Shell's POST is not served
    finally:
        sidecar.stop()
    assert "AZURE_POD_IDENTITY_AUTHORITY_HOST" not in sidecar.env
    refused = {e["reason"] for e in sidecar.audit_events("request.refused")}
    assert "missing or wrong secret header" in refused
    assert sidecar.env["MSI_SECRET"] not in sidecar.audit.read_text()
    assert sidecar.env["MSI_SECRET"] not in sidecar.log.read_text()


def test_newer_sdks_keep_the_2019_contract_when_both_are_set(
    stack: tuple[IssuerProcess, SandboxProcess], tmp_path: Path
) -> None:
    sandbox = stack[1]
    sidecar = azure_sidecar(stack, tmp_path / "newer", "alice")
    try:
        done = run_client([sys.executable, CLIENTS, "newer"], sidecar.env)
    finally:
        sidecar.stop()
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    for client in ("managed_identity", "default_credential", "msal"):
        assert_alices(sandbox, result[client])
    assert result["msal_source"] == "APP_SERVICE"
    assert served_paths(sidecar) == {APP_SERVICE_PATH}


def test_newer_sdks_use_the_2017_contract_when_only_it_is_set(
    stack: tuple[IssuerProcess, SandboxProcess], tmp_path: Path
) -> None:
    """azure-identity's and MSAL's 2017-09-01 clients (their "Azure ML" source) parse the
    answer's expires_on and get alice's token."""
    sandbox = stack[1]
    sidecar = azure_sidecar(stack, tmp_path / "only-2017", "alice")
    env = {k: v for k, v in sidecar.env.items() if k not in NEWER_ONLY}
    try:
        done = run_client([sys.executable, CLIENTS, "newer"], env)
    finally:
        sidecar.stop()
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    for client in ("managed_identity", "default_credential", "msal"):
        assert_alices(sandbox, result[client])
    assert result["msal_source"] == "MACHINE_LEARNING"
    assert served_paths(sidecar) == {LEGACY_APP_SERVICE_PATH}


def test_msrestazure_msi_authentication_acts_as_alice(
    stack: tuple[IssuerProcess, SandboxProcess], tmp_path: Path
) -> None:
    """msrestazure's MSIAuthentication, unmodified, with what `credsidecar env` prints: its
    signed session lists alice's container and is refused bob's."""
    sandbox = stack[1]
    azure = sandbox.info["azure"]
    sidecar = azure_sidecar(stack, tmp_path / "msrestazure", "alice")
    args = [legacy_tool("python"), CLIENTS, "msrestazure", azure["blob_url"],
            azure["ca_file"], "alice"]  # fmt: skip
    try:
        done = run_client(args, sidecar.env)
    finally:
        sidecar.stop()
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert_alices(sandbox, result["token"], f"{STORAGE}/")
    assert result["expires_on"].isdigit()
    assert result["list_own"]["status"] == 200
    assert result["list_other"]["status"] == 403
    assert served_paths(sidecar) == {LEGACY_APP_SERVICE_PATH}


def az_legacy(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    done = run_client([legacy_tool("az"), *args, "--only-show-errors"], {**env, **AZ_OFFLINE})
    return done.returncode, done.stdout, done.stderr


def test_az_245_logs_in_with_only_the_2017_contract(
    stack: tuple[IssuerProcess, SandboxProcess], tmp_path: Path
) -> None:
    """Debian 12's az (2.45, msrestazure inside): `az login --identity` with only MSI_ENDPOINT
    and MSI_SECRET reaching it; alice's storage, not bob's; bob's identity refused by name."""
    sandbox = stack[1]
    azure = sandbox.info["azure"]
    bob = IDENTITY["bob"]
    sidecar = azure_sidecar(stack, tmp_path / "az245", "alice")
    env = {k: v for k, v in sidecar.env.items() if k not in NEWER_ONLY}
    blob = ["--blob-endpoint", azure["blob_url"], "--auth-mode", "login", "-o", "json"]
    try:
        status, out, err = az_legacy(env, "login", "--identity", "-o", "json")
        assert status == 0, err
        [account] = json.loads(out)
        assert account["tenantId"] == azure["tenant_id"]
        assert account["environmentName"] == azure["az_cloud"]
        status, out, err = az_legacy(
            env, "account", "get-access-token", "--resource", STORAGE, "-o", "json"
        )
        assert status == 0, err
        assert_alices(sandbox, json.loads(out)["accessToken"])
        status, out, err = az_legacy(
            env, "storage", "blob", "list", "--container-name", "alice-data", *blob
        )
        assert status == 0, err
        status, out, err = az_legacy(
            env, "storage", "blob", "list", "--container-name", "bob-data", *blob
        )
        assert status != 0 and "required permissions" in err
        status, out, err = az_legacy(env, "login", "--identity", "--username", bob.client_id)
        assert status != 0
        assert f"identity '{bob.client_id}' is not granted to this launch" in err
    finally:
        sidecar.stop()
    assert served_paths(sidecar) == {LEGACY_APP_SERVICE_PATH}
