"""The issuer's SQLite store keeps its files, WAL companions included, private."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from credsidecar.issuer.store import Store


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
