"""`credsidecar start` and `credsidecar run`: the sidecar inside a task that cannot add a
container (Nextflow's per-task jobs, Azure Batch), driven from a real shell."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.e2e.test_aws_sidecar import BOTO3_CLIENT
from tests.support.jobenv import base_env
from tests.support.processes import CLI, reaped, spawn, wait_for
from tests.support.stack import IssuerProcess, SandboxProcess
from tests.support.timing import scaled

_runs = iter(range(1_000_000))


def _flags(stack: tuple[IssuerProcess, SandboxProcess], directory: Path) -> list[str]:
    issuer, sandbox = stack
    directory.mkdir(parents=True, exist_ok=True)
    token_file = directory / "launch-token"
    token_file.write_text(issuer.mint("alice", f"launcher-{os.getpid()}-{next(_runs)}")["token"])
    return ["--token-file", str(token_file), "--run-dir", str(directory / "run"),
            "--audit-log", str(directory / "audit.jsonl"), "--clouds", "aws",
            *sandbox.sidecar_args()]  # fmt: skip


def _cli_words() -> str:
    return " ".join(f"'{w}'" for w in CLI)


def test_start_in_a_shell_serves_the_job_and_ends_with_the_shell(
    stack: tuple[IssuerProcess, SandboxProcess], tmp_path: Path
) -> None:
    flags = " ".join(f"'{f}'" for f in _flags(stack, tmp_path))
    script = (f'eval "$({_cli_words()} start {flags})" || exit 9\n'
              f"{' '.join(BOTO3_CLIENT)} alice\n")  # fmt: skip
    done = subprocess.run(["bash", "-c", script], env=base_env(), capture_output=True,
                          text=True, timeout=scaled(120), check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["provider"] == "container-role" and result["list_other"] == "AccessDenied"
    # The shell ended: the sidecar tied to it stops and removes its files.
    env_file = tmp_path / "run" / "env"
    wait_for(lambda: not env_file.exists(), "sidecar stopped with the shell")
    log = (tmp_path / "run" / "sidecar.log").read_text()
    assert "sidecar ready" in log and "sidecar stopping" in log


def test_run_returns_the_command_status_and_stops_the_sidecar(
    stack: tuple[IssuerProcess, SandboxProcess], tmp_path: Path
) -> None:
    probe = ("import os, sys; print(os.environ['AWS_CONTAINER_CREDENTIALS_FULL_URI']); "
             "print('AWS_ACCESS_KEY_ID' in os.environ); sys.exit(7)")  # fmt: skip
    env = {**base_env(), "AWS_ACCESS_KEY_ID": "AKIASTATIC"}  # must not reach CMD
    done = subprocess.run(
        [*CLI, "run", *_flags(stack, tmp_path), "--", sys.executable, "-c", probe],
        env=env, capture_output=True, text=True, timeout=scaled(120), check=False,
    )  # fmt: skip
    assert done.returncode == 7, done.stderr
    url, static = done.stdout.split()
    assert url.startswith("http://127.0.0.1:") and static == "False"
    assert not (tmp_path / "run" / "env").exists()  # the sidecar stopped and cleaned up


def test_start_reports_a_sidecar_that_dies_before_ready(
    stack: tuple[IssuerProcess, SandboxProcess], tmp_path: Path
) -> None:
    flags = _flags(stack, tmp_path)
    (tmp_path / "launch-token").write_text("not-a-jwt")
    done = subprocess.run([*CLI, "start", *flags], env=base_env(), capture_output=True,
                          text=True, timeout=scaled(120), check=False)  # fmt: skip
    assert done.returncode != 0
    assert done.stdout == ""  # nothing for the shell to eval
    assert "exited" in done.stderr and "before it was ready" in done.stderr


def test_run_forwards_sigterm_and_exits_128_plus_signal(
    stack: tuple[IssuerProcess, SandboxProcess], tmp_path: Path
) -> None:
    marker = tmp_path / "started"
    waits = ("import pathlib, signal, sys; pathlib.Path(sys.argv[1]).write_text('x'); "
             "signal.pause()")  # fmt: skip
    args = [*CLI, "run", *_flags(stack, tmp_path), "--", sys.executable, "-c", waits, str(marker)]
    with reaped(spawn(args, env=base_env())) as proc:
        wait_for(marker.exists, "command started", proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(scaled(60)) == 128 + signal.SIGTERM
    assert not (tmp_path / "run" / "env").exists()
