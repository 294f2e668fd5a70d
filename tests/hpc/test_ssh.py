"""`credsidecar hpc`'s SSH client against asyncssh's in-process server (fast, no root): both
login modes, host verification, and the errors users see. The real-sshd tests are in
tests/e2e/test_hpc.py."""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncssh
import pytest

from credsidecar.hpc.ssh import HpcSshError, connect

CA = asyncssh.generate_private_key("ssh-ed25519")
HOST_KEY = asyncssh.generate_private_key("ssh-ed25519")
STORED = asyncssh.generate_private_key("ssh-ed25519")


@dataclass
class LoginNode:
    port: int
    server: asyncssh.SSHAcceptor

    def known_hosts(self, key: asyncssh.SSHKey = HOST_KEY) -> str:
        return f"[127.0.0.1]:{self.port} {key.export_public_key().decode().strip()}\n"


async def whoami(process: asyncssh.SSHServerProcess[str]) -> None:
    process.stdout.write(f"{process.get_extra_info('username')}\n")
    process.exit(0)


@pytest.fixture
async def node() -> AsyncIterator[LoginNode]:
    """Trusts CA certificates for principal csalice, and the stored key for any account."""
    authorized = asyncssh.import_authorized_keys(
        f'cert-authority,principals="csalice" {CA.export_public_key().decode()}'
        f"{STORED.export_public_key().decode()}"
    )
    server = await asyncssh.listen(
        "127.0.0.1",
        0,
        server_host_keys=[HOST_KEY],
        authorized_client_keys=authorized,
        process_factory=whoami,
    )
    yield LoginNode(server.sockets[0].getsockname()[1], server)
    server.close()
    await server.wait_closed()


@dataclass
class FakeIssuer:
    """What the issuer's launch endpoints answer, signing with keys held here."""

    node: LoginNode
    username: str = "csalice"
    lifetime: int = 300
    known_hosts: str = ""
    signed: list[bytes] = field(default_factory=list)

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        where = {
            "cluster": "hpc1",
            "host": "127.0.0.1",
            "port": self.node.port,
            "scheduler": "slurm",
            "username": self.username,
            "known_hosts": self.known_hosts or self.node.known_hosts(),
        }
        if path == "/v1/ssh/certificates":
            user_key = asyncssh.import_public_key(body["public_key"])
            cert = CA.generate_user_certificate(
                user_key,
                "credsidecar:alice:r1:hpc1",
                principals=[self.username],
                valid_before=int(time.time()) + self.lifetime,
            )
            return {
                **where,
                "certificate": cert.export_certificate().decode(),
                "key_id": "credsidecar:alice:r1:hpc1",
                "valid_before": int(time.time()) + self.lifetime,
            }
        if path == "/v1/hpc/stored-key":
            return {**where, "public_key": STORED.export_public_key().decode()}
        if path == "/v1/hpc/stored-key/sign":
            data = base64.b64decode(body["data"])
            self.signed.append(data)
            signature = STORED.sign(data, body["algorithm"].encode())
            return {"signature": base64.b64encode(signature).decode()}
        raise AssertionError(path)


async def login(issuer: FakeIssuer, mode: str) -> str:
    conn, _ = await connect(issuer, "launch-token", "hpc1", mode, connect_timeout=5)  # type: ignore[arg-type]
    async with conn:
        return str((await conn.run("whoami", check=True)).stdout).strip()


async def test_a_fresh_key_with_a_certificate_logs_in_as_its_principal(node: LoginNode) -> None:
    assert await login(FakeIssuer(node), "certificate") == "csalice"


async def test_a_stored_key_signs_at_the_issuer_only_the_login(node: LoginNode) -> None:
    issuer = FakeIssuer(node, username="csbob")
    assert await login(issuer, "stored-key") == "csbob"
    [data] = issuer.signed  # one signature, over the userauth request for csbob
    assert b"csbob" in data and b"publickey" in data and STORED.public_data in data


async def test_a_host_key_the_cluster_does_not_list_is_never_accepted(node: LoginNode) -> None:
    other = asyncssh.generate_private_key("ssh-ed25519")
    issuer = FakeIssuer(node, known_hosts=node.known_hosts(other))
    with pytest.raises(HpcSshError, match="host key is not trusted"):
        await login(issuer, "certificate")


async def test_a_refused_certificate_says_what_to_check(node: LoginNode) -> None:
    with pytest.raises(HpcSshError) as refused:
        await login(FakeIssuer(node, username="csbob"), "certificate")  # principal not allowed
    message = refused.value.message
    assert "permission denied for csbob@127.0.0.1" in message
    assert "credsidecar:alice:r1:hpc1" in message and "TrustedUserCAKeys" in message
