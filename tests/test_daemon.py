"""`run_sidecar` start to clean exit, in process, under the fixture that fails any blocking call
on the event loop: the CA file, the audit log, the env files and their removal go through
threads. Direct mode against a stand-in STS keeps it free of issuer and sandbox."""

from __future__ import annotations

import asyncio
import ssl
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import certifi
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from credsidecar.config import SidecarConfig
from credsidecar.daemon import RunningSidecar, _token_source, run_sidecar
from credsidecar.errors import ConfigError
from credsidecar.jobenv import ENV_FILE_NAME

ROLE = "arn:aws:iam::123456789012:role/alice-data"
NS = "https://sts.amazonaws.com/doc/2011-06-15/"


def sts_app() -> web.Application:
    """Answers every AssumeRoleWithWebIdentity with credentials valid for an hour."""

    async def assume(request: web.Request) -> web.Response:
        form = await request.post()
        assert form["Action"] == "AssumeRoleWithWebIdentity"
        assert form["WebIdentityToken"] == "direct.token.value"
        expiration = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
        body = f"""<AssumeRoleWithWebIdentityResponse xmlns="{NS}">
  <AssumeRoleWithWebIdentityResult>
    <AssumedRoleUser><Arn>arn:aws:sts::123456789012:assumed-role/alice-data/direct</Arn>
      <AssumedRoleId>AROAEXAMPLE:direct</AssumedRoleId></AssumedRoleUser>
    <Credentials>
      <SessionToken>session-token</SessionToken>
      <SecretAccessKey>secret-key</SecretAccessKey>
      <Expiration>{expiration}</Expiration>
      <AccessKeyId>ASIAEXAMPLE</AccessKeyId>
    </Credentials>
  </AssumeRoleWithWebIdentityResult>
</AssumeRoleWithWebIdentityResponse>"""
        return web.Response(text=body, content_type="text/xml")

    app = web.Application()
    app.router.add_post("/", assume)
    return app


def on_the_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


@pytest.fixture
def tls_loads_on_the_loop(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of CA-loading calls made on the event loop's thread (the blocking-call
    fixture cannot see them: they read files from C)."""
    seen: list[str] = []

    def spy(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def call(self: ssl.SSLContext, *args: Any, **kwargs: Any) -> Any:
            if on_the_loop():
                seen.append(name)
            return real(self, *args, **kwargs)

        return call

    for name in ("load_verify_locations", "load_default_certs"):
        monkeypatch.setattr(ssl.SSLContext, name, spy(name, getattr(ssl.SSLContext, name)))
    return seen


async def test_the_sidecar_starts_and_stops_without_blocking_the_loop(
    tmp_path: Path, tls_loads_on_the_loop: list[str]
) -> None:
    token = tmp_path / "token"
    token.write_text("direct.token.value")
    async with TestServer(sts_app()) as sts:
        config = SidecarConfig(
            direct_token_file=token,
            aws_role_arn=ROLE,
            aws_sts_endpoint=str(sts.make_url("/")),
            clouds=frozenset({"aws"}),
            ca_file=Path(certifi.where()),
            run_dir=tmp_path / "run",
            env_file=tmp_path / "job.env",
            audit_log=str(tmp_path / "logs" / "audit.jsonl"),
            job_env={"EXTRA": "1"},
        )
        stop = asyncio.Event()
        started: asyncio.Future[RunningSidecar] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(run_sidecar(config, stop, started))
        await asyncio.wait([task, started], return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()  # raises why it could not start
        running = started.result()
        written = await asyncio.to_thread((tmp_path / "job.env").read_text)
        in_run_dir = await asyncio.to_thread((tmp_path / "run" / ENV_FILE_NAME).read_text)
        assert written == in_run_dir == running.env_text
        assert "export EXTRA=1" in written and running.url in written
        stop.set()
        assert await task == 0
    leftovers = await asyncio.to_thread(
        lambda: sorted(p.name for p in (tmp_path / "run").iterdir())
    )
    assert leftovers == []
    assert not (tmp_path / "job.env").exists()
    audit = await asyncio.to_thread((tmp_path / "logs" / "audit.jsonl").read_text)
    assert '"event":"sidecar.ready"' in audit and '"event":"sidecar.stopped"' in audit
    assert tls_loads_on_the_loop == []


async def test_a_launch_token_on_stdin_is_read_off_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "stdin"
    path.write_text("a.b.c\n")
    with path.open(encoding="utf-8") as stdin:  # a real file: reading it blocks
        monkeypatch.setattr(sys, "stdin", stdin)
        source = await _token_source(SidecarConfig(token_stdin=True, run_dir=tmp_path))
    assert await source.read() == "a.b.c"
    assert source.description == "standard input"


async def test_a_stop_while_waiting_for_the_first_credentials_ends_the_sidecar_cleanly(
    tmp_path: Path,
) -> None:
    """SIGTERM (here: the stop event the signal handler sets) must not wait for readiness: as
    PID 1 in a container an unhandled SIGTERM is ignored and the runtime kills the sidecar."""
    token = tmp_path / "token"
    token.write_text("direct.token.value")
    attempts = asyncio.Event()

    async def unavailable(request: web.Request) -> web.Response:
        attempts.set()
        return web.Response(status=503, text="<ErrorResponse/>", content_type="text/xml")

    app = web.Application()
    app.router.add_post("/", unavailable)
    async with TestServer(app) as sts:
        config = SidecarConfig(
            direct_token_file=token,
            aws_role_arn=ROLE,
            aws_sts_endpoint=str(sts.make_url("/")),
            clouds=frozenset({"aws"}),
            run_dir=tmp_path / "run",
            audit_log=str(tmp_path / "audit.jsonl"),
            ready_timeout=600,
        )
        stop = asyncio.Event()
        task = asyncio.create_task(run_sidecar(config, stop))
        await attempts.wait()  # it is retrying STS, not ready
        stop.set()
        assert await asyncio.wait_for(task, timeout=60) == 0
    assert await asyncio.to_thread(lambda: list((tmp_path / "run").iterdir())) == []
    audit = await asyncio.to_thread((tmp_path / "audit.jsonl").read_text)
    assert '"event":"sidecar.stopped"' in audit and '"event":"sidecar.ready"' not in audit


async def test_well_known_without_the_address_here_stops_with_what_to_do(tmp_path: Path) -> None:
    """--well-known binds 169.254.169.254:80, which must already be on an interface: where it
    is not (this test's network namespace), the sidecar says how to add it, before serving."""
    token = tmp_path / "token"
    token.write_text("direct.token.value")
    config = SidecarConfig(
        direct_token_file=token, aws_role_arn=ROLE, well_known=True,
        run_dir=tmp_path / "run", audit_log=str(tmp_path / "audit.jsonl"),
    )  # fmt: skip
    with pytest.raises(ConfigError, match=r"cannot bind 169\.254\.169\.254:80 .*`ip addr add 169"):
        await run_sidecar(config, asyncio.Event())
