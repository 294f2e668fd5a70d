"""The node's own managed identities (`source = "node"`), per user: the real issuer, the sandbox
with its node-IMDS stand-in (a system-assigned and two user-assigned identities) and the real
sidecar. alice is granted node-alice, and gets it through the job endpoints beside her
federated identity; bob is granted no node identity, and neither the issuer nor the sidecar
hands him alice's; the node's IMDS is asked only for what a launch was granted.
"""

from __future__ import annotations

import http.client
import json
import sys
import urllib.parse
from pathlib import Path
from typing import Any

from credsidecar.endpoints.azure import IMDS_PATH
from credsidecar.launch.grants import identity_urn
from credsidecar.sandbox.seed import AZURE_IDENTITIES, AZURE_NODE_IDENTITIES
from tests.e2e.test_azure_sidecar import azure_sidecar, token_claims
from tests.support.stack import IssuerProcess, SandboxProcess, run_client

CLIENT = str(Path(__file__).parent / "clients" / "azure_node_clients.py")
NODE = {i.name: i for i in AZURE_NODE_IDENTITIES}
FEDERATED = {i.name: i for i in AZURE_IDENTITIES}
STORAGE = "https://storage.azure.com"


def node_requests(sandbox: SandboxProcess) -> list[dict[str, Any]]:
    """What the node's IMDS stand-in was asked for so far (its test hook)."""
    url = f"{sandbox.info['azure']['node_imds_url']}/_sandbox/requests"
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request("GET", parts.path)
        found: list[dict[str, Any]] = json.loads(conn.getresponse().read())
        return found
    finally:
        conn.close()


def imds_get(base: str, query: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """The job's IMDS-style request to the sidecar (Metadata: true), and its JSON answer."""
    parts = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request("GET", f"{IMDS_PATH}?{urllib.parse.urlencode(query)}",
                     headers={"Metadata": "true"})  # fmt: skip
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_alice_gets_her_node_identity_through_the_job_endpoints(
    stack: tuple[IssuerProcess, SandboxProcess], tmp_path: Path
) -> None:
    """azure-identity's ManagedIdentityCredential(client_id=node-alice) gets node-alice's token
    from the sidecar, which got it from the node's IMDS; it lists alice's container and is
    refused bob's; node-bob, which the node holds too, is refused; the default stays alice's
    federated identity."""
    sandbox = stack[1]
    before = len(node_requests(sandbox))
    sidecar = azure_sidecar(stack, tmp_path / "alice", "alice")
    args = [sys.executable, CLIENT, sandbox.info["azure"]["blob_url"],
            NODE["node-alice"].client_id, NODE["node-bob"].client_id]  # fmt: skip
    try:
        done = run_client(args, sidecar.env)
    finally:
        sidecar.stop()
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    claims = token_claims(sandbox, result["token"], STORAGE)
    assert (claims["oid"], claims["appid"]) == (NODE["node-alice"].object_id,
                                                NODE["node-alice"].client_id)  # fmt: skip
    assert claims["xms_mirid"] == NODE["node-alice"].resource_id
    assert isinstance(result["list_alice"], list)  # listed: allowed
    assert result["list_bob"] == "AuthorizationPermissionMismatch"
    assert NODE["node-bob"].client_id in result["other"]
    assert "is not granted to this launch" in result["other"]
    default = token_claims(sandbox, result["default_token"], STORAGE)
    assert default["oid"] == FEDERATED["alice"].object_id  # federation, beside the node's
    asked = node_requests(sandbox)[before:]
    assert asked, "the sidecar never asked the node's IMDS"
    assert {(a["client_id"], a["mi_res_id"]) for a in asked} == {
        (NODE["node-alice"].client_id, None)
    }
    obtained = [e for e in sidecar.audit_events("credentials.obtained")
                if e["identity"] == "node-alice"]  # fmt: skip
    assert obtained and obtained[0]["client_id"] == NODE["node-alice"].client_id


def test_bob_cannot_get_alices_node_identity(
    stack: tuple[IssuerProcess, SandboxProcess], tmp_path: Path
) -> None:
    """The issuer will not put node-alice in bob's launch token, and bob's sidecar answers 400
    for it without asking the node."""
    issuer, sandbox = stack
    status, body = issuer.post(
        "/v1/launch-tokens",
        {"user": "bob", "run": "r-node", "workspace": "genomics",
         "identities": {"azure": ["node-alice"]}},
    )  # fmt: skip
    assert status == 403, body
    assert "node-alice" in body["error_description"]
    before = len(node_requests(sandbox))
    sidecar = azure_sidecar(stack, tmp_path / "bob", "bob")
    try:
        status, answer = imds_get(
            sidecar.env["CREDSIDECAR_URL"],
            {"api-version": "2018-02-01", "resource": STORAGE,
             "client_id": NODE["node-alice"].client_id},
        )  # fmt: skip
    finally:
        sidecar.stop()
    assert status == 400, answer
    assert (
        f"identity '{NODE['node-alice'].client_id}' is not granted to this launch"
        in (answer["error_description"])
    )
    assert "node-alice" not in {i["name"] for i in answer["granted_identities"]}
    assert node_requests(sandbox)[before:] == []


def test_the_issuer_mints_no_federated_token_for_a_node_identity(
    stack: tuple[IssuerProcess, SandboxProcess],
) -> None:
    issuer = stack[0]
    token = issuer.mint("alice", "r-node-exchange")["token"]
    status, body = issuer.post(
        "/v1/token",
        {"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
         "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
         "subject_token": token, "audience": "api://AzureADTokenExchange",
         "resource": identity_urn("azure", "node-alice")},
        form=True,
    )  # fmt: skip
    assert status == 400, body
    assert body["error_description"] == (
        "azure identity 'node-alice' of user 'alice' (run 'r-node-exchange') is the node's own "
        "managed identity: the sidecar asks the node's IMDS for it, and the issuer mints no "
        "federated token for it"
    )


def test_a_node_identity_can_be_the_default_and_readiness_asks_the_node(
    stack: tuple[IssuerProcess, SandboxProcess], tmp_path: Path
) -> None:
    """With --azure-identity node-alice, the sidecar is ready once the node's IMDS gave it an
    ARM token for node-alice, and an SDK naming no identity gets node-alice."""
    sandbox = stack[1]
    before = len(node_requests(sandbox))
    sidecar = azure_sidecar(stack, tmp_path / "default", "alice", "--azure-identity", "node-alice")
    args = [sys.executable, CLIENT, sandbox.info["azure"]["blob_url"],
            NODE["node-alice"].client_id]  # fmt: skip
    try:
        done = run_client(args, sidecar.env)
    finally:
        sidecar.stop()
    assert done.returncode == 0, done.stderr
    default = token_claims(sandbox, json.loads(done.stdout)["default_token"], STORAGE)
    assert default["oid"] == NODE["node-alice"].object_id
    resources = {a["resource"] for a in node_requests(sandbox)[before:]}
    assert "https://management.azure.com" in resources  # the readiness token
