"""The node's own GCP service account (`source = "node"`), per user: the real issuer, the sandbox
with its node metadata-server stand-in (the node runs as sandbox-node@, which may impersonate
alice's and bob's accounts) and the real sidecar. alice is granted node-alice (the node's
account impersonating alice@), and gets it through the usual metadata-server endpoints; bob is
granted no node identity, and neither the issuer nor the sidecar hands him alice's; the node's
metadata server is asked only for what a launch was granted.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from pathlib import Path
from typing import Any

from credsidecar.launch.grants import identity_urn
from tests.support.stack import IssuerProcess, SandboxProcess, SidecarProcess, run_client
from tests.support.timing import scaled

GOOGLE_CLIENT = [sys.executable, str(Path(__file__).parent / "clients" / "google_clients.py")]
ALICE = "alice@sandbox-project.iam.gserviceaccount.com"


def node_requests(sandbox: SandboxProcess) -> list[dict[str, Any]]:
    """What the node's metadata-server stand-in was asked for so far (its test hook)."""
    url = f"{sandbox.info['gcp']['node_metadata_url']}/_sandbox/requests"
    with urllib.request.urlopen(url, timeout=scaled(10)) as resp:
        found: list[dict[str, Any]] = json.loads(resp.read())
        return found


def test_alice_gets_her_node_identity_through_the_metadata_endpoints(
    stack: tuple[IssuerProcess, SandboxProcess], tmp_path: Path
) -> None:
    """google.auth.default() and google-cloud-storage, unmodified, act as alice@ through the
    node's account: alice's bucket listed and written, bob's refused, an ID token for alice@;
    the sidecar asked the node's metadata server, and IAM impersonated alice@ with its token."""
    issuer, sandbox = stack
    before = len(node_requests(sandbox))
    token = issuer.mint("alice", f"gcp-node-{os.getpid()}")["token"]
    sidecar = SidecarProcess(tmp_path / "alice", token, sandbox, "--gcp-identity", "node-alice",
                             cloud="gcp")  # fmt: skip
    certs = sandbox.info["gcp"]["id_token_certs_url"]
    try:
        done = run_client([*GOOGLE_CLIENT, "alice", certs], sidecar.env)
    finally:
        sidecar.stop()
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["credentials"] == "google.auth.compute_engine.credentials.Credentials"
    assert result["email"] == ALICE and result["project"] == "sandbox-project"
    assert (result["list_own"], result["write_own"]) == ("ok", "ok")
    assert (result["list_other"], result["write_shared"]) == ("Forbidden", "Forbidden")
    assert result["id_token_email"] == ALICE
    asked = node_requests(sandbox)[before:]
    assert asked, "the sidecar never asked the node's metadata server"
    assert {a["status"] for a in asked} == {200}
    obtained = sidecar.audit_events("credentials.obtained")
    assert obtained and {e["identity"] for e in obtained} == {ALICE}


def test_bob_cannot_get_alices_node_identity(
    stack: tuple[IssuerProcess, SandboxProcess], tmp_path: Path
) -> None:
    """The issuer will not put node-alice in bob's launch token, and bob's sidecar, asked for
    it, stops at start-up naming the identity, without asking the node."""
    issuer, sandbox = stack
    status, body = issuer.post(
        "/v1/launch-tokens",
        {"user": "bob", "run": "r-gcp-node", "workspace": "genomics",
         "identities": {"gcp": ["node-alice"]}},
    )  # fmt: skip
    assert status == 403, body
    assert "node-alice" in body["error_description"]
    before = len(node_requests(sandbox))
    token = issuer.mint("bob", f"gcp-node-bob-{os.getpid()}")["token"]
    sidecar = SidecarProcess(tmp_path / "bob", token, sandbox, "--gcp-identity", "node-alice",
                             cloud="gcp", wait=False)  # fmt: skip
    try:
        assert sidecar.proc.wait(timeout=scaled(60)) == 2
    finally:
        sidecar.stop()
    log = sidecar.log.read_text()
    assert "gcp identity 'node-alice' is not in the launch token" in log, log
    assert "user bob" in log and "Traceback" not in log
    assert node_requests(sandbox)[before:] == []


def test_the_issuer_mints_no_federated_token_for_a_node_identity(
    stack: tuple[IssuerProcess, SandboxProcess],
) -> None:
    """alice's launch token carries node-alice; exchanging it for node-alice is refused: only
    the node issues that identity's tokens."""
    issuer, _ = stack
    token = issuer.mint("alice", f"gcp-node-x-{os.getpid()}")["token"]
    status, body = issuer.post(
        "/v1/token",
        {"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
         "subject_token_type": "urn:ietf:params:oauth:token-type:jwt", "subject_token": token,
         "resource": identity_urn("gcp", "node-alice"), "audience": "anything"},
        form=True,
    )  # fmt: skip
    assert status == 400, body
    assert "node's own service account" in body["error_description"]


def test_secret_only_refuses_a_node_identity_at_start(
    stack: tuple[IssuerProcess, SandboxProcess], tmp_path: Path
) -> None:
    """--secret-only serves GCP as an external-account file, which cannot carry the node's
    account: the sidecar says so and stops, without asking the node."""
    issuer, sandbox = stack
    before = len(node_requests(sandbox))
    token = issuer.mint("alice", f"gcp-node-so-{os.getpid()}")["token"]
    sidecar = SidecarProcess(tmp_path / "so", token, sandbox, "--gcp-identity", "node-alice",
                             "--secret-only", cloud="gcp", wait=False)  # fmt: skip
    try:
        assert sidecar.proc.wait(timeout=scaled(60)) == 2
    finally:
        sidecar.stop()
    log = sidecar.log.read_text()
    assert "--secret-only cannot serve gcp identity 'node-alice' of user alice" in log, log
    assert "Traceback" not in log
    assert node_requests(sandbox)[before:] == []
