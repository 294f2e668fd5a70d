"""The store's schema as an ordered list of versions, applied once each, in order.

`schema_migrations` records which versions a database has. `migrate` runs at start (open_store)
and from `credsidecar issuer migrate`, inside one transaction that first takes a lock, so two
replicas starting together do not both migrate: PostgreSQL's `pg_advisory_xact_lock`, SQLite's
write lock (BEGIN IMMEDIATE). A SQLite file from before versioned migrations (its tables, no
`schema_migrations`) is adopted as version 1: version 1 only creates what is missing. A database
that a newer credsidecar migrated past what this one knows is refused (ConfigError) rather than
used with a schema this code does not understand.

To change the schema, append a version; never edit one that has shipped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from credsidecar.errors import ConfigError
from credsidecar.issuer.store.base import MIGRATIONS_LOCK, Dialect, Store

__all__ = ["MIGRATIONS", "Migration", "latest_version", "migrate"]


@dataclass(frozen=True)
class Migration:
    version: int
    summary: str
    # The statements for a dialect: the per-dialect types are the only differences.
    statements: Callable[[Dialect], list[str]]


def _types(dialect: Dialect) -> dict[str, str]:
    # PostgreSQL's INTEGER is 32 bits: times and expiries are BIGINT there (SQLite's INTEGER
    # is 64 bits already).
    if dialect == "postgres":
        return {"int": "BIGINT", "blob": "BYTEA"}
    return {"int": "INTEGER", "blob": "BLOB"}


def _v1(dialect: Dialect) -> list[str]:
    t = _types(dialect)
    return [
        f"""CREATE TABLE IF NOT EXISTS keys (
            kid          TEXT PRIMARY KEY,
            alg          TEXT NOT NULL,
            state        TEXT NOT NULL CHECK (state IN ('pending', 'active', 'retired')),
            created_at   {t["int"]} NOT NULL,
            retired_at   {t["int"]},
            last_exp     {t["int"]} NOT NULL DEFAULT 0  -- latest expiry of a token it signed
        )""",
        f"""CREATE TABLE IF NOT EXISTS revoked_runs (
            run          TEXT PRIMARY KEY,
            revoked_at   {t["int"]} NOT NULL,
            reason       TEXT
        )""",
        f"""CREATE TABLE IF NOT EXISTS disabled_users (
            user_id      TEXT PRIMARY KEY,
            disabled_at  {t["int"]} NOT NULL,
            reason       TEXT
        )""",
        # The HPC registry (hpc_registry.py).
        f"""CREATE TABLE IF NOT EXISTS hpc_clusters (
            name        TEXT PRIMARY KEY,
            settings    TEXT NOT NULL,  -- JSON: scheduler, host, port, mode, host keys, usernames
            updated_at  {t["int"]} NOT NULL,
            updated_by  TEXT NOT NULL
        )""",
        f"""CREATE TABLE IF NOT EXISTS hpc_credentials (
            cluster     TEXT NOT NULL REFERENCES hpc_clusters(name) ON DELETE CASCADE,
            user_id     TEXT NOT NULL,
            username    TEXT NOT NULL,
            public_key  TEXT NOT NULL,
            private_key {t["blob"]} NOT NULL,  -- sealed
            passphrase  {t["blob"]},           -- sealed, or NULL for an unencrypted key
            updated_at  {t["int"]} NOT NULL,
            PRIMARY KEY (cluster, user_id)
        )""",
        f"""CREATE TABLE IF NOT EXISTS user_keys (
            sha256      TEXT PRIMARY KEY,  -- of the member's API key; the key is never stored
            user_id     TEXT NOT NULL,
            name        TEXT NOT NULL,
            created_at  {t["int"]} NOT NULL
        )""",
    ]


def _v2(dialect: Dialect) -> list[str]:
    t = _types(dialect)
    return [
        f"ALTER TABLE keys ADD COLUMN activate_at {t['int']}",
        f"ALTER TABLE keys ADD COLUMN sealed_key {t['blob']}",
        f"""CREATE TABLE secrets (
            name        TEXT PRIMARY KEY,
            value       {t["blob"]} NOT NULL,  -- sealed by whoever stores it
            created_at  {t["int"]} NOT NULL
        )""",
    ]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "keys, revoked runs, disabled users, the HPC registry", _v1),
    Migration(2, "staged key activation time, sealed shared keys, shared secrets", _v2),
)


def latest_version() -> int:
    return MIGRATIONS[-1].version


def migrate(store: Store) -> list[int]:
    """Applies the versions `store` lacks, in order, in one transaction; returns them."""
    applied_now: list[int] = []
    with store._transaction(MIGRATIONS_LOCK) as tx:
        tx.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
            f"applied_at {_types(store.dialect)['int']} NOT NULL)"
        )
        applied = {int(v) for (v,) in tx.query("SELECT version FROM schema_migrations")}
        known = {m.version for m in MIGRATIONS}
        unknown = sorted(applied - known)
        if unknown:
            raise ConfigError(
                f"the issuer database {store.name} has schema version(s) "
                f"{', '.join(map(str, unknown))}, newer than this credsidecar knows (up to "
                f"{latest_version()}): a newer credsidecar migrated it; upgrade credsidecar "
                "(on every replica) to use it"
            )
        for migration in MIGRATIONS:
            if migration.version in applied:
                continue
            for statement in migration.statements(store.dialect):
                tx.execute(statement)
            tx.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                (migration.version, int(time.time())),
            )
            applied_now.append(migration.version)
    return applied_now
