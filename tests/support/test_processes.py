"""The process helpers every end-to-end test relies on to leave nothing running."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.support.processes import reaped, spawn, stop_process, wait_for


def _gone(pid: int) -> bool:
    """Exited: no such process, or a zombie waiting for its (new) parent to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def test_stop_process_also_kills_what_the_process_spawned() -> None:
    """A shell's background job outlives the shell on SIGTERM; its process group does not."""
    shell = spawn(["bash", "-c", "sleep 600 & echo $!; wait"], stdout=subprocess.PIPE, text=True)
    assert shell.stdout is not None
    child = int(shell.stdout.readline())
    try:
        assert stop_process(shell) == -signal.SIGTERM
        wait_for(lambda: _gone(child), "the shell's background job to be killed")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


def test_stop_process_reaps_and_closes_the_pipes() -> None:
    proc = spawn(["sleep", "600"], stdout=subprocess.PIPE)
    assert stop_process(proc) == -signal.SIGTERM
    assert proc.returncode == -signal.SIGTERM
    assert proc.stdout is not None and proc.stdout.closed


def test_reaped_stops_the_process_when_the_block_fails() -> None:
    with (
        pytest.raises(RuntimeError, match="the test failed"),
        reaped(spawn(["sleep", "600"])) as proc,
    ):
        raise RuntimeError("the test failed")
    assert proc.returncode == -signal.SIGTERM


def test_wait_for_fails_at_once_when_the_awaited_process_exits(tmp_path: Path) -> None:
    log = tmp_path / "log"
    log.write_text("what the process said\n")
    said = "ready: process exited 3: what the process said"
    with reaped(spawn(["sh", "-c", "exit 3"])) as proc, pytest.raises(AssertionError, match=said):
        wait_for(lambda: False, "ready", proc, log)
