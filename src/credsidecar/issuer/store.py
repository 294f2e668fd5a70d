"""The issuer's durable state in one SQLite file: key metadata, revoked runs, disabled users
(and, through `ensure_schema`/`execute`/`query`, the HPC registry's tables).

Several processes share it (the running issuer and admin commands such as `rotate-key`), so
every write is a short transaction and readers always ask the database, never a stale copy.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["KeyRecord", "Revocation", "Store"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    kid          TEXT PRIMARY KEY,
    alg          TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('pending', 'active', 'retired')),
    created_at   INTEGER NOT NULL,
    retired_at   INTEGER,
    last_exp     INTEGER NOT NULL DEFAULT 0   -- latest expiry of any token this key signed
);
CREATE TABLE IF NOT EXISTS revoked_runs (
    run          TEXT PRIMARY KEY,
    revoked_at   INTEGER NOT NULL,
    reason       TEXT
);
CREATE TABLE IF NOT EXISTS disabled_users (
    user_id      TEXT PRIMARY KEY,
    disabled_at  INTEGER NOT NULL,
    reason       TEXT
);
"""


@dataclass(frozen=True)
class KeyRecord:
    kid: str
    alg: str
    state: str
    created_at: int
    retired_at: int | None
    last_exp: int


@dataclass(frozen=True)
class Revocation:
    at: int
    reason: str | None


# SQLite gives its -wal, -shm and -journal files the database file's permission bits.
_COMPANIONS = ("-wal", "-shm", "-journal")


def _create_private(path: Path) -> None:
    """Creates the database file 0600 before SQLite does (which would use the umask, and its
    WAL files would copy that mode); tightens an existing one of ours and its companions."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600))  # fmt: skip
    for name in (path.name, *(path.name + suffix for suffix in _COMPANIONS)):
        try:
            fd = os.open(path.with_name(name), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:  # missing, or a link we leave alone; SQLite reports real trouble
            continue
        try:
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and st.st_mode & 0o077:
                os.fchmod(fd, 0o600)
        finally:
            os.close(fd)


class Store:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        _create_private(path)
        # One connection shared across threads, serialised by a lock; the busy timeout covers
        # another process (an admin command) holding the write lock for a moment.
        self._db = sqlite3.connect(path, timeout=10, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # for other modules' tables (hpc_registry.py) ----------------------------------------------

    def ensure_schema(self, script: str) -> None:
        with self._lock:
            self._db.executescript(script)

    def execute(self, sql: str, params: Sequence[object] = ()) -> int:
        """One statement in its own transaction; returns the number of rows changed."""
        with self._lock:
            return self._db.execute(sql, params).rowcount

    def query(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return list(self._db.execute(sql, params).fetchall())

    # keys -------------------------------------------------------------------------------------

    def key_records(self) -> list[KeyRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT kid, alg, state, created_at, retired_at, last_exp FROM keys "
                "ORDER BY created_at, rowid"
            ).fetchall()
        return [KeyRecord(*row) for row in rows]

    def add_key(self, kid: str, alg: str, state: str, now: int) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO keys (kid, alg, state, created_at) VALUES (?, ?, ?, ?)",
                (kid, alg, state, now),
            )

    def activate_key(self, kid: str, now: int) -> None:
        """Makes `kid` the one active key; the previous active key becomes retired."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "UPDATE keys SET state = 'retired', retired_at = ? WHERE state = 'active'",
                    (now,),
                )
                self._db.execute("UPDATE keys SET state = 'active' WHERE kid = ?", (kid,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def record_signature(self, kid: str, exp: int) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE keys SET last_exp = MAX(last_exp, ?) WHERE kid = ?", (exp, kid)
            )

    def delete_key(self, kid: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM keys WHERE kid = ?", (kid,))

    # revocation -------------------------------------------------------------------------------

    def revoke_run(self, run: str, now: int, reason: str | None) -> bool:
        """Returns False when the run was already revoked (the first revocation stands)."""
        with self._lock:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO revoked_runs (run, revoked_at, reason) VALUES (?, ?, ?)",
                (run, now, reason),
            )
        return cur.rowcount == 1

    def run_revocation(self, run: str) -> Revocation | None:
        with self._lock:
            row = self._db.execute(
                "SELECT revoked_at, reason FROM revoked_runs WHERE run = ?", (run,)
            ).fetchone()
        return Revocation(*row) if row else None

    def disable_user(self, user_id: str, now: int, reason: str | None) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO disabled_users (user_id, disabled_at, reason) "
                "VALUES (?, ?, ?)",
                (user_id, now, reason),
            )

    def enable_user(self, user_id: str) -> bool:
        with self._lock:
            cur = self._db.execute("DELETE FROM disabled_users WHERE user_id = ?", (user_id,))
        return cur.rowcount == 1

    def user_disabled(self, user_id: str) -> Revocation | None:
        with self._lock:
            row = self._db.execute(
                "SELECT disabled_at, reason FROM disabled_users WHERE user_id = ?", (user_id,)
            ).fetchone()
        return Revocation(*row) if row else None
