"""What every store does, written once in SQL both SQLite and PostgreSQL accept.

A backend supplies connections and transactions (`_transaction`, `execute`, `query`), with `?`
placeholders in both dialects; everything the issuer keeps is read and written here:
- key metadata: which signing key is pending, active or retired, the sealed private key when
  keys are shared through the store, when a staged key activates, the latest expiry each signed;
- revoked runs and disabled users, read on every mint and exchange (`access_status`: one round
  trip for both), so a revocation made through any replica applies at every replica at once;
- small shared secrets (`secrets`: the first writer wins), and the HPC registry's tables.

The methods are synchronous: the issuer calls them from worker threads, never on the event loop.
Any database failure is `Unavailable` (503 with Retry-After), naming the database, never a
password.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Literal, Protocol

__all__ = ["KEYS_LOCK", "MIGRATIONS_LOCK", "KeyRecord", "Revocation", "Store", "Tx"]

Dialect = Literal["sqlite", "postgres"]
# PostgreSQL advisory lock ids (any 64-bit numbers; these spell "csk-keys", "csk-migr").
KEYS_LOCK = 0x63736B2D6B657973
MIGRATIONS_LOCK = 0x63736B2D6D696772


@dataclass(frozen=True)
class KeyRecord:
    kid: str
    alg: str
    state: str
    created_at: int
    retired_at: int | None
    last_exp: int
    activate_at: int | None = None  # a staged (pending) key activates at this time, if set
    sealed_key: bytes | None = None  # the private key sealed with the KEK, when shared


@dataclass(frozen=True)
class Revocation:
    at: int
    reason: str | None


class Tx(Protocol):
    """Statements inside one transaction."""

    def execute(self, sql: str, params: Sequence[object] = ()) -> int: ...

    def query(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]: ...


class Store:
    """The issuer's durable state. `Store(path)` opens the SQLite file at `path` (what it
    always did); `open_store(config)` picks SQLite or PostgreSQL from the configuration."""

    dialect: Dialect

    def __new__(cls, *args: Any, **kwargs: Any) -> Store:
        if cls is Store:  # Store(path): the default backend
            from credsidecar.issuer.store.sqlite import SqliteStore

            return object.__new__(SqliteStore)
        return object.__new__(cls)

    # what a backend supplies ------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The database, for messages: a file path, or host:port/dbname (never a password)."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def _transaction(self, lock: int | None = None) -> AbstractContextManager[Tx]:
        """One transaction that commits on leaving the block (rolls back on an exception).
        Writers that must not interleave pass a `lock` id: PostgreSQL takes that advisory
        lock for the transaction; SQLite's write lock (BEGIN IMMEDIATE) serialises them all."""
        raise NotImplementedError

    def execute(self, sql: str, params: Sequence[object] = ()) -> int:
        """One statement in its own transaction; returns the number of rows changed."""
        raise NotImplementedError

    def query(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    # keys -------------------------------------------------------------------------------------

    def key_records(self) -> list[KeyRecord]:
        rows = self.query(
            "SELECT kid, alg, state, created_at, retired_at, last_exp, activate_at, sealed_key "
            "FROM keys ORDER BY created_at, kid"
        )
        return [_key_record(row) for row in rows]

    def add_key(
        self,
        kid: str,
        alg: str,
        state: str,
        now: int,
        *,
        sealed_key: bytes | None = None,
        activate_at: int | None = None,
    ) -> None:
        self.execute(
            "INSERT INTO keys (kid, alg, state, created_at, activate_at, sealed_key) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (kid, alg, state, now, activate_at, sealed_key),
        )

    def activate_key(self, kid: str, now: int) -> None:
        """Makes `kid` the one active key; the previous active key becomes retired."""
        with self._transaction(KEYS_LOCK) as tx:
            _activate(tx, kid, now)

    def activate_due(self, now: int) -> str | None:
        """Activates the pending key whose `activate_at` has come (the earliest, if several),
        as `activate_key` does, and returns its kid; None when none is due. Replicas may all
        call it at once: the key lock lets exactly one of them activate a given key."""
        with self._transaction(KEYS_LOCK) as tx:
            rows = tx.query(
                "SELECT kid FROM keys WHERE state = 'pending' AND activate_at IS NOT NULL "
                "AND activate_at <= ? ORDER BY activate_at, created_at, kid LIMIT 1",
                (now,),
            )
            if not rows:
                return None
            kid = str(rows[0][0])
            _activate(tx, kid, now)
            return kid

    def record_signature(self, kid: str, exp: int) -> None:
        """`last_exp = max(last_exp, exp)`; no write at all when it is not later."""
        self.execute("UPDATE keys SET last_exp = ? WHERE kid = ? AND last_exp < ?", (exp, kid, exp))

    def record_signatures(self, exps: Mapping[str, int]) -> None:
        """`record_signature` for several keys in one transaction (a batch from many signings)."""
        if not exps:
            return
        with self._transaction() as tx:
            for kid, exp in sorted(exps.items()):  # one lock order for every writer
                tx.execute(
                    "UPDATE keys SET last_exp = ? WHERE kid = ? AND last_exp < ?", (exp, kid, exp)
                )

    def delete_key(self, kid: str) -> None:
        self.execute("DELETE FROM keys WHERE kid = ?", (kid,))

    # shared secrets ---------------------------------------------------------------------------

    def get_secret(self, name: str) -> bytes | None:
        rows = self.query("SELECT value FROM secrets WHERE name = ?", (name,))
        return bytes(rows[0][0]) if rows else None

    def put_secret_if_absent(self, name: str, value: bytes) -> bytes:
        """Stores `value` unless `name` already has one; returns the stored value (the first
        writer's, when replicas race)."""
        with self._transaction() as tx:
            tx.execute(
                "INSERT INTO secrets (name, value, created_at) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO NOTHING",
                (name, value, int(time.time())),
            )
            rows = tx.query("SELECT value FROM secrets WHERE name = ?", (name,))
        return bytes(rows[0][0])

    # revocation -------------------------------------------------------------------------------

    def revoke_run(self, run: str, now: int, reason: str | None) -> bool:
        """Returns False when the run was already revoked (the first revocation stands)."""
        changed = self.execute(
            "INSERT INTO revoked_runs (run, revoked_at, reason) VALUES (?, ?, ?) "
            "ON CONFLICT (run) DO NOTHING",
            (run, now, reason),
        )
        return changed == 1

    def run_revocation(self, run: str) -> Revocation | None:
        rows = self.query("SELECT revoked_at, reason FROM revoked_runs WHERE run = ?", (run,))
        return Revocation(*rows[0]) if rows else None

    def disable_user(self, user_id: str, now: int, reason: str | None) -> None:
        self.execute(
            "INSERT INTO disabled_users (user_id, disabled_at, reason) VALUES (?, ?, ?) "
            "ON CONFLICT (user_id) DO UPDATE SET disabled_at = excluded.disabled_at, "
            "reason = excluded.reason",
            (user_id, now, reason),
        )

    def enable_user(self, user_id: str) -> bool:
        return self.execute("DELETE FROM disabled_users WHERE user_id = ?", (user_id,)) == 1

    def user_disabled(self, user_id: str) -> Revocation | None:
        rows = self.query(
            "SELECT disabled_at, reason FROM disabled_users WHERE user_id = ?", (user_id,)
        )
        return Revocation(*rows[0]) if rows else None

    def access_status(self, user_id: str, run: str) -> tuple[Revocation | None, Revocation | None]:
        """(the user's disabling, the run's revocation), each None when absent: what every
        mint and exchange checks, in one round trip."""
        disabled = revoked = None
        for kind, at, reason in self.query(_ACCESS_STATUS, (user_id, run)):
            if kind == "u":
                disabled = Revocation(at, reason)
            else:
                revoked = Revocation(at, reason)
        return disabled, revoked


_ACCESS_STATUS = (
    "SELECT 'u', disabled_at, reason FROM disabled_users WHERE user_id = ? "
    "UNION ALL SELECT 'r', revoked_at, reason FROM revoked_runs WHERE run = ?"
)


def _activate(tx: Tx, kid: str, now: int) -> None:
    tx.execute(
        "UPDATE keys SET state = 'retired', retired_at = ? WHERE state = 'active' AND kid <> ?",
        (now, kid),
    )
    tx.execute("UPDATE keys SET state = 'active' WHERE kid = ?", (kid,))


def _key_record(row: Sequence[Any]) -> KeyRecord:
    kid, alg, state, created_at, retired_at, last_exp, activate_at, sealed = row
    return KeyRecord(
        kid, alg, state, created_at, retired_at, last_exp, activate_at,
        bytes(sealed) if sealed is not None else None,
    )  # fmt: skip
