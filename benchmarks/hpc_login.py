#!/usr/bin/env python3
"""How long an HPC login takes through the issuer. Prints figures, asserts nothing.

    sudo .venv/bin/python benchmarks/hpc_login.py     # from the repository root, ~20 s; root:
                                                      # it starts sshd with the test accounts

Real processes on 127.0.0.1, as in tests/e2e/test_hpc.py (tests/support's issuer process and
tests/hpc's sshd helper): an issuer with the example policy, an OpenSSH sshd trusting the
issuer's CA, one certificate-mode cluster. It measures
1. `credsidecar hpc run --cluster hpc1 -- true` end to end (interpreter start, a fresh key, the
   certificate from the issuer, the SSH login with host verification, the command), median of
   7, beside `credsidecar hpc --help` (the interpreter and imports alone);
2. `POST /v1/ssh/certificates` from one client in sequence (verify the launch token, re-check
   the run and the user, sign, audit), median and max of 50.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import asyncssh

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.hpc.sshd import Sshd, ensure_accounts, require_host, start_sshd  # noqa: E402
from tests.support.processes import CLI  # noqa: E402
from tests.support.stack import IssuerProcess  # noqa: E402


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True, capture_output=True, timeout=60)
    return time.perf_counter() - start


def main() -> int:
    require_host()
    ensure_accounts()
    base = Path(tempfile.mkdtemp(prefix="credsidecar-hpc-bench-"))
    issuer = IssuerProcess(base / "issuer")
    issuer.start(CREDSIDECAR_HPC_KEK=base64.b64encode(secrets.token_bytes(32)).decode())
    sshd: Sshd | None = None
    try:
        cli = [*CLI, "hpc"]
        ca = subprocess.run(
            [*cli, "ca-public-key", "--issuer-url", issuer.url],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        sshd = start_sshd(base / "sshd", ca)
        made = subprocess.run(
            [*CLI, "issuer", "new-user-key", "--config", str(issuer.config), "--user", "carol"],
            capture_output=True,
            text=True,
            check=True,
        )
        host_key = base / "host_key.pub"
        host_key.write_text(sshd.host_key_line + "\n")
        token_file = base / "launch-token"
        token = str(issuer.mint("alice", "bench-hpc")["token"])
        token_file.write_text(token)
        env = {
            **os.environ,
            "CREDSIDECAR_ISSUER_URL": issuer.url,
            "CREDSIDECAR_MEMBER_KEY": made.stdout.strip().splitlines()[-1],
            "CREDSIDECAR_TOKEN_FILE": str(token_file),
        }
        subprocess.run(
            [
                *cli,
                "cluster",
                "add",
                "hpc1",
                "--host",
                "127.0.0.1",
                "--port",
                str(sshd.port),
                "--host-key",
                str(host_key),
                "--username",
                "alice=csalice",
            ],
            env=env,
            check=True,
            capture_output=True,
        )
        runs = [timed([*cli, "run", "--cluster", "hpc1", "--", "true"], env) for _ in range(7)]
        bare = [timed([*cli, "--help"], env) for _ in range(5)]
        public = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
        body = json.dumps({"launch_token": token, "cluster": "hpc1", "public_key": public})
        latencies = []
        for _ in range(50):
            request = urllib.request.Request(  # noqa: S310 - the issuer this script started
                f"{issuer.url}/v1/ssh/certificates",
                data=body.encode(),
                headers={"Content-Type": "application/json"},
            )
            start = time.perf_counter()
            with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310 - our issuer
                resp.read()
            latencies.append(time.perf_counter() - start)
        print(
            f"hpc run -- true, end to end, median of 7: {statistics.median(runs) * 1000:.0f} ms "
            f"(`credsidecar hpc --help` alone: {statistics.median(bare) * 1000:.0f} ms)"
        )
        print(
            f"POST /v1/ssh/certificates, 50 in sequence: median "
            f"{statistics.median(latencies) * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms"
        )
    finally:
        if sshd is not None:
            sshd.stop()
        issuer.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
