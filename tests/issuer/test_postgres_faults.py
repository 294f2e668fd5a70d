"""Real issuer processes on a real PostgreSQL (tests/support/postgres.py), under the faults a
shared database brings: the database restarting under load (exchanges fail fast with a 503 that
says so and succeed again once it is back, with no issuer restart), two replicas on one database
(a revocation or a disabled user through one is refused at the other on the very next
exchange), and one replica killed while the other keeps serving.

The replicas share the issuer URL, the platform key and the key-encryption key, as replicas
behind a load balancer do; their signing keys are shared through the store (sealed), so a
launch token minted at one is exchanged at the other.
"""

from __future__ import annotations

import base64
import json
import secrets
import signal
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.postgres import PASSWORD_ENV, PostgresCluster, running_cluster
from tests.support.processes import stop_process, wait_for
from tests.support.stack import IssuerProcess
from tests.support.timing import scaled

KEK_ENV = "CREDSIDECAR_HPC_KEK"  # the example config's default variable for the KEK
DB_TIMEOUT = 1.0  # [store] timeout: how long a request may wait for the database
# A request that takes longer than this is hanging, not failing fast (DB_TIMEOUT is 1 s).
CLIENT_DEADLINE = 15.0


@pytest.fixture
def cluster() -> Iterator[PostgresCluster]:
    """A cluster of the test's own, to stop and start without disturbing the session's."""
    with running_cluster() as cluster:
        yield cluster


def _on_postgres(issuer: IssuerProcess, url: str) -> None:
    with issuer.config.open("a", encoding="utf-8") as f:
        f.write(f'\n[store]\nurl = "{url}"\npassword_env = "{PASSWORD_ENV}"\n'
                f"timeout = {DB_TIMEOUT}\n")  # fmt: skip


def _replica_of(first: IssuerProcess, directory: Path) -> IssuerProcess:
    """A second issuer with `first`'s config (issuer URL, platform key, store) listening on a
    port of its own: a replica behind the same load balancer."""
    replica = IssuerProcess(directory)
    text = first.config.read_text(encoding="utf-8").replace(
        f'listen = "127.0.0.1:{first.port}"', f'listen = "127.0.0.1:{replica.port}"'
    )
    replica.config.write_text(text, encoding="utf-8")
    replica.api_key = first.api_key
    return replica


def _env(cluster: PostgresCluster, kek: str) -> dict[str, str]:
    return {PASSWORD_ENV: cluster.password, KEK_ENV: kek}


def _new_kek() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


def _exchange(issuer: IssuerProcess, token: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    """POST /v1/token at `issuer`: status, body, headers; fails if no answer within
    CLIENT_DEADLINE (a request must fail fast, not hang)."""
    data = urllib.parse.urlencode({
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "subject_token": token,
        "audience": "sts.amazonaws.com",
    }).encode()  # fmt: skip
    request = urllib.request.Request(
        f"{issuer.url}/v1/token", data=data,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=scaled(CLIENT_DEADLINE)) as resp:
            return resp.status, json.loads(resp.read()), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), dict(exc.headers)


def _admin(issuer: IssuerProcess, path: str) -> None:
    status, body = issuer.post(path, {"reason": "test"})
    assert status == 200, body


class Load:
    """Threads exchanging `token` at `issuer` in a loop; statuses counted ("no answer" for a
    request that got no HTTP answer at all: refused, reset or past the client's deadline)."""

    def __init__(self, issuer: IssuerProcess, token: str, threads: int = 2) -> None:
        self.statuses: Counter[int | str] = Counter()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(issuer, token))
                         for _ in range(threads)]  # fmt: skip

    def _run(self, issuer: IssuerProcess, token: str) -> None:
        while not self._stop.is_set():
            try:
                status: int | str = _exchange(issuer, token)[0]
            except OSError:
                status = "no answer"
            with self._lock:
                self.statuses[status] += 1

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()


