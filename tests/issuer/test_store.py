"""The issuer's store: the SQLite file and its WAL companions stay private, and the store
contract (keys, secrets, revocations, access status, the HPC registry's SQL) holds on SQLite and
on PostgreSQL (a throwaway cluster, tests/support/postgres.py)."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from credsidecar.errors import BadRequest
from credsidecar.issuer.hpc_registry import STORED_KEY, Cluster, HpcRegistry
from credsidecar.issuer.store import KeyRecord, Revocation, SqliteStore, Store, migrate
from credsidecar.issuer.store.postgres import PostgresStore
from tests.support.postgres import PASSWORD_ENV


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    """The common 022: files created without care would be readable by every local user."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_database_and_its_wal_files_are_0600_while_in_use(tmp_path: Path) -> None:
    db = tmp_path / "issuer.db"
    store = Store(db)
    try:
        store.add_key("kid-1", "RS256", "active", 1_800_000_000)
        store.revoke_run("run-1", 1_800_000_000, "test")
        wal, shm = db.with_name("issuer.db-wal"), db.with_name("issuer.db-shm")
        assert wal.exists() and shm.exists()  # WAL mode, connection still open
        assert {p.name: mode_of(p) for p in (db, wal, shm)} == {
            "issuer.db": 0o600, "issuer.db-wal": 0o600, "issuer.db-shm": 0o600}  # fmt: skip
    finally:
        store.close()


def test_an_existing_database_open_to_others_is_made_private(tmp_path: Path) -> None:
    db = tmp_path / "issuer.db"
    Store(db).close()
    db.chmod(0o644)
    store = Store(db)
    try:
        store.add_key("kid-1", "RS256", "active", 1_800_000_000)
        assert mode_of(db) == 0o600
        assert mode_of(db.with_name("issuer.db-wal")) == 0o600
    finally:
        store.close()


# The store contract, on both backends ------------------------------------------------------


class Backend:
    """One database; `open()` is one more process's store on it (a replica, an admin command)."""

    def __init__(self, kind: str, tmp_path: Path, url: str | None) -> None:
        self.kind, self._path, self._url = kind, tmp_path / "issuer.db", url
        self._opened: list[Store] = []

    def open(self) -> Store:
        store: Store
        if self._url is None:
            store = SqliteStore(self._path)
        else:
            store = PostgresStore(self._url, password_env=PASSWORD_ENV, pool_size=4)
            migrate(store)
        self._opened.append(store)
        return store

    def close(self) -> None:
        for store in self._opened:
            store.close()


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    backend = Backend(request.param, tmp_path, url)
    yield backend
    backend.close()


@pytest.fixture
def any_store(backend: Backend) -> Store:
    return backend.open()


NOW = 1_800_000_000
LATER = 3_000_000_000  # past 2038: times are 64-bit in both dialects


def test_key_records_come_back_as_written_in_creation_order(any_store: Store) -> None:
    any_store.add_key("kid-b", "RS256", "active", NOW)
    any_store.add_key("kid-a", "ES256", "pending", NOW + 1, sealed_key=b"\x00sealed\xff",
                      activate_at=LATER)  # fmt: skip
    any_store.add_key("kid-0", "RS256", "retired", NOW)
    assert any_store.key_records() == [
        KeyRecord("kid-0", "RS256", "retired", NOW, None, 0),
        KeyRecord("kid-b", "RS256", "active", NOW, None, 0),
        KeyRecord("kid-a", "ES256", "pending", NOW + 1, None, 0, LATER, b"\x00sealed\xff"),
    ]
    any_store.delete_key("kid-0")
    assert [r.kid for r in any_store.key_records()] == ["kid-b", "kid-a"]


def test_activating_a_key_retires_the_active_one(any_store: Store) -> None:
    any_store.add_key("old", "RS256", "active", NOW)
    any_store.add_key("new", "RS256", "pending", NOW)
    any_store.activate_key("new", NOW + 5)
    states = {r.kid: (r.state, r.retired_at) for r in any_store.key_records()}
    assert states == {"old": ("retired", NOW + 5), "new": ("active", None)}


def test_a_staged_key_activates_once_due_and_only_once(any_store: Store) -> None:
    any_store.add_key("old", "RS256", "active", NOW)
    any_store.add_key("new", "RS256", "pending", NOW, activate_at=NOW + 60)
    assert any_store.activate_due(NOW + 59) is None
    assert any_store.activate_due(NOW + 60) == "new"
    assert any_store.activate_due(NOW + 61) is None
    states = {r.kid: r.state for r in any_store.key_records()}
    assert states == {"old": "retired", "new": "active"}


