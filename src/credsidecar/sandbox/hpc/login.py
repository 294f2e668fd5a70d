"""A sandbox login node: an asyncssh server on loopback that needs no root.

It stands in for a cluster's sshd: it trusts the credsidecar SSH CA for user certificates
(certificate mode) or a member's public key (stored-key mode), checks each login with
authorize.py, maps the login's username (the certificate's principal) to the Unix account it
runs as — the current user, since it cannot switch users — and logs each attempt with the
certificate's key ID, as sshd does (`Accepted publickey ... ID credsidecar:alice:RUN:CLUSTER`).
It presents a host key, signed by a host CA or pinned, that the issuer's registry knows, so
clients verify it as they do a real cluster. Commands run in a real shell, with a login-like
environment and the sandbox's Slurm stand-ins (slurm.py) first on the PATH.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import asyncssh

from credsidecar.sandbox.hpc.authorize import Decision, authorize

__all__ = ["LoginLog", "LoginNode"]

MAX_LOG_BYTES = 1 << 20  # logins and refusals, by anyone who reaches the port: capped
CHUNK = 65536


class LoginLog:
    """One line per login attempt, appended to a file, up to `max_bytes` (then one last line
    saying it is full: whoever reaches the port must not fill the disk)."""

    def __init__(self, path: Path, max_bytes: int = MAX_LOG_BYTES) -> None:
        self.path = path
        self._left = max_bytes
        self._lock = asyncio.Lock()

    def _append(self, text: str) -> None:
        with self.path.open("a", encoding="utf-8") as out:
            out.write(text)

    async def write(self, line: str) -> None:
        async with self._lock:
            if self._left <= 0:
                return
            text = f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {line}\n"
            if len(text) > self._left:
                text = "log full: later attempts are not logged\n"
                self._left = 0
            else:
                self._left -= len(text)
            await asyncio.to_thread(self._append, text)


class LoginNode:
    """One login node (start it on a bound socket, then stop it)."""

    def __init__(
        self,
        name: str,
        *,
        host_key: asyncssh.SSHKey,
        host_certificate: asyncssh.SSHCertificate | None = None,
        principals: Collection[str],
        user_ca: Callable[[], Awaitable[str | None]] | None = None,
        authorized_keys: Mapping[str, Collection[bytes]] | None = None,
        log: LoginLog,
        path_prefix: str | None = None,
        extra_env: Mapping[str, str] | None = None,
        home: Path | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.host_key = host_key
        self._host_certificate = host_certificate
        self.principals = frozenset(principals)
        self._user_ca = user_ca
        self.authorized_keys: dict[str, set[bytes]] = {
            user: set(keys) for user, keys in (authorized_keys or {}).items()
        }
        self.log = log
        self._path_prefix = path_prefix
        self._extra_env = dict(extra_env or {})
        self._home = home or Path.home()
        self._clock = clock
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self._connections: set[asyncssh.SSHServerConnection] = set()
        self._children: set[asyncio.subprocess.Process] = set()
        self._groups: set[int] = set()
        self.port = 0
        self.host = "127.0.0.1"

    def authorize_key(self, username: str, public_key_line: str) -> None:
        """Stored-key mode: `public_key_line` may log in as `username` (its authorized_keys)."""
        from credsidecar.sandbox.hpc.authorize import key_blob

        self.authorized_keys.setdefault(username, set()).add(key_blob(public_key_line))

    # serving ---------------------------------------------------------------------------------

    async def start(self, sock: socket.socket) -> None:
        """Listens on `sock` (bound by credsidecar.listen: the port is never free)."""
        self.host, self.port = sock.getsockname()[:2]
        host_keys: list[Any] = (
            [(self.host_key, self._host_certificate)] if self._host_certificate else [self.host_key]
        )
        self._acceptor = await asyncssh.listen(
            sock=sock,
            server_factory=lambda: _Server(self),
            server_host_keys=host_keys,
            process_factory=self._session,
            encoding=None,
            allow_scp=False,
            agent_forwarding=False,
            x11_forwarding=False,
            allow_pty=False,
            config=[],
        )

    async def stop(self) -> None:
        if self._acceptor is not None:
            self._acceptor.close()
            await self._acceptor.wait_closed()
            self._acceptor = None
        # Sessions' process groups, with what they left running (the Slurm stand-in's jobs).
        for group in self._groups:
            _kill_group(group)
        for conn in list(self._connections):
            conn.close()
        for conn in list(self._connections):
            await conn.wait_closed()
        for child in list(self._children):
            await child.wait()

    # authentication --------------------------------------------------------------------------

    async def decide(self, username: str, blob: bytes) -> Decision:
        ca = await self._user_ca() if self._user_ca else None
        return authorize(
            username,
            blob,
            principals=self.principals,
            user_ca=ca,
            authorized_keys=self.authorized_keys,
            now=self._clock(),
        )

    def _watch(self, conn: asyncssh.SSHServerConnection) -> None:
        """Puts authorize.py's decision in front of asyncssh's own key checks, which then verify
        the signature: the decision sees the key blob (and so the certificate's key ID)."""
        checked = conn.validate_public_key
        peer = "{}:{}".format(*(conn.get_extra_info("peername") or ("?", 0))[:2])

        async def validate(username: str, key_data: bytes, msg: bytes, signature: bytes) -> bool:
            decision = await self.decide(username, key_data)
            if not decision.ok:
                await self.log.write(f"{self.name}: refused {decision.text} from {peer}")
                return False
            ok = await checked(username, key_data, msg, signature)
            if msg:  # a signed attempt, not the client asking whether a key would do
                verdict = "accepted" if ok else "refused (bad signature)"
                account = getpass.getuser()
                await self.log.write(
                    f"{self.name}: {verdict} {decision.text} as {account} from {peer}"
                )
            return ok

        conn.validate_public_key = validate  # type: ignore[method-assign]
        self._connections.add(conn)

    # sessions --------------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        user = getpass.getuser()
        path = os.environ.get("PATH", "/usr/bin:/bin")
        env = {
            "HOME": str(self._home),
            "USER": user,
            "LOGNAME": user,
            "SHELL": "/bin/sh",
            "PATH": f"{self._path_prefix}:{path}" if self._path_prefix else path,
        }
        for name in ("LANG", "LC_ALL", "TZ"):
            if name in os.environ:
                env[name] = os.environ[name]
        return {**env, **self._extra_env}

    async def _session(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        command = process.command or "exec /bin/sh -i"
        child = await asyncio.create_subprocess_shell(
            command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=self._home,
            env=self._env(),
            start_new_session=True,  # its own process group: stop() ends it and its children
        )
        self._children.add(child)
        feed = asyncio.create_task(_feed(process.stdin, child.stdin))
        self._groups.add(child.pid)
        try:
            delivered = await asyncio.gather(
                _pump(child.stdout, process.stdout), _pump(child.stderr, process.stderr)
            )
            if not all(delivered):  # the client went away: nobody reads the rest
                _kill_group(child.pid)
            status = await child.wait()
        finally:
            feed.cancel()
            if child.returncode is None:
                _kill_group(child.pid)
                await child.wait()
            self._children.discard(child)
            if not _group_alive(child.pid):  # else a background job is left: stop() ends it
                self._groups.discard(child.pid)
        if status < 0:
            process.exit_with_signal(signal.Signals(-status).name.removeprefix("SIG"))
        else:
            process.exit(status)


class _Server(asyncssh.SSHServer):
    """asyncssh's per-connection callbacks; LoginNode._watch makes the decisions."""

    def __init__(self, node: LoginNode) -> None:
        self._node = node
        self._conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        self._node._watch(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is not None:
            self._node._connections.discard(self._conn)

    def begin_auth(self, username: str) -> bool:
        return True  # every login authenticates

    def public_key_auth_supported(self) -> bool:
        return True

    # Reached only after authorize.py accepted the same key; still checked, so that asyncssh
    # alone never lets a key in that the node does not trust.
    async def validate_ca_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        ca = await self._node._user_ca() if self._node._user_ca else None
        return ca is not None and key.public_data == asyncssh.import_public_key(ca).public_data

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        blob = key.public_data
        return blob in self._node.authorized_keys.get(username, set())


async def _feed(source: Any, sink: asyncio.StreamWriter | None) -> None:
    assert sink is not None
    with contextlib.suppress(OSError, asyncssh.Error):
        while chunk := await source.read(CHUNK):
            sink.write(chunk)
            await sink.drain()
    sink.close()


async def _pump(source: asyncio.StreamReader | None, sink: Any) -> bool:
    """Copies a child's output to the channel; False if the client stopped taking it."""
    assert source is not None
    while chunk := await source.read(CHUNK):
        try:
            sink.write(chunk)
            await sink.drain()
        except (OSError, asyncssh.Error):
            return False
    return True


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_group(group: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, signal.SIGKILL)
