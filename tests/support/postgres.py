"""A throwaway PostgreSQL cluster for the tests and benchmarks, in a temporary directory.

- The server binaries come from Debian's `postgresql` package (the newest
  /usr/lib/postgresql/N/bin); without them the fixtures fail, saying to install it (scripts/test
  does), rather than skip.
- initdb and postgres refuse to run as root: as root (CI), the cluster's directory is handed to
  the `postgres` system user (the Debian package creates it) and both run as that user through
  `setpriv`.
- The server listens on 127.0.0.1 on a candidate port (started again on another when the log says
  it was taken, see tests/support/ports.py) and on a Unix socket in the cluster's directory.
  TCP connections need a password (SCRAM): the issuer connects as the `credsidecar` role with
  the password from the variable its `[store] password_env` names (`PASSWORD_ENV`), so the tests
  go the way a deployment goes. The socket trusts the bootstrap superuser, for administration
  (creating and dropping databases).
- Readiness is awaited by connecting, never by sleeping; `stop` is a fast shutdown (SIGINT,
  what `pg_ctl stop -m fast` sends) and always reaps the server; `restart` stops and starts it
  on the same port with the same data (the fault tests' database restart).

Fixtures: `postgres_cluster` (one per session) and `postgres_url` (a fresh database per test,
with `PASSWORD_ENV` set).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from credsidecar.issuer.config import IssuerConfig

from tests.support.ports import candidate_port, start_on_candidate_ports
from tests.support.processes import spawn, stop_process, tail, wait_for

__all__ = [
    "PASSWORD_ENV",
    "ROLE",
    "PostgresCluster",
    "postgres_cluster",
    "postgres_url",
    "server_binaries",
]

# The issuer's role and the variable its `[store] password_env` names in the tests.
ROLE = "credsidecar"
PASSWORD_ENV = "CREDSIDECAR_TEST_DB_PASSWORD"
SUPERUSER = "postgres"
SYSTEM_USER = "postgres"  # Debian's account for the server, used when we are root
INSTALL_HINT = (
    "install Debian's PostgreSQL server with `apt-get install postgresql` (scripts/test does)"
)
_DBNAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
# Server settings for a test cluster: durability is not wanted (nothing outlives the run), a few
# replicas with pools of connections each are.
_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "300",
    "listen_addresses": "127.0.0.1",
    "logging_collector": "off",
}


def server_binaries() -> Path:
    """The newest /usr/lib/postgresql/N/bin holding initdb and postgres."""
    found: list[tuple[int, Path]] = []
    for path in Path("/usr/lib/postgresql").glob("*/bin"):
        if (
            path.parent.name.isdigit()
            and (path / "initdb").exists()
            and (path / "postgres").exists()
        ):
            found.append((int(path.parent.name), path))
    if not found:
        raise RuntimeError(f"no PostgreSQL server under /usr/lib/postgresql/*/bin: {INSTALL_HINT}")
    return max(found)[1]


class PostgresCluster:
    """One server with its data in `directory` (created empty, removed by `remove`)."""

    def __init__(self, directory: Path | None = None) -> None:
        self.bin = server_binaries()
        self.directory = directory or Path(tempfile.mkdtemp(prefix="credsidecar-pg-"))
        self.data = self.directory / "data"
        self.log = self.directory / "server.log"
        self.password = secrets.token_urlsafe(24)
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._as_user: list[str] = []
        self._initialised = False
        if os.geteuid() == 0:
            try:
                account = pwd.getpwnam(SYSTEM_USER)
            except KeyError:
                raise RuntimeError(
                    f"running as root, and there is no {SYSTEM_USER!r} user to run PostgreSQL "
                    f"as (it refuses root): {INSTALL_HINT}"
                ) from None
            os.chown(self.directory, account.pw_uid, account.pw_gid)
            self._as_user = ["setpriv", f"--reuid={SYSTEM_USER}", f"--regid={SYSTEM_USER}",
                             "--init-groups", "--"]  # fmt: skip
        self.directory.chmod(0o755)  # the socket's directory, reached by clients

    # lifecycle --------------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        return {"PATH": f"{self.bin}:/usr/bin:/bin", "LC_ALL": "C.UTF-8", "TZ": "UTC"}

    def _run(self, args: list[str], stdin: bytes | None = None) -> None:
        done = subprocess.run(
            [*self._as_user, *args], input=stdin, capture_output=True, env=self._env(),
            cwd=self.directory, check=False, timeout=300,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(
                f"{Path(args[0]).name} failed ({done.returncode}): "
                f"{(done.stdout + done.stderr).decode(errors='replace')[-2000:]}"
            )

    def _initdb(self) -> None:
        pwfile = self.directory / "superuser-password"  # initdb requires a password for scram
        pwfile.write_text(secrets.token_urlsafe(24) + "\n", encoding="utf-8")
        if self._as_user:
            account = pwd.getpwnam(SYSTEM_USER)
            os.chown(pwfile, account.pw_uid, account.pw_gid)
        pwfile.chmod(0o600)
        self._run([
            str(self.bin / "initdb"), "-D", str(self.data), "-U", SUPERUSER, "--pwfile",
            str(pwfile), "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync",
            "--encoding=UTF8", "--no-locale",
        ])  # fmt: skip
        pwfile.unlink()
        self._initialised = True

    def start(self) -> PostgresCluster:
        """initdb (the first time), then start the server and wait until it takes connections;
        then make sure the `credsidecar` role exists."""
        if not self._initialised:
            self._initdb()
        if self.port == 0:
            self.port = candidate_port()
            start_on_candidate_ports(self._start_once, self.log, self._move)
        else:
            self._start_once()
        self._admin(
            f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}') THEN "
            f"CREATE ROLE {ROLE} LOGIN PASSWORD '{self.password}'; END IF; END $$"
        )
        return self

    def _move(self, port: int) -> None:
        self.port = port

    def _start_once(self) -> None:
        settings = [arg for key, value in _SETTINGS.items() for arg in ("-c", f"{key}={value}")]
        with self.log.open("ab") as out:
            if self._as_user:
                account = pwd.getpwnam(SYSTEM_USER)
                os.chown(self.log, account.pw_uid, account.pw_gid)
            self._proc = spawn(
                [*self._as_user, str(self.bin / "postgres"), "-D", str(self.data),
                 "-p", str(self.port), "-k", str(self.directory), *settings],
                stdout=out, stderr=out, stdin=subprocess.DEVNULL, env=self._env(),
                cwd=self.directory,
            )  # fmt: skip
        try:
            wait_for(self.accepting, "PostgreSQL accepting connections", self._proc, self.log)
        except BaseException:
            self._reap()
            raise

    def accepting(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(**self._admin_kwargs("postgres"), connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def stop(self) -> None:
        """A fast shutdown (SIGINT: what `pg_ctl stop -m fast` sends): clients are disconnected,
        the server checkpoints and exits; it is reaped whatever happens."""
        self._reap()

    def _reap(self) -> None:
        if self._proc is not None:
            proc, self._proc = self._proc, None
            stop_process(proc, signal.SIGINT)

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def log_tail(self) -> str:
        return tail(self.log)

    # databases --------------------------------------------------------------------------------

    def _admin_kwargs(self, dbname: str) -> dict[str, Any]:
        return {"host": str(self.directory), "port": self.port, "user": SUPERUSER, "dbname": dbname}

    def admin_execute(
        self, sql: str, params: tuple[object, ...] = (), dbname: str = "postgres"
    ) -> None:
        """`sql` (psycopg's %s placeholders) as the superuser, over the socket (e.g.
        pg_terminate_backend)."""
        self._admin(sql, dbname, params)

    def _admin(self, sql: str, dbname: str = "postgres", params: tuple[object, ...] = ()) -> None:
        import psycopg

        with psycopg.connect(**self._admin_kwargs(dbname), autocommit=True) as conn:
            conn.execute(sql.encode(), params)

    def create_database(self, name: str | None = None) -> str:
        """A new empty database owned by the `credsidecar` role; returns its name."""
        name = name or f"t_{secrets.token_hex(6)}"
        if not _DBNAME.fullmatch(name):
            raise ValueError(f"not a plain database name: {name!r}")
        self._admin(f"CREATE DATABASE {name} OWNER {ROLE}")
        return name

    def drop_database(self, name: str) -> None:
        if not _DBNAME.fullmatch(name):
            raise ValueError(f"not a plain database name: {name!r}")
        self._admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def url(self, dbname: str) -> str:
        """The URL an issuer config names: no password (that comes from `PASSWORD_ENV`)."""
        return f"postgresql://{ROLE}@127.0.0.1:{self.port}/{dbname}"

    def connect_kwargs(self, dbname: str) -> dict[str, Any]:
        """For a test's own psycopg connection as the `credsidecar` role, over TCP."""
        return {"host": "127.0.0.1", "port": self.port, "user": ROLE, "dbname": dbname,
                "password": self.password}  # fmt: skip


