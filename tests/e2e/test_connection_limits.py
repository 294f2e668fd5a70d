"""The real sidecar under a 1,024 open-files limit, flooded with more idle connections than
that: `/healthz` and credentials are still served and renewals still succeed (serving.py)."""

from __future__ import annotations

import json
import os
import resource
import socket
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.support import stack as stack_module
from tests.support.processes import start as start_process
from tests.support.processes import wait_for
from tests.support.stack import IssuerProcess, SandboxProcess, SidecarProcess
from tests.support.timing import scaled

FD_LIMIT = 1024
FLOOD = 1100  # more connections than the limit has descriptors
# Short credentials, so a renewal falls within the flood (renewed at half-life).
DURATION = "6"


def _low_fd_limit() -> None:  # runs in the child, before it starts Python
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


def _start_with_low_fd_limit(args: list[str], log: Path, **kwargs: Any) -> Any:
    return start_process(args, log, preexec_fn=_low_fd_limit, **kwargs)


@pytest.fixture
def flooded(
    tmp_path: Path, stack: tuple[IssuerProcess, SandboxProcess], monkeypatch: pytest.MonkeyPatch
) -> SidecarProcess:
    issuer, sandbox = stack
    token = issuer.mint("alice", f"fd-limit-{os.getpid()}")["token"]
    monkeypatch.setattr(stack_module, "start", _start_with_low_fd_limit)
    return SidecarProcess(tmp_path / "sidecar", token, sandbox, "--aws-duration", DURATION)


def test_a_flood_of_idle_connections_past_the_fd_limit_locks_out_nothing(
    flooded: SidecarProcess,
) -> None:
    sidecar = flooded
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < FLOOD + 64:
        pytest.skip(f"this process may open only {soft} files; the flood needs {FLOOD}")
    uri = sidecar.env["AWS_CONTAINER_CREDENTIALS_FULL_URI"]
    port = urllib.parse.urlsplit(uri).port
    assert port is not None
    held: list[socket.socket] = []
    try:
        for _ in range(FLOOD):  # idle: connected, never a byte sent
            held.append(socket.create_connection(("127.0.0.1", port), timeout=scaled(10)))
        renewed_before = len(sidecar.audit_events("credentials.obtained"))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=scaled(10)) as r:
            assert r.status == 200
        request = urllib.request.Request(
            uri, headers={"Authorization": sidecar.env["AWS_CONTAINER_AUTHORIZATION_TOKEN"]}
        )
        with urllib.request.urlopen(request, timeout=scaled(10)) as resp:
            assert json.loads(resp.read())["AccessKeyId"]
        # With the flood still held, renewals (upstream connections, files) keep working.
        wait_for(lambda: len(sidecar.audit_events("credentials.obtained")) >= renewed_before + 2,
                 "two renewals during the flood", sidecar.proc, sidecar.log)  # fmt: skip
        with urllib.request.urlopen(request, timeout=scaled(10)) as resp:
            assert json.loads(resp.read())["AccessKeyId"]
    finally:
        for sock in held:
            sock.close()
        sidecar.stop()
    log = sidecar.log.read_text()
    assert "Too many open files" not in log and "EMFILE" not in log
    assert "closed" in log and "to make room" in log  # the flood was met by making room
