"""The node's own instance profile (`source = "node"`), per user: the real issuer, the sandbox
with its node-IMDS stand-in (the node's sandbox-node role, which may assume alice-data and
bob-data) and the real sidecar. alice is granted node-alice (alice-data assumed from the
instance profile, narrowed by a read-only session policy) and unmodified boto3 acts as it; bob
is granted no node identity, and neither the issuer nor the sidecar hands him alice's; the
node's IMDS is asked only for what a launch was granted.

moto, behind the sandbox's STS, checks the instance profile role's permission, the target
role's trust policy and the SigV4 signature, but applies no session policy: the test checks
that the AssumeRole request carried it.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from pathlib import Path
from typing import Any

from credsidecar.launch.grants import identity_urn
from credsidecar.sandbox.seed import AWS_NODE_IDENTITIES
from tests.support.stack import IssuerProcess, SandboxProcess, SidecarProcess, run_client
from tests.support.timing import scaled

BOTO3_CLIENT = [sys.executable, str(Path(__file__).parent / "clients" / "boto3_s3.py")]
NODE = {i.name: i for i in AWS_NODE_IDENTITIES}


def get_json(url: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(url, timeout=scaled(10)) as resp:
        found: list[dict[str, Any]] = json.loads(resp.read())
        return found


def node_requests(sandbox: SandboxProcess) -> list[dict[str, Any]]:
    """What the node's IMDS stand-in was asked for so far (its test hook)."""
    return get_json(f"{sandbox.info['aws']['node_imds_url']}/_sandbox/requests")


def assume_role_requests(sandbox: SandboxProcess) -> list[dict[str, Any]]:
    return get_json(f"{sandbox.info['aws']['sts_endpoint']}/_sandbox/assume-role-requests")


def test_alice_gets_her_node_identity_through_the_container_endpoint(
    stack: tuple[IssuerProcess, SandboxProcess], tmp_path: Path
) -> None:
    """boto3 acts as alice-data, assumed from the node's instance profile as alice@RUN: it
    writes alice's bucket and is refused bob's; the sidecar read the instance profile over
    IMDSv2 and its AssumeRole carried the session policy."""
    issuer, sandbox = stack
    before, assumed_before = len(node_requests(sandbox)), len(assume_role_requests(sandbox))
    run = f"aws-node-{os.getpid()}"
    token = issuer.mint("alice", run)["token"]
    sidecar = SidecarProcess(tmp_path / "alice", token, sandbox, "--aws-identity", "node-alice")
    try:
        done = run_client([*BOTO3_CLIENT, "alice"], sidecar.env)
    finally:
        sidecar.stop()
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["caller"] == f"arn:aws:sts::123456789012:assumed-role/alice-data/alice@{run}"
    assert result["provider"] == "container-role"
    assert result["read_shared"].startswith(">chr1")
    assert (result["list_other"], result["write_shared"]) == ("AccessDenied", "AccessDenied")
    # A real STS would refuse this write (the session policy allows reading only); moto
    # applies no session policy, so the sandbox can only show the policy was sent (below).
    assert result["write_own"] == "ok"
    asked = node_requests(sandbox)[before:]
    assert [(a["method"], a["path"]) for a in asked][:3] == [
        ("PUT", "/latest/api/token"),
        ("GET", "/latest/meta-data/iam/security-credentials/"),
        ("GET", "/latest/meta-data/iam/security-credentials/sandbox-node"),
    ]
    assert {a["status"] for a in asked} == {200}
    [request] = assume_role_requests(sandbox)[assumed_before:]
    assert request["RoleArn"] == NODE["node-alice"].role_arn
    assert request["RoleSessionName"] == f"alice@{run}"
    assert request["Policy"] == NODE["node-alice"].session_policy
    obtained = sidecar.audit_events("credentials.obtained")
    assert obtained and obtained[0]["role"] == NODE["node-alice"].role_arn


def test_bob_cannot_get_alices_node_identity(
    stack: tuple[IssuerProcess, SandboxProcess], tmp_path: Path
) -> None:
    """The issuer will not put node-alice in bob's launch token, nor mint for it; bob's
    sidecar, asked for it, stops at start-up naming it, without asking the node."""
    issuer, sandbox = stack
    status, body = issuer.post(
        "/v1/launch-tokens",
        {"user": "bob", "run": "r-aws-node", "workspace": "genomics",
         "identities": {"aws": ["node-alice"]}},
    )  # fmt: skip
    assert status == 403, body
    assert "node-alice" in body["error_description"]
    before = len(node_requests(sandbox))
    token = issuer.mint("bob", f"aws-node-bob-{os.getpid()}")["token"]
    sidecar = SidecarProcess(tmp_path / "bob", token, sandbox, "--aws-identity", "node-alice",
                             wait=False)  # fmt: skip
    try:
        assert sidecar.proc.wait(timeout=scaled(60)) == 2
    finally:
        sidecar.stop()
    log = sidecar.log.read_text()
    assert "aws identity 'node-alice' is not in the launch token" in log, log
    assert "user bob" in log and "Traceback" not in log
    assert node_requests(sandbox)[before:] == []


def test_the_issuer_mints_no_federated_token_for_a_node_identity(
    stack: tuple[IssuerProcess, SandboxProcess],
) -> None:
    issuer, _ = stack
    token = issuer.mint("alice", f"aws-node-x-{os.getpid()}")["token"]
    status, body = issuer.post(
        "/v1/token",
        {"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
         "subject_token_type": "urn:ietf:params:oauth:token-type:jwt", "subject_token": token,
         "resource": identity_urn("aws", "node-alice"), "audience": "sts.amazonaws.com"},
        form=True,
    )  # fmt: skip
    assert status == 400, body
    assert "node's own instance profile" in body["error_description"]
