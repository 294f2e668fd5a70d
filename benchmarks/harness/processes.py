"""The children a benchmark starts, waiting for them, and the small HTTP and /proc readers the
other modules use.

Starting and stopping children is the test suite's (`tests/support/processes.py`): each child
leads its own process group, so stopping it also ends whatever it spawned. Waiting is our own
`wait_until`: time to ready is measured by it, so it polls every few milliseconds where the
tests' `wait_for` polls every 50 ms.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]  # the repository
if str(ROOT) not in sys.path:  # for tests/support, which the benchmarks share with the tests
    sys.path.insert(0, str(ROOT))

from tests.support.processes import spawn, stop_process  # noqa: E402

BENCHMARKS = ROOT / "benchmarks"
PY = sys.executable
CLI = [PY, "-m", "credsidecar"]
OBTAINED = "credentials.obtained"


def child_argv(role: str, *args: str) -> list[str]:
    """Starts this package's `role` child (`baseline`, `burst`; see `harness.child`)."""
    return [PY, "-m", "harness.child", role, *args]


def child_env(**extra: str) -> dict[str, str]:
    """This environment plus `extra`, with the benchmarks on the path so `harness` imports."""
    paths = [str(BENCHMARKS), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, **extra, "PYTHONPATH": os.pathsep.join(paths)}


class Processes:
    """Every child this benchmark starts; `stop_all` stops each one and its process group."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(
        self, argv: list[str], log: Path, core: int | None, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """`argv` pinned to `core` (taskset execs it, so the PID is the program's own), with
        stdout and stderr appended to `log`."""
        prefix = ["taskset", "-c", str(core)] if core is not None else []
        with log.open("ab") as out:
            proc: subprocess.Popen[bytes] = spawn(
                [*prefix, *argv], stdout=out, stderr=out, stdin=subprocess.DEVNULL, cwd=ROOT,
                env=env,
            )  # fmt: skip
        self.procs.append(proc)
        return proc

    @staticmethod
    def stop(proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
        """SIGTERM, then SIGKILL after `timeout` (scaled to this machine's speed); reaped."""
        stop_process(proc, timeout=timeout)

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            with contextlib.suppress(Exception):
                self.stop(proc)


def tail(log: Path, chars: int = 2000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else ""


def wait_until(
    predicate: Callable[[], object],
    what: str,
    proc: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
    timeout: float = 60,
    interval: float = 0.05,
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"{what}: process exited {proc.returncode}\n{tail(log) if log else ''}"
            )
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}\n{tail(log) if log else ''}")
        time.sleep(interval)


def fetch(
    method: str,
    url: str,
    headers: dict[str, str] | None = None,
    data: bytes | None = None,
    timeout: float = 10,
    context: ssl.SSLContext | None = None,
) -> tuple[int, bytes, dict[str, str]]:
    """Status, body and response headers."""
    # Only ever the URLs of servers this benchmark started.
    request = urllib.request.Request(url, data=data, headers=headers or {}, method=method)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as resp:  # noqa: S310
            return resp.status, resp.read(), dict(resp.headers.items())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers.items())


def get_ok(url: str, headers: dict[str, str] | None = None) -> tuple[bytes, dict[str, str]]:
    """Body and headers of a GET that must answer 200 (a warm-up or a shape check)."""
    status, body, response_headers = fetch("GET", url, headers)
    if status != 200:
        raise RuntimeError(f"GET {url}: HTTP {status} {body[:300]!r}")
    return body, response_headers


def http(
    method: str,
    url: str,
    headers: dict[str, str] | None = None,
    data: bytes | None = None,
    timeout: float = 10,
) -> tuple[int, bytes]:
    status, body, _ = fetch(method, url, headers, data, timeout)
    return status, body


def http_ok(url: str) -> bool:
    try:
        return http("GET", url, timeout=1)[0] == 200
    except OSError:
        return False


def read_events(path: Path, event: str, match: Mapping[str, object] | None = None) -> list[Any]:
    """The audit records of `event` whose fields equal those in `match`."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if record.get("event") == event and all(
                record.get(k) == v for k, v in (match or {}).items()
            ):
                out.append(record)
    return out


def proc_status(pid: int) -> dict[str, str]:
    fields = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def kib_to_mb(value: str | None) -> float | None:
    if not value:
        return None
    return int(value.split()[0]) / 1024


@contextlib.contextmanager
def children(keep: bool, prefix: str) -> Iterator[tuple[Processes, Path]]:
    """A work directory (`prefix`...) and the children started in it, all stopped on the way
    out (SIGTERM too); the directory is removed unless `keep`."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = Path(tempfile.mkdtemp(prefix=prefix))
    procs = Processes()
    try:
        yield procs, work
    finally:
        procs.stop_all()
        if keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
