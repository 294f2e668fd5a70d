"""Another Unix user on the host gets none of the job's credentials from the real sidecar.

Regression for the hardening review: as `nobody`, the IMDSv2 token and role credentials, the GCP
token and the Azure IMDS token were all served, since those paths need no per-job secret. The
sidecar now answers only peers whose socket belongs to its own user or root (or `--allow-uid`).
The client below runs as `nobody` through `setpriv` with the standard library only.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.stack import IssuerProcess, SandboxProcess, SidecarProcess
from tests.support.timing import scaled

NOBODY = 65534
AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="acting as another Unix user needs root and setpriv (util-linux)",
)

# Every path a job's SDK would use, in the order an attacker would; the container secret (as if
# it had leaked) comes on stdin. Prints {name: [status, body]}.
CLIENT = r"""
import json, sys, urllib.error, urllib.request
base = f"http://127.0.0.1:{sys.argv[1]}"
secret = sys.stdin.read()

def call(method, path, headers):
    request = urllib.request.Request(base + path, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return [resp.status, resp.read().decode()]
    except urllib.error.HTTPError as exc:
        return [exc.code, exc.read().decode()]

out = {}
out["imds_token"] = call("PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "60"})
token = {"X-aws-ec2-metadata-token": out["imds_token"][1] if out["imds_token"][0] == 200 else "x"}
creds = "/latest/meta-data/iam/security-credentials/"
out["imds_role"] = call("GET", creds, token)
role = out["imds_role"][1] if out["imds_role"][0] == 200 else "alice-data"
out["imds_credentials"] = call("GET", creds + role, token)
out["gcp_token"] = call("GET", "/computeMetadata/v1/instance/service-accounts/default/token",
                        {"Metadata-Flavor": "Google"})
out["azure_imds"] = call("GET", "/metadata/identity/oauth2/token?api-version=2018-02-01"
                         "&resource=https%3A%2F%2Fstorage.azure.com", {"Metadata": "true"})
out["aws_container"] = call("GET", "/v1/credentials/aws", {"Authorization": secret})
print(json.dumps(out))
"""


def _python_for_nobody() -> str:
    """An interpreter `nobody` can run: ours unless it lives where nobody can reach it."""
    for candidate in (sys.executable, "/usr/bin/python3"):
        probe = subprocess.run([*AS_NOBODY, candidate, "-I", "-c", "pass"], cwd="/",
                               capture_output=True, timeout=scaled(30), check=False)  # fmt: skip
        if probe.returncode == 0:
            return candidate
    pytest.skip("no Python interpreter that uid 65534 may run")


def _client(port: int, secret: str, as_nobody: bool) -> dict[str, list[Any]]:
    python = _python_for_nobody() if as_nobody else sys.executable
    command = [*(AS_NOBODY if as_nobody else []), python, "-I", "-c", CLIENT, str(port)]
    done = subprocess.run(command, input=secret, capture_output=True, text=True, cwd="/",
                          timeout=scaled(60), check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


@pytest.fixture
def sidecar(
    stack: tuple[IssuerProcess, SandboxProcess], tmp_path: Path
) -> Iterator[SidecarProcess]:
    issuer, sandbox = stack
    token = issuer.mint("alice", f"other-user-{os.getpid()}")["token"]
    process = SidecarProcess(tmp_path / "alice", token, sandbox, cloud="aws,gcp,azure")
    yield process
    process.stop()


def test_another_local_user_gets_no_credentials_and_is_audited(sidecar: SidecarProcess) -> None:
    port = int(sidecar.env["AWS_EC2_METADATA_SERVICE_ENDPOINT"].rsplit(":", 1)[1])
    secret = sidecar.env["AWS_CONTAINER_AUTHORIZATION_TOKEN"]

    refused = _client(port, secret, as_nobody=True)
    for name, (status, body) in refused.items():
        assert status == 403, (name, status, body)
        assert f"peer uid {NOBODY} is not the job's user" in json.loads(body)["error_description"]

    served = _client(port, secret, as_nobody=False)  # root, as the sidecar's own user here
    assert {name: status for name, (status, _) in served.items()} == dict.fromkeys(served, 200)
    aws = json.loads(served["imds_credentials"][1])
    container = json.loads(served["aws_container"][1])
    gcp, azure = json.loads(served["gcp_token"][1]), json.loads(served["azure_imds"][1])
    assert aws["AccessKeyId"] and container["AccessKeyId"] == aws["AccessKeyId"]
    secrets = [secret, served["imds_token"][1], aws["SecretAccessKey"], aws["Token"],
               gcp["access_token"], azure["access_token"]]  # fmt: skip

    sidecar.stop()  # the audit trail is complete once the sidecar has stopped
    lines = [e for e in sidecar.audit_events() if e["event"].startswith("request.refused")]
    nobody = [e for e in lines if e.get("uid") == NOBODY]
    assert nobody, lines
    assert all("is not the job's user" in e["reason"] for e in nobody)
    assert all(e.get("uid") != os.geteuid() for e in lines)  # root was never refused
    trail = sidecar.audit.read_text() + sidecar.log.read_text(errors="replace")
    for value in secrets:
        assert value not in trail
