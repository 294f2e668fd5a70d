"""SSH to a cluster's login node as the launching user, with asyncssh.

Certificate mode: a fresh Ed25519 key per connection, signed by the issuer for the user's Linux
username (`login_with_certificate`). Stored-key mode: the member's key stays inside the issuer,
which signs the authentication request (`IssuerSignedKey`). Either way the host is verified
against the cluster's host CA or pinned host keys as the issuer describes them, and the user's
own ~/.ssh (config, agent, keys, known_hosts) plays no part.
"""

from __future__ import annotations

import asyncio
import base64
import shlex
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncssh
from asyncssh.public_key import SSHKeyPair

from credsidecar.errors import CredsidecarError
from credsidecar.hpc.api import HpcApi

__all__ = ["Connection", "HpcSshError", "IssuerSignedKey", "connect", "run_command"]

CONNECT_TIMEOUT = 20.0


class HpcSshError(CredsidecarError):
    code = "ssh_failed"


@dataclass(frozen=True)
class Connection:
    """What the issuer says about reaching a cluster for one launch."""

    cluster: str
    host: str
    port: int
    username: str
    scheduler: str
    known_hosts: str
    mode: str
    key_id: str | None = None
    valid_before: int | None = None

    @property
    def where(self) -> str:
        return f"{self.username}@{self.host}:{self.port} (cluster {self.cluster})"


class IssuerSignedKey(SSHKeyPair):
    """A public key whose signatures the issuer makes with the member's stored private key."""

    _key_type = "issuer"

    def __init__(
        self, public_key: asyncssh.SSHKey, sign: Callable[[bytes, str], Awaitable[bytes]]
    ) -> None:
        algorithms = list(public_key.sig_algorithms)
        super().__init__(
            public_key.algorithm,
            algorithms[0],
            algorithms,
            algorithms,
            public_key.public_data,
            b"stored at the issuer",
        )
        self._sign = sign

    async def sign_async(self, data: bytes) -> bytes:
        return await self._sign(data, self.sig_algorithm.decode())


async def _certificate_login(
    api: HpcApi, launch_token: str, cluster: str
) -> tuple[Connection, list[Any]]:
    key = asyncssh.generate_private_key("ssh-ed25519")
    public = key.export_public_key().decode().strip()
    issued = await api.call(
        "POST",
        "/v1/ssh/certificates",
        {"launch_token": launch_token, "cluster": cluster, "public_key": public},
    )
    certificate = asyncssh.import_certificate(issued["certificate"])
    connection = Connection(
        issued["cluster"],
        issued["host"],
        int(issued["port"]),
        issued["username"],
        issued["scheduler"],
        issued["known_hosts"],
        "certificate",
        issued["key_id"],
        int(issued["valid_before"]),
    )
    return connection, [(key, certificate)]


async def _stored_key_login(
    api: HpcApi, launch_token: str, cluster: str
) -> tuple[Connection, list[Any]]:
    described = await api.call(
        "POST", "/v1/hpc/stored-key", {"launch_token": launch_token, "cluster": cluster}
    )

    async def sign(data: bytes, algorithm: str) -> bytes:
        signed = await api.call(
            "POST",
            "/v1/hpc/stored-key/sign",
            {
                "launch_token": launch_token,
                "cluster": cluster,
                "data": base64.b64encode(data).decode(),
                "algorithm": algorithm,
            },
        )
        return base64.b64decode(signed["signature"])

    public = asyncssh.import_public_key(described["public_key"])
    connection = Connection(
        described["cluster"],
        described["host"],
        int(described["port"]),
        described["username"],
        described["scheduler"],
        described["known_hosts"],
        "stored-key",
    )
    return connection, [IssuerSignedKey(public, sign)]


async def connect(
    api: HpcApi,
    launch_token: str,
    cluster: str,
    mode: str,
    connect_timeout: float = CONNECT_TIMEOUT,
) -> tuple[asyncssh.SSHClientConnection, Connection]:
    """Logs in as the launch's user; raises HpcSshError saying what went wrong and what to do."""
    login = _certificate_login if mode == "certificate" else _stored_key_login
    connection, client_keys = await login(api, launch_token, cluster)
    try:
        conn = await asyncssh.connect(
            connection.host,
            connection.port,
            username=connection.username,
            known_hosts=asyncssh.import_known_hosts(connection.known_hosts),
            client_keys=client_keys,
            agent_path=None,
            config=[],
            password=None,
            kbdint_auth=False,
            gss_auth=False,
            preferred_auth="publickey",
            connect_timeout=connect_timeout,
        )
    except asyncssh.HostKeyNotVerifiable as exc:
        raise HpcSshError(
            f"cannot log in to {connection.where}: the login node's host key is not trusted "
            f"({exc.reason}); the cluster's host_ca_key/host_keys at the issuer do not match "
            "what the host presents. Ask an owner to check them against the cluster admins' "
            "host keys (`ssh-keyscan -p PORT HOST`); never accept an unknown key"
        ) from exc
    except asyncssh.PermissionDenied as exc:
        raise HpcSshError(_refused(connection)) from exc
    except ConnectionRefusedError as exc:
        raise HpcSshError(
            f"cannot log in to {connection.where}: connection refused; is sshd "
            "listening on that host and port?"
        ) from exc
    except TimeoutError as exc:
        raise HpcSshError(
            f"cannot log in to {connection.where}: timed out after "
            f"{connect_timeout:g} s (firewall, VPN or a wrong host?)"
        ) from exc
    except (OSError, asyncssh.Error) as exc:
        raise HpcSshError(f"cannot log in to {connection.where}: {exc}") from exc
    return conn, connection


def _refused(c: Connection) -> str:
    if c.mode == "certificate":
        expired = c.valid_before is not None and c.valid_before <= time.time()
        return (
            f"permission denied for {c.where}: the login node refused certificate {c.key_id} "
            f"for principal {c.username!r}. "
            + ("The certificate has expired; " if expired else "")
            + "Check that the account exists on the cluster, that sshd trusts the credsidecar "
            "CA (`TrustedUserCAKeys` with the line from `credsidecar hpc ca-public-key`), and "
            "that AuthorizedPrincipalsFile, if set, lists the username; sshd's log names the "
            "key ID"
        )
    return (
        f"permission denied for {c.where}: the login node refused the stored key. Check that "
        "its public key is in the account's ~/.ssh/authorized_keys and that the username is "
        "right (`credsidecar hpc credential show`)"
    )


async def run_command(conn: asyncssh.SSHClientConnection, argv: Sequence[str]) -> int:
    """Runs argv on the login node, streaming its output; returns its exit status."""
    command = " ".join(shlex.quote(a) for a in argv)
    process = await conn.create_process(command, encoding=None)

    async def pump(stream: Any, out: Any) -> None:
        while chunk := await stream.read(65536):
            out.write(chunk)
            out.flush()

    await asyncio.gather(
        pump(process.stdout, sys.stdout.buffer), pump(process.stderr, sys.stderr.buffer)
    )
    completed = await process.wait()
    if completed.exit_status is None:
        signal = completed.exit_signal[0] if completed.exit_signal else "unknown"
        print(f"credsidecar hpc: the remote command ended by signal {signal}", file=sys.stderr)
        return 255
    return int(completed.exit_status)