@contextlib.contextmanager
def running_cluster() -> Iterator[PostgresCluster]:
    """A started cluster, stopped and removed on leaving the block."""
    cluster = PostgresCluster()
    try:
        yield cluster.start()
    except BaseException:
        print(cluster.log_tail())
        raise
    finally:
        cluster.remove()


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    try:
        cluster = PostgresCluster()
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)
    try:
        yield cluster.start()
    finally:
        cluster.remove()


@pytest.fixture
def postgres_url(
    postgres_cluster: PostgresCluster, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """A fresh database in the session's cluster, its URL; `PASSWORD_ENV` holds the password."""
    if not postgres_cluster.running:  # a test restarted it and failed before it was back
        postgres_cluster.start()
    name = postgres_cluster.create_database()
    monkeypatch.setenv(PASSWORD_ENV, postgres_cluster.password)
    yield postgres_cluster.url(name)
    with contextlib.suppress(Exception):
        postgres_cluster.drop_database(name)


def issuer_config_on(tmp_path: Path, url: str | None, **extra: Any) -> IssuerConfig:
    """A minimal issuer config in `tmp_path` whose store is `url` (a PostgreSQL database from
    the fixtures, with its password variable) or SQLite (None)."""
    from credsidecar.issuer.config import IssuerConfig, StoreConfig

    return IssuerConfig(
        issuer_url="https://issuer.example.org",
        host="127.0.0.1",
        port=8400,
        state_dir=tmp_path / "state",
        policy_path=tmp_path / "policy.toml",
        store=StoreConfig(url=url, password_env=PASSWORD_ENV if url else None),
        **extra,
    )
