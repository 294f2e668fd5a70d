"""The issuer's durable state: key metadata, revoked runs, disabled users, shared secrets and
the HPC registry, in one SQLite file (the default) or a PostgreSQL database shared by replicas
(`[store] url`). See base.py for what a store does, migrations.py for its schema."""

from __future__ import annotations

from typing import TYPE_CHECKING

from credsidecar.errors import ConfigError
from credsidecar.issuer.store.base import KeyRecord, Revocation, Store
from credsidecar.issuer.store.migrations import migrate
from credsidecar.issuer.store.sqlite import SqliteStore

if TYPE_CHECKING:
    from credsidecar.issuer.config import IssuerConfig

__all__ = ["KeyRecord", "Revocation", "SqliteStore", "Store", "migrate", "open_store"]


def open_store(config: IssuerConfig, *, migrate: bool = True) -> Store:
    """The store `config` names, its schema brought up to date unless `migrate` is False."""
    from credsidecar.issuer.store import migrations

    settings = config.store
    if settings.url is None:
        return SqliteStore(config.database, migrate=migrate)
    try:
        from credsidecar.issuer.store.postgres import PostgresStore
    except ImportError as exc:
        if exc.name not in ("psycopg", "psycopg_pool"):
            raise
        raise ConfigError(
            "[store] url names a PostgreSQL database, but its driver is not installed: "
            "pip install 'credsidecar[postgres]' (psycopg and psycopg-pool)",
            path=("store", "url"),
        ) from None
    store = PostgresStore(
        settings.url,
        password_env=settings.password_env,
        pool_size=settings.pool_size,
        timeout=settings.timeout,
    )
    if migrate:
        try:
            migrations.migrate(store)
        except BaseException:
            store.close()
            raise
    return store
