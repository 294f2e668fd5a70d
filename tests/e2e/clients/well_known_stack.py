"""The whole well-known scenario, run INSIDE a network namespace (`ip netns exec NAME`) whose
loopback holds 169.254.169.254, 169.254.170.2 (and fd00:ec2::254): issuer, sandbox and a sidecar
with `--well-known` for alice, then unmodified clients with none of credsidecar's variables.
Every process talks over the namespace's loopback; `/etc/hosts` there (from
/etc/netns/NAME/hosts) maps metadata.google.internal.

Usage: python -m tests.e2e.clients.well_known_stack OUTDIR RELATIVE_URI
       -> OUTDIR/result.json: each client's JSON (or its failure), and the sidecar's audit
Stops and reaps everything it started however it ends (SIGTERM included).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback
import urllib.request
from pathlib import Path
from typing import Any

from tests.support.processes import stop_process, tail
from tests.support.stack import IssuerProcess, SandboxProcess, SidecarProcess, run_client

CLIENTS = [sys.executable, str(Path(__file__).parent / "well_known_clients.py")]
AWS_CLI = str(Path(sys.executable).parent / "aws")
# Not the default, so that a client reporting it has read it from the metadata address.
REGION = "eu-west-1"
# Everything an SDK would take for a credential, a metadata host or a region: the job gets none.
_FORBIDDEN_PREFIXES = ("AWS_", "GOOGLE_", "GCE_", "GCLOUD_", "CLOUDSDK_", "AZURE_", "IDENTITY_",
                       "MSI_", "CREDSIDECAR_", "METADATA_", "ARM_", "IMDS_")  # fmt: skip
_FORBIDDEN = {"NO_GCE_CHECK", "API_ENDPOINT_OVERRIDE", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE",
              "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS"}  # fmt: skip


def clean_env(home: Path) -> dict[str, str]:
    """This process's environment without any cloud or credsidecar variable, and a new empty
    HOME (no ~/.aws, ~/.config/gcloud, ~/.azure to fall back on)."""
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(_FORBIDDEN_PREFIXES) and k not in _FORBIDDEN}  # fmt: skip
    env["HOME"] = str(home)
    return env


def _client(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    done = run_client(args, env, timeout=180)
    if done.returncode != 0:
        return {"failed": done.returncode, "stderr": done.stderr[-3000:]}
    try:
        return dict(json.loads(done.stdout))
    except ValueError:
        return {"stdout": done.stdout[-3000:], "stderr": done.stderr[-3000:]}


def imds_region(base: str) -> str:
    """The region through IMDSv2 at `base`, by hand (IPv6 needs an SDK variable to be chosen)."""
    ttl = {"X-aws-ec2-metadata-token-ttl-seconds": "60"}
    put = urllib.request.Request(f"{base}/latest/api/token", method="PUT", headers=ttl)
    try:
        with urllib.request.urlopen(put, timeout=10) as resp:
            token = resp.read().decode()
        get = urllib.request.Request(f"{base}/latest/meta-data/placement/region",
                                     headers={"X-aws-ec2-metadata-token": token})  # fmt: skip
        with urllib.request.urlopen(get, timeout=10) as resp:
            return str(resp.read().decode())
    except OSError as exc:
        return f"failed: {exc}"


# Another local user asking for an IMDSv2 session: prints the HTTP status it gets.
_OTHER_USER_CODE = """
import urllib.error, urllib.request
request = urllib.request.Request("http://169.254.169.254/latest/api/token", method="PUT",
                                 headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"})
try:
    print(urllib.request.urlopen(request, timeout=10).status)
except urllib.error.HTTPError as exc:
    print(exc.code, exc.read().decode())
"""


def scenario(out: Path, relative_uri: str) -> dict[str, Any]:
    issuer = IssuerProcess(out / "issuer")
    issuer.start()
    sandbox: SandboxProcess | None = None
    sidecar: SidecarProcess | None = None
    try:
        sandbox = SandboxProcess(out, issuer.url)
        token = issuer.mint("alice", f"well-known-{os.getpid()}")["token"]
        sidecar = SidecarProcess(out / "sidecar", token, sandbox, "--well-known",
                                 "--aws-relative-uri", relative_uri, "--aws-region", REGION,
                                 cloud="aws,gcp,azure")  # fmt: skip
        s3 = sandbox.s3
        env = clean_env(out / "home")
        gcp_env = {**env, "API_ENDPOINT_OVERRIDE": sandbox.info["gcp"]["storage_url"]}
        # The sandbox's Blob storage is HTTPS with its own CA (its storage only: the metadata
        # addresses are plain HTTP).
        ca = sandbox.info["azure"]["ca_bundle"]
        azure_env = {**env, "REQUESTS_CA_BUNDLE": ca, "SSL_CERT_FILE": ca}
        cli = run_client([AWS_CLI, "s3", "ls", "s3://shared-refs/refs/", "--endpoint-url", s3],
                         env, timeout=180)  # fmt: skip
        cli_other = run_client([AWS_CLI, "s3", "ls", "s3://bob-data", "--endpoint-url", s3],
                               env, timeout=180)  # fmt: skip
        relative_env = {**env, "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": relative_uri}
        result = {
            "job_env": sorted(env),
            "aws": _client([*CLIENTS, "aws", "alice", s3], env),
            "aws_relative_uri": _client([*CLIENTS, "aws", "alice", s3], relative_env),
            "aws_cli": {
                "returncode": cli.returncode,
                "stdout": cli.stdout,
                "stderr": cli.stderr[-2000:],
            },
            "aws_cli_other": {
                "returncode": cli_other.returncode,
                "stderr": cli_other.stderr[-2000:],
            },
            "gcp": _client([*CLIENTS, "gcp", "alice"], gcp_env),
            "azure": _client(
                [*CLIENTS, "azure", "alice", sandbox.info["azure"]["blob_url"]], azure_env
            ),
            "sandbox": {"tenant_id": sandbox.info["azure"]["tenant_id"]},
        }
        result["imds_ipv6"] = imds_region("http://[fd00:ec2::254]")
        nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        other = run_client([*nobody, sys.executable, "-c", _OTHER_USER_CODE], env, timeout=60)
        result["other_user"] = other.stdout.strip() or other.stderr[-1000:]
        result["audit"] = sidecar.audit_events()
        result["sidecar_log"] = tail(sidecar.log, 6000)
        return result
    finally:
        if sidecar is not None:
            sidecar.stop()
        if sandbox is not None:
            stop_process(sandbox.proc)
        issuer.stop()


def main() -> int:
    out, relative_uri = Path(sys.argv[1]), sys.argv[2]
    # SIGTERM (the test giving up) unwinds through the finally blocks, which reap everything.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        result = scenario(out, relative_uri)
    except Exception:  # reported to the test, which shows it
        result = {"error": traceback.format_exc()[-4000:]}
    (out / "result.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
