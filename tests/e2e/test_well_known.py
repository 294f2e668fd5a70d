"""`serve --well-known` in a network namespace of its own, as a pod or a job gets it: the
namespace's loopback holds 169.254.169.254, 169.254.170.2 (and fd00:ec2::254 where IPv6 is on),
`/etc/hosts` there maps metadata.google.internal, and unmodified clients given NONE of
credsidecar's variables (no AWS_*, GCE_*, IDENTITY_*, MSI_*, AZURE_*...) find alice's
credentials by themselves and are refused bob's data: boto3, the aws CLI, google-auth with
google-cloud-storage, azure-identity (ManagedIdentityCredential and DefaultAzureCredential).

The namespace is set up by deploy/netns/well-known-netns.sh, as a user would. Issuer, sandbox,
sidecar and clients all run inside it (`ip netns exec`) and talk over its loopback;
`clients/well_known_stack.py` drives them there and reports as JSON. Needs root and iproute2's
`ip netns`; the namespace and /etc/netns/NAME are removed, and every process left in the
namespace is killed, however the test ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from credsidecar.sandbox.seed import AZURE_IDENTITIES
from tests.support.processes import reaped, spawn
from tests.support.timing import scaled

ROOT = Path(__file__).resolve().parents[2]
IP = shutil.which("ip")
SETUP = ROOT / "deploy" / "netns" / "well-known-netns.sh"
HOSTS_LINE = "169.254.169.254 metadata.google.internal\n"
# What the scenario takes on a machine of usual speed (about 15 s here), generously.
SCENARIO_SECONDS = 300

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create a network namespace"),
    pytest.mark.skipif(IP is None, reason="needs iproute2's `ip` for `ip netns`"),
]


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    assert IP is not None
    return subprocess.run([IP, *args], capture_output=True, text=True, timeout=30, check=False)


def _kill_namespace_processes(name: str) -> None:
    """Kills, by id, whatever a failed run left in the namespace (all started by this test)."""
    for pid in _ip("netns", "pids", name).stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


@pytest.fixture
def netns() -> Iterator[tuple[str, bool]]:
    """(name, IPv6 address present) of a new namespace set up by deploy/netns's own script."""
    name = f"cswk{os.getpid()}{secrets.token_hex(2)}"
    made = _ip("netns", "add", name)
    if made.returncode != 0:
        pytest.skip(f"`ip netns add` is not possible here: {made.stderr.strip()}")
    try:
        done = subprocess.run(["sh", str(SETUP), "add", name], capture_output=True, text=True,
                              timeout=30, check=False)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert (Path("/etc/netns") / name / "hosts").read_text().endswith(HOSTS_LINE)
        lo = _ip("-n", name, "addr", "show", "dev", "lo").stdout
        assert "169.254.169.254/32" in lo and "169.254.170.2/32" in lo
        yield name, "fd00:ec2::254/128" in lo
    finally:
        _kill_namespace_processes(name)
        subprocess.run(["sh", str(SETUP), "del", name], timeout=30, check=False)


@pytest.fixture
def scenario(netns: tuple[str, bool], tmp_path: Path) -> dict[str, Any]:
    name, _ = netns
    relative_uri = f"/v2/credentials/{secrets.token_urlsafe(16)}"
    args = [IP or "ip", "netns", "exec", name, sys.executable, "-m",
            "tests.e2e.clients.well_known_stack", str(tmp_path), relative_uri]  # fmt: skip
    with reaped(spawn(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                      text=True)) as driver:  # fmt: skip
        output, _ = driver.communicate(timeout=scaled(SCENARIO_SECONDS))
    result_file = tmp_path / "result.json"
    assert result_file.exists(), f"the scenario wrote no result: {output[-3000:]}"
    result: dict[str, Any] = json.loads(result_file.read_text())
    assert "error" not in result, result["error"]
    result["relative_uri"] = relative_uri
    return result


def test_unmodified_clients_find_alices_credentials_on_the_well_known_addresses(
    netns: tuple[str, bool], scenario: dict[str, Any]
) -> None:
    credsidecar_variables = ("AWS_", "GCE_", "GOOGLE_", "AZURE_", "IDENTITY_", "MSI_",
                             "CREDSIDECAR_", "METADATA_")  # fmt: skip
    assert not [n for n in scenario["job_env"] if n.startswith(credsidecar_variables)]
    log = scenario["sidecar_log"]
    assert "http://169.254.169.254:80" in log and "http://169.254.170.2:80" in log
    if netns[1]:  # IMDS over IPv6 too, behind the same peer and Host checks
        assert "http://[fd00:ec2::254]:80" in log
        assert scenario["imds_ipv6"] == "eu-west-1"

    # boto3 through IMDSv2 at 169.254.169.254, its region from the placement path.
    aws = scenario["aws"]
    assert aws.get("provider") == "iam-role", aws
    assert aws["region"] == "eu-west-1"  # --aws-region, read back from the instance metadata
    assert aws["caller"].startswith("arn:aws:sts::123456789012:assumed-role/alice-data/alice@")
    assert (aws["write_own"], aws["list_other"]) == ("ok", "AccessDenied")
    assert aws["read_shared"].startswith(">chr1")
    # Given only AWS_CONTAINER_CREDENTIALS_RELATIVE_URI: the container endpoint at 169.254.170.2.
    relative = scenario["aws_relative_uri"]
    assert relative.get("provider") == "container-role", relative
    assert (relative["write_own"], relative["list_other"]) == ("ok", "AccessDenied")

    # The aws CLI, likewise.
    cli, cli_other = scenario["aws_cli"], scenario["aws_cli_other"]
    assert cli["returncode"] == 0 and "genome.fa" in cli["stdout"], cli
    assert cli_other["returncode"] != 0 and "AccessDenied" in cli_other["stderr"], cli_other

    # google-auth finding the metadata server (ping 169.254.169.254, data from
    # metadata.google.internal), google-cloud-storage acting as alice's service account.
    gcp = scenario["gcp"]
    assert gcp.get("credentials") == "google.auth.compute_engine.credentials.Credentials", gcp
    assert gcp["email"] == "alice@sandbox-project.iam.gserviceaccount.com"
    assert gcp["project"] == "sandbox-project"
    assert (gcp["write_own"], gcp["list_other"]) == ("ok", "Forbidden")
    assert gcp["read_shared"].startswith(">chr1")

    # azure-identity through IMDS at 169.254.169.254, azure-storage-blob as alice's identity.
    azure = scenario["azure"]
    alice = next(i for i in AZURE_IDENTITIES if i.name == "alice")
    tenant = scenario["sandbox"]["tenant_id"]
    expected = {"oid": alice.object_id, "appid": alice.client_id, "tid": tenant,
                "aud": "https://storage.azure.com"}  # fmt: skip
    assert azure.get("managed_identity") == expected, azure
    assert azure["default_credential"] == expected
    assert (azure["write_own"], azure["list_other"]) == ("ok", "AuthorizationPermissionMismatch")

    # The same guards as on 127.0.0.1: another local user is refused, by its uid.
    assert scenario["other_user"].startswith("403 ")
    assert "peer uid 65534 is not the job's user" in scenario["other_user"]

    # Every credential handed out is audited, whichever address the client used.
    served = {e.get("path") for e in scenario["audit"] if e["event"] == "credentials.served"}
    assert scenario["relative_uri"] in served
    assert "/latest/meta-data/iam/security-credentials/alice-data" in served
    assert "/metadata/identity/oauth2/token" in served
