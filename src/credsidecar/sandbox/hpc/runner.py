"""Starts the sandbox's two HPC login nodes and describes them for the issuer's registry.

- `sandbox-cluster` (certificate mode): trusts the issuer's SSH CA (fetched from the issuer's
  `GET /v1/ssh/ca.pub` at the first login) for the principals alice and bob; its host key is
  signed by a sandbox host CA, which the registry entry names (`host_ca_key`).
- `sandbox-stored` (stored-key mode): accepts, for each user, one key pair made here; the
  private keys are handed to whoever registers them at the issuer (dev.py uploads the member's
  own, sealed) and never written to disk; its host key is pinned (`host_keys`).

Both log to `DIRECTORY/login.log`, run commands as the current Unix user with the Slurm
stand-ins (slurm.py) on the PATH, and offer `DIRECTORY/work`, a work directory set up the way
shared-group sites want it (setgid, a default ACL giving the group rwx), for `hpc check`.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncssh

from credsidecar.listen import bind_loopback
from credsidecar.sandbox.hpc.login import LoginLog, LoginNode
from credsidecar.sandbox.hpc.slurm import write_slurm_stand_ins
from credsidecar.sandbox.seed import USERS

__all__ = ["CERTIFICATE_CLUSTER", "STORED_KEY_CLUSTER", "HpcSandbox", "start_hpc_sandbox"]

CERTIFICATE_CLUSTER = "sandbox-cluster"  # the example policy's [identities.hpc.sandbox-cluster]
STORED_KEY_CLUSTER = "sandbox-stored"  # in the registry only: open to members with a key there
SCHEDULER = "slurm"  # stood in for by slurm.py


class IssuerCa:
    """The issuer's SSH CA line, fetched once (at the first login, so the sandbox can start
    before the issuer it trusts)."""

    def __init__(self, issuer_url: str) -> None:
        self._url = issuer_url.rstrip("/") + "/v1/ssh/ca.pub"
        self._line: str | None = None
        self._lock = asyncio.Lock()

    async def __call__(self) -> str | None:
        async with self._lock:
            if self._line is None:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    timeout = aiohttp.ClientTimeout(total=10)
                    async with (
                        aiohttp.ClientSession(timeout=timeout) as http,
                        http.get(self._url) as resp,
                    ):
                        if resp.status == 200:
                            self._line = (await resp.text()).strip() or None
            return self._line  # None: not reachable now; certificates are refused, and retried


@dataclass
class HpcSandbox:
    certificate_node: LoginNode
    stored_key_node: LoginNode
    host_ca_key: str  # the public key that signs the certificate node's host key
    member_keys: dict[str, asyncssh.SSHKey]  # stored-key mode: each user's private key
    directory: Path
    work_dir: Path
    log_path: Path
    stopped: bool = field(default=False)

    def registrations(self) -> list[dict[str, Any]]:
        """The bodies of `POST /v1/hpc/clusters` that register both nodes."""
        cert, stored = self.certificate_node, self.stored_key_node
        return [
            {
                "name": CERTIFICATE_CLUSTER,
                "host": cert.host,
                "port": cert.port,
                "scheduler": SCHEDULER,
                "mode": "certificate",
                "host_ca_key": self.host_ca_key,
            },  # usernames: the example policy's (alice = "alice", bob = "bob")
            {
                "name": STORED_KEY_CLUSTER,
                "host": stored.host,
                "port": stored.port,
                "scheduler": SCHEDULER,
                "mode": "stored-key",
                "host_keys": [stored.host_key.export_public_key().decode().strip()],
            },
        ]

    def describe(self) -> dict[str, Any]:
        """Each node as an owner registers it (`hpc cluster add`), and where things are."""
        principals = sorted(self.certificate_node.principals)
        return {
            "hpc": {
                "clusters": {
                    body["name"]: {**body, "principals": principals}
                    for body in self.registrations()
                },
                "runs_as": getpass.getuser(),
                "work_dir": str(self.work_dir),
                "login_log": str(self.log_path),
            }
        }

    async def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        await self.stored_key_node.stop()
        await self.certificate_node.stop()


def _prepare_directory(directory: Path) -> tuple[Path, Path]:
    """The Slurm stand-ins and a setgid work directory; returns (bin dir, work dir)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    bin_dir, work = directory / "bin", directory / "work"
    write_slurm_stand_ins(bin_dir)
    work.mkdir(exist_ok=True)
    work.chmod(0o2770)
    return bin_dir, work


async def _default_acl(work: Path) -> None:
    """A default ACL giving the directory's group rwx on new entries, where setfacl exists
    (else `hpc check` says it is missing, with the command that fixes it)."""
    with contextlib.suppress(OSError):
        proc = await asyncio.create_subprocess_exec(
            "setfacl", "-m", "d:g::rwx,d:m::rwx", str(work),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        await proc.wait()


async def start_hpc_sandbox(
    issuer_url: str, directory: Path, users: tuple[str, ...] = USERS
) -> HpcSandbox:
    """Both login nodes listening on loopback (ports the OS picks); if the second fails to
    start, the first is stopped before the error propagates."""
    bin_dir, work = await asyncio.to_thread(_prepare_directory, directory)
    await _default_acl(work)
    log_path = directory / "login.log"
    log = LoginLog(log_path)
    jobs = {"SANDBOX_SLURM_DIR": str(directory / "slurm-jobs")}

    host_ca = asyncssh.generate_private_key("ssh-ed25519", comment="sandbox host CA")
    cert_host_key = asyncssh.generate_private_key("ssh-ed25519")
    host_cert = host_ca.generate_host_certificate(
        cert_host_key, f"{CERTIFICATE_CLUSTER} host", principals=["127.0.0.1", "localhost"]
    )
    certificate_node = LoginNode(
        CERTIFICATE_CLUSTER,
        host_key=cert_host_key,
        host_certificate=host_cert,
        principals=users,
        user_ca=IssuerCa(issuer_url),
        log=log,
        path_prefix=str(bin_dir),
        extra_env=jobs,
    )
    member_keys = {user: asyncssh.generate_private_key("ssh-ed25519") for user in users}
    stored_key_node = LoginNode(
        STORED_KEY_CLUSTER,
        host_key=asyncssh.generate_private_key("ssh-ed25519"),
        principals=users,
        log=log,
        path_prefix=str(bin_dir),
        extra_env=jobs,
    )
    for user, key in member_keys.items():
        stored_key_node.authorize_key(user, key.export_public_key().decode())

    async with contextlib.AsyncExitStack() as started:
        for node in (certificate_node, stored_key_node):
            sock = bind_loopback()
            try:
                await node.start(sock)
            except BaseException:
                sock.close()
                raise
            started.push_async_callback(node.stop)
        started.pop_all()
    return HpcSandbox(
        certificate_node,
        stored_key_node,
        host_ca.export_public_key().decode().strip(),
        member_keys,
        directory,
        work,
        log_path,
    )