def test_exchanges_fail_fast_while_the_database_restarts_and_recover_without_a_restart(
    tmp_path: Path, cluster: PostgresCluster
) -> None:
    db = cluster.create_database()
    issuer = IssuerProcess(tmp_path / "issuer")
    _on_postgres(issuer, cluster.url(db))
    issuer.start(**_env(cluster, _new_kek()))
    try:
        token = issuer.mint("alice", "run-db-restart")["token"]
        assert _exchange(issuer, token)[0] == 200
        with Load(issuer, token) as load:
            wait_for(lambda: load.statuses[200] >= 5, "exchanges under load", issuer.proc)
            cluster.stop()
            status, body, headers = _exchange(issuer, token)
            assert status == 503, body
            assert int(headers["Retry-After"]) >= 1
            message = body["error_description"]
            assert f"the issuer database postgresql://127.0.0.1:{cluster.port}/{db}" in message
            assert "requests resume when it is back" in message
            assert cluster.password not in message
            down = load.statuses[503]
            wait_for(lambda: load.statuses[503] >= down + 5, "503s under load", issuer.proc)
            cluster.start()
            wait_for(lambda: _exchange(issuer, token)[0] == 200,
                     "exchanges succeeding again once the database is back", issuer.proc,
                     issuer.log)  # fmt: skip
            back = load.statuses[200]
            wait_for(lambda: load.statuses[200] >= back + 5, "load succeeding again", issuer.proc)
        assert issuer.running  # the same process throughout
        assert set(load.statuses) <= {200, 503}, load.statuses  # no 500, none unanswered
    finally:
        issuer.stop()
    assert "Traceback" not in issuer.log.read_text()


@pytest.fixture
def replicas(tmp_path: Path, cluster: PostgresCluster) -> Iterator[tuple[IssuerProcess, ...]]:
    url = cluster.url(cluster.create_database())
    env = _env(cluster, _new_kek())
    a = IssuerProcess(tmp_path / "a")
    _on_postgres(a, url)
    a.start(**env)
    b = _replica_of(a, tmp_path / "b")
    try:
        b.start(**env)
        yield a, b
    finally:
        b.stop()
        a.stop()


def test_a_run_revoked_through_one_replica_is_refused_at_the_other_at_once(
    replicas: tuple[IssuerProcess, IssuerProcess],
) -> None:
    a, b = replicas
    token = a.mint("alice", "run-revoked")["token"]
    assert _exchange(b, token)[0] == 200  # minted at A, exchanged at B: keys are shared
    _admin(a, "/v1/runs/run-revoked/revoke")
    status, body, _ = _exchange(b, token)
    assert status == 403, body
    assert "run 'run-revoked' of user 'alice' was revoked (test)" in body["error_description"]


def test_a_user_disabled_through_one_replica_is_refused_at_the_other_at_once(
    replicas: tuple[IssuerProcess, IssuerProcess],
) -> None:
    a, b = replicas
    token = b.mint("alice", "run-disabled")["token"]
    assert _exchange(a, token)[0] == 200
    _admin(b, "/v1/users/alice/disable")
    status, body, _ = _exchange(a, token)
    assert status == 403, body
    assert "was disabled by an administrator" in body["error_description"]
    _admin(b, "/v1/users/alice/enable")
    assert _exchange(a, token)[0] == 200


def test_one_replica_killed_the_other_keeps_serving(
    replicas: tuple[IssuerProcess, IssuerProcess],
) -> None:
    a, b = replicas
    token = a.mint("alice", "run-kill")["token"]
    assert a.proc is not None
    with Load(b, token) as load:
        wait_for(lambda: load.statuses[200] >= 5, "exchanges at B", b.proc, b.log)
        stop_process(a.proc, signal.SIGKILL)  # no clean shutdown: its connections just vanish
        served = load.statuses[200]
        wait_for(lambda: load.statuses[200] >= served + 20, "B serving on", b.proc, b.log)
    assert set(load.statuses) == {200}, load.statuses
    assert _exchange(b, b.mint("alice", "run-after-kill")["token"])[0] == 200
