"""The real sidecar serving GCP: unmodified google-auth, google-cloud-storage and ID tokens.

Issuer, sandbox and sidecar are separate processes; clients get only what `credsidecar env`
prints. The sandbox's STS validates the issuer's token like Google's, its IAM Credentials API
lets each user's principal impersonate only their own service account, and its storage enforces
per-service-account bucket permissions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.test_aws_sidecar import _status
from tests.support.processes import reaped, spawn, wait_for
from tests.support.stack import IssuerProcess, SandboxProcess, SidecarProcess, run_client
from tests.support.timing import scaled

GOOGLE_CLIENT = [sys.executable, str(Path(__file__).parent / "clients" / "google_clients.py")]
V1 = "/computeMetadata/v1"


_runs = iter(range(1_000_000))


def gcp_sidecar(
    stack: tuple[IssuerProcess, SandboxProcess], directory: Path, user: str, *extra: str
) -> SidecarProcess:
    issuer, sandbox = stack
    token = issuer.mint(user, f"gcp-{os.getpid()}-{next(_runs)}")["token"]
    return SidecarProcess(directory, token, sandbox, *extra, cloud="gcp")


def served_access_tokens(sidecar: SidecarProcess) -> list[dict[str, object]]:
    """One audit event per access token generation first handed to a client, per scope set."""
    return [e for e in sidecar.audit_events("credentials.served") if e["kind"] == "access_token"]


@pytest.mark.parametrize("user", ["alice", "bob"])
def test_google_clients_act_as_the_user(
    stack: tuple[IssuerProcess, SandboxProcess], tmp_path: Path, user: str
) -> None:
    sidecar = gcp_sidecar(stack, tmp_path / user, user)
    certs = stack[1].info["gcp"]["id_token_certs_url"]
    try:
        done = run_client([*GOOGLE_CLIENT, user, certs], sidecar.env)
    finally:
        sidecar.stop()
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    email = f"{user}@sandbox-project.iam.gserviceaccount.com"
    assert result["credentials"] == "google.auth.compute_engine.credentials.Credentials"
    assert result["email"] == email and result["project"] == "sandbox-project"
    assert (result["list_own"], result["write_own"]) == ("ok", "ok")
    assert result["read_shared"].startswith(">chr1")
    assert (result["list_other"], result["write_shared"]) == ("Forbidden", "Forbidden")
    assert result["id_token_email"] == email  # verified against the sandbox's Google keys
    scopes = {e["key"] for e in sidecar.audit_events("credentials.obtained")
              if e["kind"] == "access_token"}  # fmt: skip
    assert "https://www.googleapis.com/auth/cloud-platform" in scopes
    assert len(scopes) >= 2, "the storage client's scope set is cached separately"


def test_renewal_across_several_lifetimes_is_invisible_to_clients(
    stack: tuple[IssuerProcess, SandboxProcess], tmp_path: Path
) -> None:
    sidecar = gcp_sidecar(stack, tmp_path / "renew", "alice", "--gcp-lifetime", "10")
    try:
        done = run_client([*GOOGLE_CLIENT, "loop", "25"], sidecar.env)
    finally:
        sidecar.stop()
    result = json.loads(done.stdout)
    assert result["errors"] == [], done.stderr
    obtained = [e for e in sidecar.audit_events("credentials.obtained")
                if e["kind"] == "access_token"]  # fmt: skip
    assert len(obtained) >= 6, "two scope sets renewed every ~5 s for 25 s"
    assert len(served_access_tokens(sidecar)) >= 3, "the client used several generations"


def test_every_guard_on_the_running_daemon(
    stack: tuple[IssuerProcess, SandboxProcess], tmp_path: Path
) -> None:
    sidecar = gcp_sidecar(stack, tmp_path / "guards", "alice")
    try:
        base = f"http://{sidecar.env['GCE_METADATA_HOST']}"
        host = {"Host": sidecar.env["GCE_METADATA_HOST"]}
        flavor = {"Metadata-Flavor": "Google"}
        token = f"{base}{V1}/instance/service-accounts/default/token"
        assert _status("GET", f"{base}/", host) == 200
        assert _status("GET", token, {**host, **flavor}) == 200
        assert _status("GET", token, host) == 403
        assert _status("GET", token, {**host, **flavor, "X-Forwarded-For": "10.0.0.1"}) == 403
        assert _status("GET", token, {**flavor, "Host": "metadata.attacker.example"}) == 403
        assert _status("GET", token, {**host, **flavor, "Referer": "http://a.example/"}) == 403
        bob = "bob@sandbox-project.iam.gserviceaccount.com"
        other = f"{base}{V1}/instance/service-accounts/{bob}/token"
        assert _status("GET", other, {**host, **flavor}) == 404
    finally:
        sidecar.stop()
    refused = {e["reason"] for e in sidecar.audit_events("request.refused")}
    assert "unexpected Host header (possible DNS rebinding)" in refused


def test_sts_outage_shorter_than_validity_causes_no_client_error(
    stack: tuple[IssuerProcess, SandboxProcess], tmp_path: Path
) -> None:
    """20 s tokens renewed at ~10 s. Once the client holds its token, Google's STS is down
    until the renewal of that token has met the outage (logged), then back while it is valid:
    events decide when, not sleeps."""
    sandbox = stack[1]
    lifetime = 20
    sts = sandbox.info["gcp"]["sts_url"].removesuffix("/v1/token")
    sidecar = gcp_sidecar(stack, tmp_path / "outage", "alice", "--gcp-lifetime", str(lifetime))
    try:
        with reaped(spawn([*GOOGLE_CLIENT, "loop", "20"], env=sidecar.env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)) as client:  # fmt: skip
            wait_for(lambda: served_access_tokens(sidecar), "the client's first token",
                     sidecar.proc, sidecar.log)  # fmt: skip
            scopes = str(served_access_tokens(sidecar)[0]["key"]).split(",")
            sandbox.outage(lifetime, base=sts)  # bounded, should the test fail meanwhile
            try:
                wait_for(lambda: sidecar.log_has("renewing GCP", *scopes),
                         "the client's token renewal to meet the outage",
                         sidecar.proc, sidecar.log)  # fmt: skip
            finally:
                sandbox.outage(0, base=sts)
            out, err = client.communicate(timeout=scaled(90))
    finally:
        sidecar.stop()
    assert json.loads(out)["errors"] == [], err
