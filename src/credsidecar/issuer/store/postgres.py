"""The store in a PostgreSQL database shared by every worker and replica (`[store] url`).

psycopg 3 with a psycopg-pool connection pool (`pip install 'credsidecar[postgres]'`; this
module is imported only when a URL is configured):
- connections are autocommit, so a single statement is one round trip; transactions are
  explicit (`_transaction`), serialised where needed by advisory locks;
- the pool checks a connection before lending it (`_check`), so connections a database
  restart broke are replaced instead of failing requests: a server closing a connection says
  so on it, so a connection with something to read while idle gets psycopg-pool's
  `check_connection` round trip, and the others (nearly all) none;
- TCP's user timeout fails a connection whose peer vanished without closing it (a host or
  network gone) after `timeout`, rather than after the kernel's minutes of retransmissions;
- waiting for a connection, connecting, and every statement are bounded by `[store] timeout`;
  once connecting has failed (the database is down), requests wait only `DOWN_WAIT` for a
  connection until one succeeds again: during an outage they fail fast with `Unavailable`
  (503 with Retry-After) instead of queueing behind each other, and the pool's reconnection
  attempts, at most `timeout` apart, bring them back without a restart;
- the password comes from the variable `[store] password_env` names (or libpq's PGPASSFILE),
  passed as a connection parameter: it is in no URL, message or log.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import select
import threading
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from credsidecar.errors import ConfigError, Unavailable
from credsidecar.issuer.store.base import Dialect, Store

__all__ = ["APPLICATION_NAME", "DOWN_WAIT", "PostgresStore", "to_pyformat"]

APPLICATION_NAME = "credsidecar-issuer"
# How long a request waits for a connection while the database is known to be down (the last
# connection attempt failed): long enough for a connection the pool is just opening.
DOWN_WAIT = 0.25


@functools.lru_cache(maxsize=512)  # the SQL texts are the code's own: a few dozen
def to_pyformat(sql: str) -> str:
    """`?` placeholders as psycopg's `%s` (a literal `%` doubled)."""
    return sql.replace("%", "%%").replace("?", "%s")


class _Tx:
    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[object] = ()) -> int:
        return self._conn.execute(to_pyformat(sql).encode(), params).rowcount

    def query(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        return self._conn.execute(to_pyformat(sql).encode(), params).fetchall()


def _check(conn: psycopg.Connection[Any]) -> None:
    """Raises when `conn` is broken. An idle connection has nothing to read unless the server
    sent something: mostly that it is closing it (a restart, a failover, an administrator),
    which the full check, one round trip, then finds. Nothing to read: nothing to check."""
    if conn.closed or conn.broken:
        raise psycopg.OperationalError("the connection is closed")
    poll = select.poll()
    poll.register(conn.fileno(), select.POLLIN)
    if poll.poll(0):
        ConnectionPool.check_connection(conn)


class _Pool(ConnectionPool[psycopg.Connection[Any]]):
    """Remembers whether its last attempt to connect failed: the database is down."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.down = threading.Event()
        super().__init__(*args, **kwargs)

    def _connect(self, timeout: float | None = None) -> psycopg.Connection[Any]:
        try:
            conn = super()._connect(timeout)
        except BaseException:
            self.down.set()
            raise
        self.down.clear()
        return conn


class PostgresStore(Store):
    dialect: Dialect = "postgres"

    def __init__(
        self,
        url: str,
        *,
        password_env: str | None = None,
        pool_size: int = 10,
        timeout: float = 5.0,
    ) -> None:
        parts = urlsplit(url)
        self._name = (
            f"postgresql://{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path or '/'}"
        )
        self.timeout = timeout
        kwargs: dict[str, Any] = {
            "autocommit": True,
            "application_name": APPLICATION_NAME,
            "connect_timeout": max(1, math.ceil(timeout)),
            # A statement (or a lock wait) that outlasts the timeout is cancelled by the server.
            "options": f"-c statement_timeout={int(timeout * 1000)}",
            "tcp_user_timeout": int(timeout * 1000),
        }
        if password_env is not None:
            password = os.environ.get(password_env)
            if password is None:
                raise ConfigError(
                    f"[store] password_env names {password_env}, which is not set: set it to "
                    "the database password in the issuer's environment",
                    path=("store", "password_env"),
                )
            kwargs["password"] = password
        self._pool = _Pool(
            url,
            kwargs=kwargs,
            min_size=1,
            max_size=pool_size,
            timeout=timeout,
            # Reconnection attempts back off exponentially; giving up after `timeout` starts
            # the next request's attempt afresh, so they stay at most `timeout` apart.
            reconnect_timeout=timeout,
            check=_check,
            name=APPLICATION_NAME,
            open=False,
        )
        self._pool.open(wait=False)

    @property
    def name(self) -> str:
        return self._name

    def close(self) -> None:
        self._pool.close()

    def _unavailable(self, what: str, exc: BaseException) -> Unavailable:
        if isinstance(exc, PoolTimeout):
            why = (
                f"no connection within {self.timeout:g} s: it is down, unreachable, refusing "
                "the issuer's login, or every pooled connection is busy"
            )
        elif isinstance(exc, psycopg.errors.QueryCanceled):
            why = f"a statement took longer than {self.timeout:g} s"
        elif isinstance(exc, psycopg.OperationalError):
            why = "the connection failed or was lost"
        else:
            state = getattr(exc, "sqlstate", None)
            why = f"{type(exc).__name__}" + (f", SQLSTATE {state}" if state else "")
        return Unavailable(
            f"the issuer database {self._name} failed while {what} ({why}); requests "
            "resume when it is back"
        )

    @contextlib.contextmanager
    def _connection(self, what: str) -> Iterator[psycopg.Connection[Any]]:
        wait = min(DOWN_WAIT, self.timeout) if self._pool.down.is_set() else self.timeout
        try:
            with self._pool.connection(timeout=wait) as conn:
                yield conn
        except psycopg.Error as exc:
            raise self._unavailable(what, exc) from exc

    @contextlib.contextmanager
    def _transaction(self, lock: int | None = None) -> Iterator[_Tx]:
        with self._connection("writing") as conn, conn.transaction():
            if lock is not None:
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock,))
            yield _Tx(conn)

    def execute(self, sql: str, params: Sequence[object] = ()) -> int:
        with self._connection("writing") as conn:
            return _Tx(conn).execute(sql, params)

    def query(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        with self._connection("reading") as conn:
            return _Tx(conn).query(sql, params)
