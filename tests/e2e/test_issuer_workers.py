"""The issuer with `workers = 2` as real processes: a supervisor and two workers on one socket.

Which worker answered is read from the `X-Credsidecar-Worker` response header. To make one
particular worker answer, the other is paused (SIGSTOP): a stopped process accepts nothing, so
every new connection waits in the shared queue for the one that runs. Log lines are awaited as
they arrive on the supervisor's stderr (the workers write to the same pipe), never polled.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from credsidecar.issuer.sealing import new_kek_text
from credsidecar.issuer.workers import CRASH_LOOP_EXITS, WORKER_HEADER, WORKER_MODULE
from tests.support.ports import ADDRESS_IN_USE, PORT_ATTEMPTS, candidate_port, move_port
from tests.support.postgres import PASSWORD_ENV
from tests.support.processes import CLI, spawn, stop_process
from tests.support.stack import IssuerProcess
from tests.support.timing import scaled

WAIT_SECONDS = 60.0
READY = re.compile(r"issuer worker (\d+) \(pid (\d+)\) (?:ready|serving again)")


class WorkersIssuer:
    """`credsidecar issuer` with `workers = N`; its stderr (and its workers') read as it comes."""

    def __init__(self, directory: Path, workers: int = 2, tables: str = "") -> None:
        self.base = IssuerProcess(directory)  # the example config, its URL and API key
        config = self.base.config
        config.write_text(f"workers = {workers}\n" + config.read_text() + tables)
        self.proc: subprocess.Popen[bytes] | None = None
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader: threading.Thread | None = None
        self.pids: dict[int, int] = {}  # worker number -> pid of its current process

    def start(self) -> None:
        """Starts it and returns once it logs "listening on" (every worker serving); another
        port if its candidate was taken meanwhile (as tests.support.ports does)."""
        for attempt in range(1, PORT_ATTEMPTS + 1):
            self.proc = spawn([*CLI, "issuer", "--config", str(self.base.config)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
            self._queue = queue.Queue()
            self._reader = threading.Thread(target=self._read, args=(self.proc,), daemon=True)
            self._reader.start()
            try:
                self.expect("listening on")
                return
            except AssertionError:
                stop_process(self.proc)
                said = "\n".join(self.lines).lower()
                if attempt == PORT_ATTEMPTS or ADDRESS_IN_USE not in said:
                    raise
                port = candidate_port()
                move_port(self.base.config, self.base.port, port)
                self.base.port, self.base.url = port, f"http://127.0.0.1:{port}"

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            self._queue.put(raw.decode("utf-8", "replace").rstrip("\n"))
        self._queue.put(None)  # end of file: the supervisor and every worker have exited

    def expect(self, *fragments: str, timeout: float = WAIT_SECONDS) -> str:
        """The next line holding every fragment (noting worker pids on the way); fails when the
        output ends first, or after `scaled(timeout)` seconds."""
        deadline = time.monotonic() + scaled(timeout)
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line with {fragments} in {scaled(timeout):.0f} s:\n"
                                     + "\n".join(self.lines[-30:])) from None  # fmt: skip
            if line is None:
                self._queue.put(None)  # later calls see the end too
                raise AssertionError(f"output ended before a line with {fragments}:\n"
                                     + "\n".join(self.lines[-30:]))  # fmt: skip
            self.lines.append(line)
            if (ready := READY.search(line)) is not None:
                self.pids[int(ready[1])] = int(ready[2])
            if all(fragment in line for fragment in fragments):
                return line

    def wait_for_end(self) -> int:
        """Reads the output to its end (every process that held it has exited); the exit
        status of the supervisor."""
        with contextlib.suppress(AssertionError):
            self.expect("\x00 never printed \x00")
        assert self.proc is not None
        return self.proc.wait(timeout=scaled(WAIT_SECONDS))

    def call(self, path: str, body: dict[str, Any], form: bool = False) -> tuple[int, str, Any]:
        """(status, the worker that answered, JSON body) of a POST on a new connection."""
        if form:
            data = urllib.parse.urlencode(body).encode()
            headers = {"Content-Type": "application/x-www-form-urlencoded"}
        else:
            data = json.dumps(body).encode()
            headers = {"Content-Type": "application/json",
                       "Authorization": f"Bearer {self.base.api_key}"}  # fmt: skip
        request = urllib.request.Request(self.base.url + path, data=data, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=scaled(30)) as resp:
                return resp.status, resp.headers[WORKER_HEADER], json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers[WORKER_HEADER], json.loads(exc.read())

    def mint(self, run: str) -> str:
        launch = {"user": "alice", "run": run, "workspace": "genomics"}
        status, _, body = self.call("/v1/launch-tokens", launch)
        assert status == 201, body
        return str(body["token"])

    def exchange(self, token: str) -> tuple[int, str, Any]:
        form = {
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
            "subject_token": token,
            "audience": "sts.amazonaws.com",
        }
        return self.call("/v1/token", form, form=True)

    @contextlib.contextmanager
    def paused(self, pid: int) -> Iterator[None]:
        """`pid` stopped (SIGSTOP) for the block, continued however it ends."""
        os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGCONT)  # a test that failed while paused
            stop_process(self.proc)  # and whatever is left of its process group
        if self._reader is not None:
            self._reader.join(timeout=scaled(10))


@pytest.fixture
def issuer(tmp_path: Path) -> Iterator[WorkersIssuer]:
    process = WorkersIssuer(tmp_path)
    try:
        process.start()
        yield process
    finally:
        process.stop()


def is_worker(pid: int) -> bool:
    """Whether `pid` is (still) an issuer worker: not merely a reused process id."""
    try:
        return WORKER_MODULE in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


@pytest.fixture(params=["sqlite", "postgres"])
def issuer_on_each_store(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[WorkersIssuer]:
    """Two workers on the SQLite file, or on a PostgreSQL database (keys sealed in it)."""
    tables = ""
    if request.param == "postgres":
        url = request.getfixturevalue("postgres_url")
        tables = f'\n[store]\nurl = "{url}"\npassword_env = "{PASSWORD_ENV}"\n'
        monkeypatch.setenv("CREDSIDECAR_HPC_KEK", new_kek_text())
    process = WorkersIssuer(tmp_path, tables=tables)
    try:
        process.start()
        yield process
    finally:
        process.stop()


def test_both_workers_answer_and_a_revocation_at_one_is_refused_at_the_other(
    issuer_on_each_store: WorkersIssuer,
) -> None:
    issuer = issuer_on_each_store
    assert set(issuer.pids) == {1, 2}
    token = issuer.mint("run-shared")
    with issuer.paused(issuer.pids[2]):
        status, worker, body = issuer.exchange(token)
        assert (status, worker) == (200, "1"), body
        status, worker, body = issuer.call("/v1/runs/run-shared/revoke", {"reason": "test"})
        assert (status, worker) == (200, "1"), body
    with issuer.paused(issuer.pids[1]):
        status, worker, body = issuer.exchange(token)
    assert (status, worker) == (403, "2"), body
    assert "run 'run-shared'" in body["error_description"]
    assert "revoked" in body["error_description"]


def test_each_worker_holds_its_share_of_a_rate_limit(tmp_path: Path) -> None:
    """Burst 4 per run on a node of two workers: 2 in each worker's bucket."""
    process = WorkersIssuer(
        tmp_path, tables="\n[rate_limits]\nper_run = { rate = 0.01, burst = 4 }\n"
    )
    try:
        process.start()
        with process.paused(process.pids[2]):
            token = process.mint("run-limited")  # one of worker 1's two
            assert process.exchange(token)[:2] == (200, "1")
            status, worker, body = process.exchange(token)
            assert (status, worker) == (429, "1"), body
        with process.paused(process.pids[1]):
            assert process.exchange(token)[:2] == (200, "2")  # its own bucket
    finally:
        process.stop()


def test_a_killed_worker_is_restarted_and_the_other_serves_meanwhile(
    issuer: WorkersIssuer,
) -> None:
    assert issuer.proc is not None
    killed = issuer.pids[1]
    # The supervisor paused, nothing can restart worker 1: worker 2 alone serves.
    with issuer.paused(issuer.proc.pid):
        os.kill(killed, signal.SIGKILL)
        status, worker, body = issuer.exchange(issuer.mint("run-meanwhile"))
        assert (status, worker) == (200, "2"), body
    issuer.expect("issuer worker 1", f"(pid {killed}) was killed by SIGKILL", "restarting it")
    issuer.expect("issuer worker 1 (pid", "serving again")
    assert issuer.pids[1] != killed
    with issuer.paused(issuer.pids[2]):  # the new worker 1 answers
        status, worker, body = issuer.exchange(issuer.mint("run-after"))
    assert (status, worker) == (200, "1"), body


def test_sighup_reaches_every_worker_and_sigterm_stops_them_all_with_status_0(
    issuer: WorkersIssuer,
) -> None:
    assert issuer.proc is not None
    workers = dict(issuer.pids)
    issuer.proc.send_signal(signal.SIGHUP)
    reloaded = {issuer.expect("policy reloaded").split("[worker ")[1][0] for _ in range(2)}
    assert reloaded == {"1", "2"}
    issuer.proc.send_signal(signal.SIGTERM)
    issuer.expect("stopping the issuer's 2 workers")
    assert issuer.wait_for_end() == 0
    assert not any(is_worker(pid) for pid in workers.values())
    assert not any("restarting" in line for line in issuer.lines)


def test_workers_stop_when_the_supervisor_is_killed(issuer: WorkersIssuer) -> None:
    assert issuer.proc is not None
    workers = dict(issuer.pids)
    issuer.proc.kill()
    issuer.expect("the issuer supervisor is gone; this worker stops")
    issuer.wait_for_end()  # the pipe ends once no worker holds it
    assert not any(is_worker(pid) for pid in workers.values())


def test_a_crash_looping_worker_stops_the_issuer_with_a_readable_message(
    issuer: WorkersIssuer,
) -> None:
    assert issuer.proc is not None
    other = issuer.pids[2]
    for exits in range(1, CRASH_LOOP_EXITS + 1):
        os.kill(issuer.pids[1], signal.SIGKILL)
        if exits < CRASH_LOOP_EXITS:
            issuer.expect("issuer worker 1 (pid", "serving again")
    message = issuer.expect("credsidecar: issuer worker 1 exited")
    assert f"exited {CRASH_LOOP_EXITS} times within 60 s" in message
    assert "killed by SIGKILL" in message and "start again" in message
    assert issuer.wait_for_end() == 2
    assert not is_worker(other)
