"""The PostgreSQL store's failure modes: a database down or refusing the login is a 503 that
names the database (never the password) and says requests resume; a restart is survived by the
same store, its broken pooled connections replaced; the password comes only from password_env."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from credsidecar.errors import ConfigError, Unavailable
from credsidecar.issuer.config import IssuerConfig, StoreConfig
from credsidecar.issuer.store import Revocation, migrate, open_store
from credsidecar.issuer.store.postgres import APPLICATION_NAME, PostgresStore
from tests.support.ports import candidate_port
from tests.support.postgres import PASSWORD_ENV, PostgresCluster, running_cluster
from tests.support.processes import wait_for


def _answers(store: PostgresStore) -> bool:
    try:
        store.access_status("alice", "run-1")
    except Unavailable:
        return False
    return True


@pytest.fixture
def own_cluster() -> Iterator[PostgresCluster]:
    """A cluster of the test's own, to restart without disturbing the session's."""
    with running_cluster() as cluster:
        yield cluster


def test_a_database_that_is_down_is_unavailable_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "s3cret-never-shown")
    port = candidate_port()  # nothing listens there
    store = PostgresStore(
        f"postgresql://credsidecar@127.0.0.1:{port}/issuer", password_env=PASSWORD_ENV,
        timeout=0.5,
    )  # fmt: skip
    try:
        with pytest.raises(Unavailable) as down:
            store.access_status("alice", "run-1")
    finally:
        store.close()
    message = down.value.message
    assert f"postgresql://127.0.0.1:{port}/issuer" in message
    assert "no connection within 0.5 s" in message
    assert "requests resume when it is back" in message
    assert "s3cret" not in message
    assert down.value.retry_after > 0


def test_a_refused_login_is_unavailable_without_the_password(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "wrong-password-never-shown")
    store = PostgresStore(postgres_url, password_env=PASSWORD_ENV, timeout=0.5)
    try:
        with pytest.raises(Unavailable) as refused:
            store.revoke_run("run-1", 1_800_000_000, None)
    finally:
        store.close()
    assert "refusing the issuer's login" in refused.value.message
    assert "wrong-password" not in refused.value.message


def test_a_password_variable_that_is_not_set_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CREDSIDECAR_NOT_SET", raising=False)
    with pytest.raises(ConfigError, match="password_env names CREDSIDECAR_NOT_SET, which is not"):
        PostgresStore(
            "postgresql://credsidecar@127.0.0.1/issuer", password_env="CREDSIDECAR_NOT_SET"
        )


def test_without_the_driver_the_config_error_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "psycopg_pool", None)
    monkeypatch.delitem(sys.modules, "credsidecar.issuer.store.postgres")
    store = StoreConfig(url="postgresql://credsidecar@127.0.0.1/issuer")
    config = IssuerConfig("https://issuer.example", "127.0.0.1", 8400, tmp_path,
                          tmp_path / "policy.toml", store=store)  # fmt: skip
    with pytest.raises(ConfigError, match=r"pip install 'credsidecar\[postgres\]'"):
        open_store(config)


def test_the_same_store_serves_again_after_the_database_restarts(
    own_cluster: PostgresCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, own_cluster.password)
    url = own_cluster.url(own_cluster.create_database())
    store = PostgresStore(url, password_env=PASSWORD_ENV, pool_size=3, timeout=1)
    try:
        migrate(store)
        store.revoke_run("run-1", 1_800_000_000, "leaked")
        own_cluster.stop()
        with pytest.raises(Unavailable):
            store.access_status("alice", "run-1")
        own_cluster.start()
        # Every pooled connection died with the server: the pool replaces them (its attempts
        # at most `timeout` apart) and the same store answers again, with no reopening.
        wait_for(lambda: _answers(store), "the store answering after the restart", timeout=30)
        assert store.access_status("alice", "run-1") == (
            None, Revocation(1_800_000_000, "leaked"))  # fmt: skip
    finally:
        store.close()


def test_pooled_connections_the_server_closed_are_replaced_without_failing_a_request(
    postgres_cluster: PostgresCluster, postgres_url: str
) -> None:
    store = PostgresStore(postgres_url, password_env=PASSWORD_ENV, pool_size=3)
    try:
        migrate(store)
        store.revoke_run("run-1", 1_800_000_000, "leaked")
        dbname = postgres_url.rsplit("/", 1)[1]
        postgres_cluster.admin_execute(  # what a failover or an administrator does to them
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND application_name = %s",
            (dbname, APPLICATION_NAME),
        )
        assert store.access_status("alice", "run-1") == (
            None,
            Revocation(1_800_000_000, "leaked"),
        )
    finally:
        store.close()
