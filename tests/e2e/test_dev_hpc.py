"""`credsidecar dev`'s HPC side, as a newcomer follows the printout: the sandbox login nodes are
registered at the issuer, so `hpc run`, `hpc cert` + plain `ssh -F`, `hpc check` and the
stored-key cluster work for alice right away, and the login node logs the certificate's key ID."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from tests.support.processes import CLI, stop_process, wait_for
from tests.support.stack import run_client


def test_dev_lets_alice_use_both_sandbox_clusters_as_the_printout_shows(tmp_path: Path) -> None:
    info_file, log = tmp_path / "info.json", tmp_path / "dev.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*CLI, "dev", "--info-file", str(info_file)], stdout=out, stderr=out
        )
    try:
        wait_for(info_file.exists, "credsidecar dev", proc, log)
        info = json.loads(info_file.read_text())
        hpc = info["sandbox"]["hpc"]
        printed = log.read_text()
        for shown in (
            "hpc run --cluster sandbox-cluster -- hostname",
            "hpc cert --cluster sandbox-cluster --out",
            f"hpc check --cluster sandbox-cluster --work-dir {hpc['work_dir']}",
            "hpc run --cluster sandbox-stored -- hostname",
        ):
            assert shown in printed
        env = {**os.environ, "CREDSIDECAR_TOKEN_FILE": info["launch_token_file"]}
        hostname = socket.gethostname()

        done = run_client([*CLI, "hpc", "run", "--cluster", "sandbox-cluster", "--", "hostname"],
                          env)  # fmt: skip
        assert (done.returncode, done.stdout.strip()) == (0, hostname), done.stderr

        cert_dir = Path(info["workdir"]) / "ssh"
        done = run_client(
            [*CLI, "hpc", "cert", "--cluster", "sandbox-cluster", "--out", str(cert_dir)], env
        )
        assert done.returncode == 0, done.stderr
        if shutil.which("ssh") is None:
            pytest.fail("the OpenSSH client is needed: apt-get install openssh-client")
        ssh = run_client(
            ["ssh", "-F", str(cert_dir / "ssh_config"), "-o", "BatchMode=yes",
             "sandbox-cluster", "hostname"],
            env,
        )  # fmt: skip
        assert (ssh.returncode, ssh.stdout.strip()) == (0, hostname), ssh.stderr

        check = run_client(
            [*CLI, "hpc", "check", "--cluster", "sandbox-cluster", "--work-dir", hpc["work_dir"]],
            env,
        )
        assert check.returncode == 0, check.stdout + check.stderr
        assert "slurm commands on the PATH" in check.stdout

        # preflight of cluster paths before launch: the prepared work dir passes, a missing one
        # is "not found" (exit 1), through the same login as `hpc run`
        work = f"ssh://sandbox-cluster{hpc['work_dir']}"
        missing = f"{work}/no-such-dir"
        pre = run_client([*CLI, "preflight", "--token-file", info["launch_token_file"],
                          "--json", "--work-dir", work, "--read", missing], env)  # fmt: skip
        assert pre.returncode == 1, pre.stdout + pre.stderr
        verdicts = {p["path"]: p["verdict"] for p in json.loads(pre.stdout)["paths"]}
        assert verdicts == {work: "ok", missing: "not found"}

        stored = run_client(
            [*CLI, "hpc", "run", "--cluster", "sandbox-stored", "--", "hostname"], env
        )
        assert (stored.returncode, stored.stdout.strip()) == (0, hostname), stored.stderr

        logins = Path(hpc["login_log"]).read_text()
        key_id = f"credsidecar:alice:{info['run']}:sandbox-cluster"
        # hpc run, ssh, hpc check, and one login per preflight path
        assert logins.count(f"sandbox-cluster: accepted certificate ID {key_id}") == 5
        assert "sandbox-stored: accepted key SHA256:" in logins
    finally:
        code = stop_process(proc, signal.SIGINT)
    assert code == 0, log.read_text()[-2000:]
    assert not Path(info["workdir"]).exists()
    assert "Traceback" not in log.read_text()
