"""The store's schema under versioned migrations: applied once each, at start or by
`credsidecar issuer migrate`; a database from before migrations adopted without data loss; a
database newer than the code refused; replicas starting together migrating once."""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

import pytest

from credsidecar.cli import main as cli_main
from credsidecar.errors import ConfigError
from credsidecar.issuer.config import load_config
from credsidecar.issuer.example import write_example
from credsidecar.issuer.store import KeyRecord, Revocation, SqliteStore, Store, migrate, open_store
from credsidecar.issuer.store.migrations import MIGRATIONS, latest_version
from credsidecar.issuer.store.postgres import PostgresStore
from tests.support.postgres import PASSWORD_ENV

ALL = [m.version for m in MIGRATIONS]
# The schema an issuer wrote before versioned migrations (the store and the HPC registry's).
BEFORE_MIGRATIONS = """
CREATE TABLE keys (kid TEXT PRIMARY KEY, alg TEXT NOT NULL, state TEXT NOT NULL CHECK (state IN
    ('pending', 'active', 'retired')), created_at INTEGER NOT NULL, retired_at INTEGER,
    last_exp INTEGER NOT NULL DEFAULT 0);
CREATE TABLE revoked_runs (run TEXT PRIMARY KEY, revoked_at INTEGER NOT NULL, reason TEXT);
CREATE TABLE disabled_users (user_id TEXT PRIMARY KEY, disabled_at INTEGER NOT NULL, reason TEXT);
CREATE TABLE user_keys (sha256 TEXT PRIMARY KEY, user_id TEXT NOT NULL, name TEXT NOT NULL,
    created_at INTEGER NOT NULL);
INSERT INTO keys VALUES ('kid-1', 'RS256', 'active', 1800000000, NULL, 1800000600);
INSERT INTO revoked_runs VALUES ('run-1', 1800000001, 'leaked');
INSERT INTO disabled_users VALUES ('mallory', 1800000002, NULL);
INSERT INTO user_keys VALUES ('ab12', 'alice', 'laptop', 1800000003);
"""


def _open(kind: str, tmp_path: Path, request: pytest.FixtureRequest, *, run: bool) -> Store:
    if kind == "sqlite":
        return SqliteStore(tmp_path / "issuer.db", migrate=run)
    store = PostgresStore(request.getfixturevalue("postgres_url"), password_env=PASSWORD_ENV)
    if run:
        migrate(store)
    return store


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_new_database_gets_every_version_once(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    store = _open(kind, tmp_path, request, run=False)
    try:
        assert migrate(store) == ALL
        assert migrate(store) == []
        assert [
            v for (v,) in store.query("SELECT version FROM schema_migrations ORDER BY 1")
        ] == ALL
    finally:
        store.close()


def test_a_sqlite_file_from_before_migrations_is_adopted_without_data_loss(
    tmp_path: Path,
) -> None:
    db = tmp_path / "issuer.db"
    with sqlite3.connect(db) as old:
        old.executescript(BEFORE_MIGRATIONS)
    old.close()
    store = SqliteStore(db, migrate=False)
    try:
        assert migrate(store) == ALL
        assert store.key_records() == [
            KeyRecord("kid-1", "RS256", "active", 1800000000, None, 1800000600)]  # fmt: skip
        assert store.run_revocation("run-1") == Revocation(1800000001, "leaked")
        assert store.user_disabled("mallory") == Revocation(1800000002, None)
        assert store.query("SELECT user_id, name FROM user_keys") == [("alice", "laptop")]
        store.add_key("kid-2", "RS256", "pending", 1800000010, sealed_key=b"s", activate_at=5)
        assert store.put_secret_if_absent("x", b"y") == b"y"  # version 2's table
    finally:
        store.close()


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_database_migrated_by_a_newer_credsidecar_is_refused(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    store = _open(kind, tmp_path, request, run=True)
    try:
        newer = latest_version() + 1
        store.execute("INSERT INTO schema_migrations VALUES (?, ?)", (newer, 1800000000))
        with pytest.raises(ConfigError) as refused:
            migrate(store)
        assert f"schema version(s) {newer}" in refused.value.message
        assert "upgrade credsidecar" in refused.value.message
    finally:
        store.close()


def test_replicas_starting_together_on_postgres_migrate_once(postgres_url: str) -> None:
    replicas = [PostgresStore(postgres_url, password_env=PASSWORD_ENV) for _ in range(4)]
    start = threading.Barrier(len(replicas))
    applied: list[list[int]] = []

    def start_replica(store: Store) -> None:
        start.wait()
        applied.append(migrate(store))

    threads = [threading.Thread(target=start_replica, args=(r,)) for r in replicas]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for store in replicas:
            store.close()
    assert sorted(applied) == [[], [], [], ALL]


def test_issuer_migrate_prints_what_it_applied(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_path, _ = write_example(tmp_path, port=8400)
    database = load_config(config_path).database
    assert cli_main(["issuer", "migrate", "--config", str(config_path)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"applied schema version(s) {', '.join(map(str, ALL))} to {database}",
        f"{database} is at schema version {latest_version()}",
    ]
    assert cli_main(["issuer", "migrate", "--config", str(config_path)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{database} is at schema version {latest_version()}"]  # fmt: skip


def test_issuer_migrate_on_postgres_names_the_database_never_the_password(
    tmp_path: Path, postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config_path, _ = write_example(tmp_path, port=8400)
    with config_path.open("a", encoding="utf-8") as f:
        f.write(f'\n[store]\nurl = "{postgres_url}"\npassword_env = "{PASSWORD_ENV}"\n')
    assert cli_main(["issuer", "migrate", "--config", str(config_path)]) == 0
    out = capsys.readouterr().out
    assert "applied schema version(s) 1, 2 to postgresql://127.0.0.1:" in out
    assert os.environ[PASSWORD_ENV] not in out
    store = open_store(load_config(config_path), migrate=False)
    try:
        assert migrate(store) == []
    finally:
        store.close()