def test_replicas_activating_a_due_key_at_once_leave_exactly_one_winner(backend: Backend) -> None:
    replicas = [backend.open() for _ in range(4)]
    replicas[0].add_key("old", "RS256", "active", NOW)
    replicas[0].add_key("new", "RS256", "pending", NOW, activate_at=NOW)
    start = threading.Barrier(len(replicas))
    results: list[str | None] = []

    def activate(store: Store) -> None:
        start.wait()
        results.append(store.activate_due(NOW + 1))

    threads = [threading.Thread(target=activate, args=(r,)) for r in replicas]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (results.count("new"), results.count(None)) == (1, 3)
    assert [r.state for r in replicas[1].key_records() if r.state == "active"] == ["active"]


def test_the_latest_expiry_signed_is_kept_per_key(any_store: Store) -> None:
    any_store.add_key("a", "RS256", "active", NOW)
    any_store.add_key("b", "RS256", "retired", NOW)
    any_store.record_signature("a", NOW + 600)
    any_store.record_signature("a", NOW + 300)  # an earlier expiry does not lower it
    any_store.record_signatures({"a": NOW + 500, "b": LATER})
    any_store.record_signatures({})
    assert {r.kid: r.last_exp for r in any_store.key_records()} == {"a": NOW + 600, "b": LATER}


def test_the_first_writer_of_a_secret_wins(backend: Backend) -> None:
    one, other = backend.open(), backend.open()
    assert one.get_secret("ssh-ca") is None
    assert one.put_secret_if_absent("ssh-ca", b"\x01first") == b"\x01first"
    assert other.put_secret_if_absent("ssh-ca", b"\x02second") == b"\x01first"
    assert other.get_secret("ssh-ca") == b"\x01first"


def test_the_first_revocation_of_a_run_stands(any_store: Store) -> None:
    assert any_store.run_revocation("run-1") is None
    assert any_store.revoke_run("run-1", NOW, "leaked")
    assert not any_store.revoke_run("run-1", NOW + 1, "again")
    assert any_store.run_revocation("run-1") == Revocation(NOW, "leaked")


def test_disabling_a_user_again_replaces_the_reason_and_enabling_lifts_it(
    any_store: Store,
) -> None:
    any_store.disable_user("alice", NOW, "left")
    any_store.disable_user("alice", NOW + 1, None)
    assert any_store.user_disabled("alice") == Revocation(NOW + 1, None)
    assert any_store.enable_user("alice")
    assert not any_store.enable_user("alice")
    assert any_store.user_disabled("alice") is None


def test_access_status_reports_the_user_and_the_run_together(any_store: Store) -> None:
    assert any_store.access_status("alice", "run-1") == (None, None)
    any_store.revoke_run("run-1", NOW, "leaked")
    assert any_store.access_status("alice", "run-1") == (None, Revocation(NOW, "leaked"))
    assert any_store.access_status("alice", "run-2") == (None, None)
    any_store.disable_user("alice", NOW + 1, "left")
    assert any_store.access_status("alice", "run-1") == (
        Revocation(NOW + 1, "left"), Revocation(NOW, "leaked"))  # fmt: skip
    assert any_store.access_status("bob", "run-1") == (None, Revocation(NOW, "leaked"))


def test_a_revocation_through_one_replica_is_seen_by_another_at_once(backend: Backend) -> None:
    a, b = backend.open(), backend.open()
    assert b.access_status("alice", "run-1") == (None, None)
    a.revoke_run("run-1", NOW, "leaked")
    a.disable_user("bob", NOW, None)
    assert b.access_status("alice", "run-1") == (None, Revocation(NOW, "leaked"))
    assert b.access_status("bob", "run-2") == (Revocation(NOW, None), None)


def test_question_mark_placeholders_work_in_both_dialects(any_store: Store) -> None:
    assert (
        any_store.execute(
            "INSERT INTO revoked_runs (run, revoked_at, reason) VALUES (?, ?, ?)",
            ("100%-run", NOW, "50% done"),
        )
        == 1
    )
    rows = any_store.query(
        "SELECT run, reason FROM revoked_runs WHERE run LIKE '100%' AND revoked_at = ?", (NOW,)
    )
    assert rows == [("100%-run", "50% done")]


def test_the_hpc_registry_upserts_and_cascades_in_both_dialects(any_store: Store) -> None:
    registry = HpcRegistry(any_store)
    cluster = Cluster("hpc1", "slurm", "login.example", 22, STORED_KEY,
                      host_keys=("ssh-ed25519 AAAA",))  # fmt: skip
    registry.put_cluster(cluster, "owner", create=True)
    with pytest.raises(BadRequest, match="already exists"):
        registry.put_cluster(cluster, "owner", create=True)
    registry.put_credential("hpc1", "alice", "alice1", "ssh-ed25519 K1", b"sealed-1", None)
    registry.put_credential("hpc1", "alice", "alice2", "ssh-ed25519 K2", b"sealed-2", b"pp")
    assert registry.sealed_secrets("hpc1", "alice") == (b"sealed-2", b"pp")
    assert [c.username for c in registry.credentials()] == ["alice2"]
    any_store.execute("DELETE FROM hpc_clusters WHERE name = ?", ("hpc1",))
    assert registry.credentials() == []  # ON DELETE CASCADE: foreign keys are on in SQLite too
