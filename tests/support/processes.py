"""Starting, awaiting and always reaping the processes a test starts.

- `start`/`spawn` put each process in its own process group, so `stop_process` can also kill
  whatever it spawned (an SDK's helper, a shell's background job).
- `stop_process` signals, waits a scaled deadline, kills, reaps and closes the pipes; `reaped`
  does it on leaving a `with` block, so a failing test leaves nothing running.
- `wait_for` polls a predicate until a scaled deadline and fails early, with the log's tail,
  when the awaited process has exited.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from tests.support.timing import scaled

__all__ = ["CLI", "http_ok", "reaped", "spawn", "start", "stop_process", "tail", "wait_for"]

CLI = [sys.executable, "-m", "credsidecar"]

# How often `wait_for` looks: often enough that waiting adds no noticeable time to a test.
POLL_SECONDS = 0.05
# Default deadlines for a machine of usual speed, before `scaled`; each only bounds a failure.
WAIT_SECONDS = 60.0
STOP_SECONDS = 15.0

P = TypeVar("P", bound="subprocess.Popen[Any]")

# Processes started as the leader of their own group: their group is ours to kill.
_group_leaders: weakref.WeakSet[subprocess.Popen[Any]] = weakref.WeakSet()


def tail(log: Path | None, chars: int = 3000) -> str:
    return log.read_text(errors="replace")[-chars:] if log is not None and log.exists() else ""


def wait_for(
    predicate: Callable[[], Any],
    what: str,
    proc: subprocess.Popen[Any] | None = None,
    log: Path | None = None,
    timeout: float = WAIT_SECONDS,
) -> None:
    """Returns as soon as `predicate()` is true; fails if `proc` exits first or after
    `scaled(timeout)` seconds."""
    deadline = time.monotonic() + scaled(timeout)
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: process exited {proc.returncode}: {tail(log)}")
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {scaled(timeout):.0f} s waiting for {what}: {tail(log)}"
            )
        time.sleep(POLL_SECONDS)


def spawn(args: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
    """`subprocess.Popen` in a process group of its own (see `stop_process`)."""
    if "process_group" not in kwargs and not kwargs.get("start_new_session"):
        kwargs["process_group"] = 0
    proc: subprocess.Popen[Any] = subprocess.Popen(args, **kwargs)
    if kwargs.get("process_group") == 0 or kwargs.get("start_new_session"):
        _group_leaders.add(proc)
    return proc


def start(args: list[str], log: Path, **kwargs: Any) -> subprocess.Popen[bytes]:
    """`credsidecar ARGS` with stdout and stderr appended to `log`."""
    with log.open("ab") as out:  # the child keeps its own descriptor
        return spawn([*CLI, *args], stdout=out, stderr=out, **kwargs)


def _kill_group_leftovers(pgid: int) -> None:
    """Kills what is left of the group `pgid` once its leader has been reaped. While any member
    lives, the kernel does not hand out `pgid` as a new process id; a live process with that id
    is therefore someone else's (the group is empty and the id reused), and is left alone."""
    try:
        os.kill(pgid, 0)
        return
    except ProcessLookupError:
        pass
    except PermissionError:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def stop_process(
    proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = STOP_SECONDS
) -> int:
    """Sends `sig` (if still running), waits up to `scaled(timeout)`, then kills; reaps the
    process, kills the rest of its process group if it leads one, and closes its pipes.
    Returns its exit code (negative for a signal)."""
    leads_group = proc in _group_leaders
    if not leads_group and proc.returncode is None:
        with contextlib.suppress(OSError):  # a zombie still has its group
            leads_group = os.getpgid(proc.pid) == proc.pid
    try:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(timeout=scaled(timeout))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    finally:
        if proc.returncode is None:  # interrupted while waiting: still reap it
            proc.kill()
            proc.wait()
        if leads_group:
            _kill_group_leftovers(proc.pid)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):  # unread input to a dead process
                    stream.close()
    return int(proc.returncode)


@contextlib.contextmanager
def reaped(proc: P, sig: int = signal.SIGTERM) -> Iterator[P]:
    """`with reaped(spawn(...)) as proc:` stops and reaps `proc` however the block ends."""
    try:
        yield proc
    finally:
        stop_process(proc, sig)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=scaled(1)):
            return True
    except (OSError, urllib.error.HTTPError):
        return False
