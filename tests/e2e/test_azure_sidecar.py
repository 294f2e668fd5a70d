"""The real sidecar serving Azure: unmodified azure-identity and azure-storage-blob.

Issuer, sandbox and sidecar are separate processes; clients get only what `credsidecar env`
prints (plus the Blob account URL, which no variable carries). The sandbox's Entra stand-in
validates the issuer's token as a client assertion against each managed identity's federated
credentials; its Blob storage enforces per-identity container roles. Entra tokens here live
12 s, so every test also crosses renewals.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys
import urllib.parse
from pathlib import Path
from typing import Any

import jwt
import pytest

from credsidecar.sandbox.seed import AZURE_IDENTITIES
from tests.e2e.test_aws_sidecar import _status
from tests.support.processes import reaped, spawn, wait_for
from tests.support.stack import IssuerProcess, SandboxProcess, SidecarProcess, run_client
from tests.support.timing import scaled

AZURE_CLIENT = [sys.executable, str(Path(__file__).parent / "clients" / "azure_clients.py")]
IDENTITY = {i.name: i for i in AZURE_IDENTITIES}
LIFETIME = 12
SANDBOX_ARGS = ("--azure-token-lifetime", str(LIFETIME))  # read by conftest's stack fixture

_runs = iter(range(1_000_000))


def azure_sidecar(
    stack: tuple[IssuerProcess, SandboxProcess],
    directory: Path,
    user: str,
    *extra: str,
    run: str | None = None,
) -> SidecarProcess:
    issuer, sandbox = stack
    token = issuer.mint(user, run or f"azure-{os.getpid()}-{next(_runs)}")["token"]
    return SidecarProcess(directory, token, sandbox, *extra, cloud="azure")


def served(sidecar: SidecarProcess, resource: str) -> list[dict[str, Any]]:
    """One audit event per token generation for `resource` first handed to a client."""
    return [e for e in sidecar.audit_events("credentials.served") if e["resource"] == resource]


def client_args(sandbox: SandboxProcess, user: str, *client_ids: str) -> list[str]:
    azure = sandbox.info["azure"]
    keys = f"{azure['authority_url']}/{azure['tenant_id']}/discovery/v2.0/keys"
    return [*AZURE_CLIENT, user, azure["blob_url"], keys, *client_ids]


@pytest.mark.parametrize("user", ["alice", "bob"])
def test_azure_clients_act_as_the_user(
    stack: tuple[IssuerProcess, SandboxProcess], tmp_path: Path, user: str
) -> None:
    sandbox = stack[1]
    shared, other = IDENTITY["genomics-pipelines"], IDENTITY["bob" if user == "alice" else "alice"]
    sidecar = azure_sidecar(stack, tmp_path / user, user)
    try:
        done = run_client(
            client_args(sandbox, user, shared.client_id, other.client_id), sidecar.env
        )
    finally:
        sidecar.stop()
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    mine = IDENTITY[user]
    tenant = sandbox.info["azure"]["tenant_id"]
    expected = {
        "oid": mine.object_id,
        "appid": mine.client_id,
        "tid": tenant,
        "aud": "https://storage.azure.com",
    }
    assert result["managed_identity"] == expected  # verified against the Entra stand-in's keys
    assert result["default_credential"] == expected
    assert result["write_own"] == "ok" and "hello.txt" in result["list_own"]
    assert result["read_shared"].startswith(">chr1")
    assert result["list_other"] == "AuthorizationPermissionMismatch"
    assert result["write_shared"] == "AuthorizationPermissionMismatch"
    # A second identity the launch grants (the workspace's), selected by client id ...
    assert result["selected"][shared.client_id]["appid"] == shared.client_id
    assert result["selected"][shared.client_id]["oid"] == shared.object_id
    # ... and one it does not, refused with a message the SDK shows.
    refused = result["selected"][other.client_id]["error"]
    assert f"identity '{other.client_id}' is not granted" in refused
    assert mine.client_id in refused and shared.client_id in refused
    obtained = sidecar.audit_events("credentials.obtained")
    resources = {(e["identity"], e["resource"]) for e in obtained}
    assert (user, "https://storage.azure.com") in resources
    assert ("genomics-pipelines", "https://storage.azure.com") in resources


def test_renewal_across_several_lifetimes_is_invisible_to_clients(
    stack: tuple[IssuerProcess, SandboxProcess], tmp_path: Path
) -> None:
    sandbox = stack[1]
    sidecar = azure_sidecar(stack, tmp_path / "renew", "alice")
    try:
        done = run_client(
            [*AZURE_CLIENT, "loop", sandbox.info["azure"]["blob_url"], "30"], sidecar.env
        )
    finally:
        sidecar.stop()
    result = json.loads(done.stdout)
    assert result["errors"] == [], done.stderr
    assert len(served(sidecar, "https://storage.azure.com")) >= 3, "several generations used"
    storage = [
        e
        for e in sidecar.audit_events("credentials.obtained")
        if e["resource"] == "https://storage.azure.com"
    ]
    assert len(storage) >= 4, f"12 s tokens renewed at ~6 s for 30 s: {storage}"
    expiries = [e["expiry"] for e in storage]
    assert expiries == sorted(expiries) and len(set(expiries)) == len(expiries)


def test_entra_outage_shorter_than_validity_causes_no_client_error(
    stack: tuple[IssuerProcess, SandboxProcess], tmp_path: Path
) -> None:
    """12 s tokens renewed at ~6 s. Once the client holds its storage token, Entra is down
    until that token's renewal has met the outage (logged), then back while it is valid:
    events decide when, not sleeps."""
    sandbox = stack[1]
    authority = sandbox.info["azure"]["authority_url"]
    storage = "https://storage.azure.com"
    sidecar = azure_sidecar(stack, tmp_path / "outage", "alice")
    try:
        with reaped(
            spawn(
                [*AZURE_CLIENT, "loop", sandbox.info["azure"]["blob_url"], "20"],
                env=sidecar.env,
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        ) as client:
            wait_for(lambda: served(sidecar, storage), "the client's first token",
                     sidecar.proc, sidecar.log)  # fmt: skip
            sandbox.outage(LIFETIME, base=authority)  # bounded, should the test fail meanwhile
            try:
                wait_for(lambda: sidecar.log_has("renewing Azure", f"'{storage}'"),
                         "the storage token's renewal to meet the outage",
                         sidecar.proc, sidecar.log)  # fmt: skip
            finally:
                sandbox.outage(0, base=authority)
            out, err = client.communicate(timeout=scaled(90))
    finally:
        sidecar.stop()
    assert json.loads(out)["errors"] == [], err


def test_every_guard_on_the_running_daemon(
    stack: tuple[IssuerProcess, SandboxProcess], tmp_path: Path
) -> None:
    sidecar = azure_sidecar(stack, tmp_path / "guards", "alice")
    try:
        endpoint = sidecar.env["IDENTITY_ENDPOINT"]
        query = "?api-version=2019-08-01&resource=https://storage.azure.com"
        app_service = f"{endpoint}{query}"
        imds = f"{sidecar.env['AZURE_POD_IDENTITY_AUTHORITY_HOST']}/metadata/identity/oauth2/token"
        host = {"Host": urllib.parse.urlsplit(endpoint).netloc}
        secret = {**host, "X-IDENTITY-HEADER": sidecar.env["IDENTITY_HEADER"]}
        assert _status("GET", app_service, secret) == 200
        assert _status("GET", app_service, host) == 401
        assert _status("GET", app_service, {**host, "X-IDENTITY-HEADER": "guess"}) == 401
        assert _status("GET", f"{imds}{query}", {**host, "Metadata": "true"}) == 200
        assert _status("GET", f"{imds}{query}", host) == 400  # no Metadata header
        assert _status("GET", app_service, {**secret, "X-Forwarded-For": "10.0.0.1"}) == 403
        assert _status("GET", app_service, {**secret, "Host": "rebind.attacker.example"}) == 403
        assert _status("GET", app_service, {**secret, "Origin": "http://a.example"}) == 403
        assert _status("GET", app_service, {**secret, "Sec-Fetch-Mode": "no-cors"}) == 403
        assert _status("GET", app_service.replace("resource=", "x="), secret) == 400
    finally:
        sidecar.stop()
    refused = {e["reason"] for e in sidecar.audit_events("request.refused")}
    assert "unexpected Host header (possible DNS rebinding)" in refused
    assert "missing or wrong X-IDENTITY-HEADER" in refused
    assert sidecar.env["IDENTITY_HEADER"] not in sidecar.audit.read_text()
    assert sidecar.env["IDENTITY_HEADER"] not in sidecar.log.read_text()


def test_revoked_run_is_refused_once_the_token_in_hand_expires(
    stack: tuple[IssuerProcess, SandboxProcess], tmp_path: Path
) -> None:
    issuer, sandbox = stack
    run = f"azure-revoked-{os.getpid()}"
    sidecar = azure_sidecar(stack, tmp_path / "revoked", "alice", run=run)
    try:
        status, _ = issuer.post(f"/v1/runs/{run}/revoke", {"reason": "security review"})
        assert status == 200

        def refused() -> Any:
            done = run_client(client_args(sandbox, "alice"), sidecar.env)
            return done.returncode != 0 and "revoked" in done.stderr and done

        wait_for(refused, "the sidecar to refuse the revoked run", sidecar.proc, timeout=40)
        done = refused()
        assert f"run '{run}'" in done.stderr  # the SDK's message names the run
    finally:
        sidecar.stop()
    assert len(sidecar.audit_events("credentials.obtained")) >= 1


NODE_CLIENTS = Path(__file__).parent / "clients" / "node"


def test_the_javascript_sdk_acts_as_the_user(
    stack: tuple[IssuerProcess, SandboxProcess], tmp_path: Path
) -> None:
    """@azure/identity (ManagedIdentityCredential, DefaultAzureCredential) and
    @azure/storage-blob in Node, trusting the sandbox CA through NODE_EXTRA_CA_CERTS."""
    node = shutil.which("node")
    if node is None or not (NODE_CLIENTS / "node_modules" / "@azure" / "identity").exists():
        pytest.fail(f"node and `npm ci --prefix {NODE_CLIENTS}` are needed (./scripts/test)")
    sandbox = stack[1]
    sidecar = azure_sidecar(stack, tmp_path / "node", "bob")
    try:
        done = run_client(
            [
                node,
                str(NODE_CLIENTS / "azure_clients.mjs"),
                "bob",
                sandbox.info["azure"]["blob_url"],
            ],
            sidecar.env,
        )
    finally:
        sidecar.stop()
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    bob = IDENTITY["bob"]
    assert result["claims"] == {"oid": bob.object_id, "appid": bob.client_id}
    assert result["write_own"] == "ok" and "from-node.txt" in result["list_own"]
    assert result["read_shared"].startswith(">chr1")
    assert result["list_other"] == "AuthorizationPermissionMismatch"
    assert result["write_shared"] == "AuthorizationPermissionMismatch"
    # Node's MSAL also prefers the App Service contract when IDENTITY_ENDPOINT is set.
    served = {e["path"] for e in sidecar.audit_events("credentials.served")}
    assert served == {"/msi/token"}


# The az CLI lives in its own virtual environment (it pins its own azure-* packages); the
# README's test command installs it there.
AZ = Path(os.environ.get("CREDSIDECAR_TEST_AZ", Path(__file__).parents[2] / ".venv-az/bin/az"))
# Tests stay offline: no telemetry upload from the az CLI.
AZ_OFFLINE = {"AZURE_CORE_COLLECT_TELEMETRY": "false", "AZURE_CORE_SURVEY_MESSAGE": "false"}


def az(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    if not AZ.exists():
        pytest.fail(f"the az CLI is not installed at {AZ}: run ./scripts/test, which installs it")
    return run_client([str(AZ), *args, "--only-show-errors"], {**env, **AZ_OFFLINE})


def token_claims(sandbox: SandboxProcess, token: str, audience: str) -> dict[str, Any]:
    azure = sandbox.info["azure"]
    keys = f"{azure['authority_url']}/{azure['tenant_id']}/discovery/v2.0/keys"
    context = ssl.create_default_context(cafile=azure["ca_file"])
    client = jwt.PyJWKClient(keys, ssl_context=context)
    key = client.get_signing_key_from_jwt(token)
    # The resource as the client spelled it, with or without the trailing slash.
    audiences = [audience.rstrip("/"), audience.rstrip("/") + "/"]
    return dict(jwt.decode(token, key.key, algorithms=["RS256"], audience=audiences))


def test_az_cli_logs_in_with_the_managed_identity(
    stack: tuple[IssuerProcess, SandboxProcess], tmp_path: Path
) -> None:
    """`az login --identity` as alice's identity and as the workspace's, by client id; the
    sandbox's cloud (ARM_CLOUD_METADATA_URL) lists the subscription alice's identity sees."""
    sandbox = stack[1]
    azure = sandbox.info["azure"]
    alice, shared, bob = IDENTITY["alice"], IDENTITY["genomics-pipelines"], IDENTITY["bob"]
    sidecar = azure_sidecar(stack, tmp_path / "az", "alice")
    upload = tmp_path / "from-az.txt"
    upload.write_text("written by az\n")
    blob = ["--blob-endpoint", azure["blob_url"], "--auth-mode", "login", "-o", "json"]
    try:
        env = sidecar.env
        login = az(env, "login", "--identity", "-o", "json")
        assert login.returncode == 0, login.stderr
        [account] = json.loads(login.stdout)
        assert account["tenantId"] == azure["tenant_id"]
        assert account["environmentName"] == azure["az_cloud"]
        assert account["user"] == {
            "assignedIdentityInfo": "MSI",
            "name": "systemAssignedIdentity",
            "type": "servicePrincipal",
        }
        got = az(
            env,
            "account",
            "get-access-token",
            "--resource",
            "https://storage.azure.com",
            "-o",
            "json",
        )
        assert got.returncode == 0, got.stderr
        token = json.loads(got.stdout)
        claims = token_claims(sandbox, token["accessToken"], "https://storage.azure.com")
        assert (claims["oid"], claims["appid"]) == (alice.object_id, alice.client_id)
        assert int(token["expires_on"]) == claims["exp"]
        put = az(
            env,
            "storage",
            "blob",
            "upload",
            "--container-name",
            "alice-data",
            "--name",
            "from-az.txt",
            "--file",
            str(upload),
            "--overwrite",
            *blob,
        )
        assert put.returncode == 0, put.stderr
        listed = az(env, "storage", "blob", "list", "--container-name", "alice-data", *blob)
        assert "from-az.txt" in [b["name"] for b in json.loads(listed.stdout)]
        theirs = az(env, "storage", "blob", "list", "--container-name", "bob-data", *blob)
        assert theirs.returncode != 0 and "required permissions" in theirs.stderr
        # The workspace's identity, which the launch also grants, selected by client id.
        second = az(env, "login", "--identity", "--client-id", shared.client_id, "-o", "json")
        assert second.returncode == 0, second.stderr
        assert json.loads(second.stdout)[0]["user"]["assignedIdentityInfo"] == (
            f"MSIClient-{shared.client_id}"
        )
        got = az(
            env,
            "account",
            "get-access-token",
            "--resource",
            "https://management.azure.com/",
            "-o",
            "json",
        )
        claims = token_claims(
            sandbox, json.loads(got.stdout)["accessToken"], "https://management.azure.com/"
        )
        assert claims["appid"] == shared.client_id
        # bob's identity is not granted to alice's launch: refused, and the CLI says why.
        refused = az(env, "login", "--identity", "--client-id", bob.client_id)
        assert refused.returncode != 0
        assert f"identity '{bob.client_id}' is not granted to this launch" in refused.stderr
    finally:
        sidecar.stop()
