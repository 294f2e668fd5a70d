"""The sandbox login node: sshd's certificate and key checks, without root, on loopback."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from credsidecar.issuer.hpc_registry import parse_cluster
from credsidecar.listen import bind_loopback
from credsidecar.sandbox import runner
from credsidecar.sandbox.hpc.login import LoginLog, LoginNode
from credsidecar.sandbox.hpc.runner import start_hpc_sandbox

KEY_ID = "credsidecar:alice:run-1:sandbox-cluster"


@dataclass
class Node:
    node: LoginNode
    ca: asyncssh.SSHKey
    host_ca: asyncssh.SSHKey
    log: Path

    def known_hosts(self) -> Any:
        line = self.host_ca.export_public_key().decode().strip()
        return asyncssh.import_known_hosts(f"@cert-authority [127.0.0.1]:{self.node.port} {line}\n")


async def _start(node: LoginNode) -> LoginNode:
    sock = bind_loopback()
    await node.start(sock)
    return node


@pytest.fixture
async def login(tmp_path: Path) -> AsyncIterator[Node]:
    ca = asyncssh.generate_private_key("ssh-ed25519")
    host_ca = asyncssh.generate_private_key("ssh-ed25519")
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    ca_line = ca.export_public_key().decode().strip()

    async def user_ca() -> str:
        return ca_line

    node = LoginNode(
        "sandbox-cluster",
        host_key=host_key,
        host_certificate=host_ca.generate_host_certificate(host_key, "h", principals=["127.0.0.1"]),
        principals=("alice", "bob"),
        user_ca=user_ca,
        log=LoginLog(tmp_path / "login.log"),
        home=tmp_path,
    )
    await _start(node)
    try:
        yield Node(node, ca, host_ca, tmp_path / "login.log")
    finally:
        await node.stop()


def _cert(
    ca: asyncssh.SSHKey,
    key: asyncssh.SSHKey,
    principals: list[str],
    valid_after: float | None = None,
    valid_before: float | None = None,
) -> asyncssh.SSHCertificate:
    now = time.time()
    return ca.generate_user_certificate(
        key,
        KEY_ID,
        principals=principals,
        valid_after=int(valid_after if valid_after is not None else now - 60),
        valid_before=int(valid_before if valid_before is not None else now + 900),
    )


async def _connect(n: Node, username: str, client_keys: list[Any]) -> asyncssh.SSHClientConnection:
    return await asyncssh.connect(
        "127.0.0.1",
        n.node.port,
        username=username,
        known_hosts=n.known_hosts(),
        client_keys=client_keys,
        agent_path=None,
        config=[],
        password=None,
        kbdint_auth=False,
        gss_auth=False,
    )


async def _log(n: Node) -> str:
    return await asyncio.to_thread(n.log.read_text)


async def test_a_certificate_for_the_mapped_principal_logs_in_and_runs_a_real_shell(
    login: Node,
) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    async with await _connect(login, "alice", [(key, _cert(login.ca, key, ["alice"]))]) as conn:
        done = await conn.run("hostname; echo from-stdin-$(cat); exit 3", input="x", check=False)
    assert done.stdout == f"{socket.gethostname()}\nfrom-stdin-x\n"
    assert done.exit_status == 3
    log = await _log(login)
    assert f"accepted certificate ID {KEY_ID}" in log and "principal alice" in log


async def test_sftp_is_refused_a_batch_login_node_runs_commands_only(login: Node) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    async with await _connect(login, "alice", [(key, _cert(login.ca, key, ["alice"]))]) as conn:
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.create_process(subsystem="sftp")


async def test_an_expired_certificate_is_refused_and_the_refusal_logged(login: Node) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    now = time.time()
    cert = _cert(login.ca, key, ["alice"], valid_after=now - 7200, valid_before=now - 3600)
    with pytest.raises(asyncssh.PermissionDenied):
        await _connect(login, "alice", [(key, cert)])
    assert f"refused certificate ID {KEY_ID}" in await _log(login)
    assert "expired" in await _log(login)


async def test_a_certificate_for_another_principal_is_refused(login: Node) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    with pytest.raises(asyncssh.PermissionDenied):
        await _connect(login, "alice", [(key, _cert(login.ca, key, ["bob"]))])
    assert "principal 'alice' not in ['bob']" in await _log(login)


async def test_a_certificate_without_principals_is_refused(login: Node) -> None:
    """An empty principal list means "any user" to sshd: never accepted."""
    key = asyncssh.generate_private_key("ssh-ed25519")
    with pytest.raises(asyncssh.PermissionDenied):
        await _connect(login, "alice", [(key, _cert(login.ca, key, []))])
    assert "no principals" in await _log(login)


async def test_a_principal_the_node_does_not_map_is_refused(login: Node) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    with pytest.raises(asyncssh.PermissionDenied):
        await _connect(login, "carol", [(key, _cert(login.ca, key, ["carol"]))])
    assert "no account for 'carol'" in await _log(login)


async def test_a_certificate_from_another_ca_is_refused(login: Node) -> None:
    other_ca = asyncssh.generate_private_key("ssh-ed25519")
    key = asyncssh.generate_private_key("ssh-ed25519")
    with pytest.raises(asyncssh.PermissionDenied):
        await _connect(login, "alice", [(key, _cert(other_ca, key, ["alice"]))])
    assert "signed by a CA this login node does not trust" in await _log(login)


async def test_a_plain_key_is_refused_by_the_certificate_node(login: Node) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    with pytest.raises(asyncssh.PermissionDenied):
        await _connect(login, "alice", [key])
    assert "not authorized for alice" in await _log(login)


async def test_a_client_trusting_another_host_ca_refuses_the_node(login: Node) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    stranger = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    with pytest.raises(asyncssh.HostKeyNotVerifiable):
        await asyncssh.connect(
            "127.0.0.1",
            login.node.port,
            username="alice",
            known_hosts=asyncssh.import_known_hosts(
                f"@cert-authority [127.0.0.1]:{login.node.port} {stranger}"
            ),
            client_keys=[(key, _cert(login.ca, key, ["alice"]))],
            agent_path=None,
            config=[],
        )


async def test_the_stored_key_node_accepts_the_members_key_for_its_username_only(
    tmp_path: Path,
) -> None:
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    member = asyncssh.generate_private_key("ssh-ed25519")
    node = LoginNode(
        "sandbox-stored",
        host_key=host_key,
        principals=("alice", "bob"),
        log=LoginLog(tmp_path / "login.log"),
        home=tmp_path,
    )
    node.authorize_key("alice", member.export_public_key().decode())
    await _start(node)
    pinned = asyncssh.import_known_hosts(
        f"[127.0.0.1]:{node.port} {host_key.export_public_key().decode()}"
    )
    options: dict[str, Any] = {"known_hosts": pinned, "agent_path": None, "config": []}
    try:
        async with asyncssh.connect(
            "127.0.0.1", node.port, username="alice", client_keys=[member], **options
        ) as conn:
            done = await conn.run("echo $USER", check=True)
        assert done.stdout
        with pytest.raises(asyncssh.PermissionDenied):
            await asyncssh.connect(
                "127.0.0.1", node.port, username="bob", client_keys=[member], **options
            )
    finally:
        await node.stop()
    log = (tmp_path / "login.log").read_text()
    fingerprint = member.get_fingerprint("sha256")
    assert f"sandbox-stored: accepted key {fingerprint} authorized for alice" in log
    assert f"refused key {fingerprint} not authorized for bob" in log


async def test_stop_ends_a_running_session_and_what_it_left_in_the_background(
    login: Node, tmp_path: Path
) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    conn = await _connect(login, "alice", [(key, _cert(login.ca, key, ["alice"]))])
    marker = tmp_path / "pid"
    process = await conn.create_process(f"sleep 300 & echo $! > {marker}; echo started; wait")
    assert (await process.stdout.readline()).strip() == "started"
    pid = int((await asyncio.to_thread(marker.read_text)).strip())
    pidfd = os.pidfd_open(pid)  # readable once the process has exited (no polling)
    try:
        exited = asyncio.Event()
        asyncio.get_running_loop().add_reader(pidfd, exited.set)
        await login.node.stop()
        await conn.wait_closed()
        await asyncio.wait_for(exited.wait(), 30)
        asyncio.get_running_loop().remove_reader(pidfd)
    finally:
        os.close(pidfd)


async def test_stop_ends_a_background_job_a_finished_session_left_running(login: Node) -> None:
    """Like the Slurm stand-in's jobs: the session ended, its job did not; stop() ends it."""
    key = asyncssh.generate_private_key("ssh-ed25519")
    async with await _connect(login, "alice", [(key, _cert(login.ca, key, ["alice"]))]) as conn:
        done = await conn.run("sleep 300 >/dev/null 2>&1 </dev/null & echo $!", check=True)
    assert isinstance(done.stdout, str)
    pidfd = os.pidfd_open(int(done.stdout))
    try:
        exited = asyncio.Event()
        asyncio.get_running_loop().add_reader(pidfd, exited.set)
        assert not exited.is_set()
        await login.node.stop()
        await asyncio.wait_for(exited.wait(), 30)
        asyncio.get_running_loop().remove_reader(pidfd)
    finally:
        os.close(pidfd)


