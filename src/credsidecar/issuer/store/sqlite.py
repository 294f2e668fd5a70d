"""The store in one SQLite file (the default: one node, and `dev`).

Several processes share it (the running issuer, its worker processes, and admin commands such
as `rotate-key`), so every write is a short transaction and readers always ask the database,
never a stale copy. One connection per store, shared by threads under a lock; the busy timeout
covers another process holding the write lock for a moment.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from credsidecar.errors import Unavailable
from credsidecar.issuer.store.base import Dialect, Store

__all__ = ["SqliteStore"]

BUSY_TIMEOUT = 10.0  # seconds another process may hold the write lock before we give up
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


class _Tx:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def execute(self, sql: str, params: Sequence[object] = ()) -> int:
        return self._db.execute(sql, params).rowcount

    def query(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        return list(self._db.execute(sql, params).fetchall())


class SqliteStore(Store):
    dialect: Dialect = "sqlite"

    def __init__(self, path: Path, *, migrate: bool = True) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _create_private(path)
            self._db = sqlite3.connect(
                path, timeout=BUSY_TIMEOUT, check_same_thread=False, isolation_level=None
            )
        except (OSError, sqlite3.Error) as exc:
            raise self._unavailable("opening it", exc) from exc
        # Reentrant: a statement through `execute` inside a transaction joins it.
        self._lock = threading.RLock()
        with self._guard("opening it"):
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA foreign_keys=ON")  # the HPC registry's ON DELETE CASCADE
        if migrate:
            from credsidecar.issuer.store.migrations import migrate as apply

            apply(self)

    @property
    def name(self) -> str:
        return str(self.path)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _unavailable(self, what: str, exc: BaseException) -> Unavailable:
        return Unavailable(
            f"the issuer database {self.path} failed while {what} ({exc}); requests resume "
            "when it is usable again"
        )

    @contextlib.contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        with self._lock:
            try:
                yield
            except sqlite3.Error as exc:
                raise self._unavailable(what, exc) from exc

    @contextlib.contextmanager
    def _transaction(self, lock: int | None = None) -> Iterator[_Tx]:
        # Every transaction here writes: BEGIN IMMEDIATE takes the write lock up front, so two
        # processes never both read and then fail to upgrade to write.
        with self._guard("writing"):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield _Tx(self._db)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def execute(self, sql: str, params: Sequence[object] = ()) -> int:
        with self._guard("writing"):
            return self._db.execute(sql, params).rowcount

    def query(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        with self._guard("reading"):
            return list(self._db.execute(sql, params).fetchall())
