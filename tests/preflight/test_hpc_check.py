"""check_hpc: `hpc check` of an ssh://CLUSTER/PATH target, against the sandbox login nodes
registered at a real issuer exactly as `credsidecar dev` registers them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from credsidecar.dev import register_sandbox_clusters
from credsidecar.issuer.app import create_app
from credsidecar.issuer.config import load_config
from credsidecar.issuer.example import write_example
from credsidecar.issuer.runner import open_service
from credsidecar.issuer.service import LaunchRequest
from credsidecar.listen import bind_loopback, port_of
from credsidecar.preflight.hpc import _verdict, check_hpc
from credsidecar.preflight.model import Access, Outcome, Target, Verdict
from credsidecar.sandbox.hpc.runner import HpcSandbox, start_hpc_sandbox

READ = frozenset({Access.READ})
WORK_DIR = frozenset({Access.READ, Access.WRITE, Access.DELETE})


@dataclass
class Cluster:
    hpc: HpcSandbox
    token: str  # alice's launch token (genomics workspace: granted sandbox-cluster)
    http: aiohttp.ClientSession

    async def check(self, cluster: str, path: str, access: frozenset[Access]) -> Verdict:
        target = Target(f"ssh://{cluster}{path}", "hpc", cluster, None, path, access)
        return await check_hpc(target, launch_token=self.token, session=self.http)


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[Cluster]:
    sock = bind_loopback()
    with contextlib.ExitStack() as stack:
        stack.callback(sock.close)
        config_path, _ = await asyncio.to_thread(
            write_example, tmp_path, port_of(sock), stored_keys=True
        )
        config = await asyncio.to_thread(load_config, config_path)
        service = await asyncio.to_thread(stack.enter_context, open_service(config))
        runner = web.AppRunner(create_app(service), access_log=None)
        await runner.setup()
        hpc = None
        try:
            await web.SockSite(runner, sock).start()
            hpc = await start_hpc_sandbox(config.issuer_url, tmp_path / "hpc")
            await register_sandbox_clusters(config, hpc, "alice", tmp_path)
            request = LaunchRequest(user="alice", run="run-1", workspace="genomics")
            minted = await asyncio.to_thread(service.tokens.mint, request, "test")
            async with aiohttp.ClientSession() as http:
                yield Cluster(hpc, minted.token, http)
        finally:
            if hpc is not None:
                await hpc.stop()
            await runner.cleanup()
            await asyncio.to_thread(stack.close)


async def test_a_prepared_work_dir_passes_as_the_users_account(sandbox: Cluster) -> None:
    verdict = await sandbox.check("sandbox-cluster", str(sandbox.hpc.work_dir), WORK_DIR)
    assert verdict.outcome is Outcome.OK, verdict
    assert verdict.identity == "alice@sandbox-cluster"


async def test_the_stored_key_cluster_is_checked_with_the_key_sealed_in_the_issuer(
    sandbox: Cluster,
) -> None:
    verdict = await sandbox.check("sandbox-stored", str(sandbox.hpc.work_dir), WORK_DIR)
    assert verdict.outcome is Outcome.OK, verdict
    assert verdict.identity == "alice@sandbox-stored"


async def test_a_missing_directory_is_not_found(sandbox: Cluster) -> None:
    missing = f"{sandbox.hpc.directory}/no-such-dir"
    verdict = await sandbox.check("sandbox-cluster", missing, WORK_DIR)
    assert verdict.outcome is Outcome.NOT_FOUND
    assert f"{missing} does not exist" in verdict.detail


async def test_a_work_dir_without_the_shared_group_set_up_is_denied_with_the_fix(
    sandbox: Cluster,
) -> None:
    plain = sandbox.hpc.directory / "plain"
    await asyncio.to_thread(plain.mkdir, 0o755)
    verdict = await sandbox.check("sandbox-cluster", str(plain), WORK_DIR)
    assert verdict.outcome is Outcome.DENIED
    assert "setgid" in verdict.missing
    assert f"chmod g+s {plain}" in verdict.detail


async def test_reading_a_plain_directory_needs_no_shared_group_set_up(sandbox: Cluster) -> None:
    plain = sandbox.hpc.directory / "plain"
    await asyncio.to_thread(plain.mkdir, 0o755)
    verdict = await sandbox.check("sandbox-cluster", str(plain), READ)
    assert verdict.outcome is Outcome.OK, verdict


async def test_a_home_relative_path_is_resolved_on_the_login_node(sandbox: Cluster) -> None:
    verdict = await sandbox.check("sandbox-cluster", "~", READ)
    assert verdict.outcome is Outcome.OK, verdict


async def test_an_unknown_cluster_is_not_found(sandbox: Cluster) -> None:
    verdict = await sandbox.check("no-such-cluster", "/tmp", READ)
    assert verdict.outcome is Outcome.NOT_FOUND
    assert "no HPC cluster 'no-such-cluster'" in verdict.detail


async def test_a_login_node_that_is_down_is_unreachable(sandbox: Cluster) -> None:
    await sandbox.hpc.certificate_node.stop()
    verdict = await sandbox.check("sandbox-cluster", "/tmp", READ)
    assert verdict.outcome is Outcome.UNREACHABLE
    assert "connection refused" in verdict.detail


def test_no_write_permission_is_denied_naming_the_directory() -> None:
    """(root may write anywhere, so this one judges the probe's output directly.)"""
    target = Target("ssh://c/w", "hpc", "c", None, "/w", WORK_DIR)
    output = (
        "user=alice\ngroups=lab\ncmd=sbatch:yes\ncmd=squeue:yes\ncmd=scancel:yes\n"
        "can=r:yes\ncan=w:no\ncan=x:yes\nexists=yes\ngroup=lab\nmode=2770\ngetfacl=yes\n"
        "acl=default:group::rwx\nacl=default:mask::rwx\n"
    )
    verdict = _verdict(target, "alice@c", "/w", output, None, "slurm")
    assert verdict.outcome is Outcome.DENIED
    assert verdict.missing == ("write permission",)