async def test_the_login_log_stops_at_its_cap(tmp_path: Path) -> None:
    log = LoginLog(tmp_path / "login.log", max_bytes=200)
    for i in range(50):
        await log.write(f"refused attempt {i}")
    text = await asyncio.to_thread((tmp_path / "login.log").read_text)
    assert len(text) <= 200 + 64
    assert text.endswith("log full: later attempts are not logged\n")


async def test_the_login_nodes_failing_to_start_stops_every_cloud_started_before(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    stopped: list[str] = []

    class Started:
        def __init__(self, name: str) -> None:
            self.name = name

        async def stop(self) -> None:
            stopped.append(self.name)

    async def start(name: str) -> Started:
        return Started(name)

    async def start_hpc(*args: Any) -> Any:
        raise OSError("no room for the login nodes")

    monkeypatch.setattr(runner, "start_aws_sandbox", lambda *a: start("aws"))
    monkeypatch.setattr(runner, "start_gcp_sandbox", lambda *a: start("gcp"))
    monkeypatch.setattr(runner, "start_azure_sandbox", lambda *a, **k: start("azure"))
    monkeypatch.setattr(runner, "start_hpc_sandbox", start_hpc)

    with pytest.raises(OSError, match="no room for the login nodes"):
        await runner.start_sandbox("http://127.0.0.1:1", tmp_path)
    assert stopped == ["azure", "gcp", "aws"]


async def test_the_sandbox_login_nodes_present_the_host_keys_their_registrations_name(
    tmp_path: Path,
) -> None:
    """What the issuer's registry is told (host CA / pinned key) is what the nodes present."""
    hpc = await start_hpc_sandbox("http://127.0.0.1:1", tmp_path / "hpc")
    try:
        for body in hpc.registrations():
            cluster = parse_cluster(body["name"], body, {})
            with pytest.raises(asyncssh.PermissionDenied):  # host verified, then no key to offer
                await asyncssh.connect(
                    cluster.host,
                    cluster.port,
                    username="alice",
                    known_hosts=asyncssh.import_known_hosts(cluster.known_hosts()),
                    client_keys=[asyncssh.generate_private_key("ssh-ed25519")],
                    agent_path=None,
                    config=[],
                )
    finally:
        await hpc.stop()
