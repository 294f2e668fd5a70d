"""The supervisor's pieces that need no processes: worker count, the config a worker receives,
the listening socket. The processes themselves: tests/e2e/test_issuer_workers.py."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import pickle
import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from credsidecar.cli import _parser
from credsidecar.errors import ConfigError
from credsidecar.issuer import runner
from credsidecar.issuer.config import MAX_WORKERS, IssuerConfig, RateLimit, load_config
from credsidecar.issuer.example import write_example
from credsidecar.issuer.runner import serve_here
from credsidecar.issuer.workers import (
    WORKER_HEADER,
    _config_message,
    _receive_config,
    bind_listening,
    worker_count,
)
from credsidecar.listen import bind_loopback, port_of
from credsidecar.serving import ConnectionLimits, LimitedSite


def test_a_number_of_workers_is_kept_and_auto_is_one_per_usable_core() -> None:
    assert worker_count(3) == 3
    assert worker_count(0) == min(len(os.sched_getaffinity(0)), MAX_WORKERS)


def test_a_worker_receives_exactly_the_config_the_supervisor_parsed(tmp_path: Path) -> None:
    config = dataclasses.replace(
        load_config(write_example(tmp_path, 8400)[0]),
        workers=2,
        run_rate=RateLimit(rate=2.5, burst=7),
    )
    parent, child = socket.socketpair()
    with parent, child:
        parent.sendall(_config_message(config))
        assert _receive_config(child) == config


def test_a_worker_refuses_a_config_message_naming_anything_else() -> None:
    data = pickle.dumps(os.system)
    parent, child = socket.socketpair()
    with parent, child:
        parent.sendall(len(data).to_bytes(4, "big") + data)
        with pytest.raises(pickle.UnpicklingError, match="not part of the issuer config"):
            _receive_config(child)


def test_a_worker_whose_supervisor_is_gone_before_the_config_says_so() -> None:
    parent, child = socket.socketpair()
    with child:
        parent.close()
        with pytest.raises(ConfigError, match="went away before sending its config"):
            _receive_config(child)


def test_the_supervisor_listens_once_and_a_taken_address_is_a_config_error(
    tmp_path: Path,
) -> None:
    with bind_loopback() as taken:
        taken.listen()
        config = load_config(write_example(tmp_path, port_of(taken))[0])
        with pytest.raises(ConfigError, match=r"cannot listen on 127\.0\.0\.1:\d+: .*ss -ltnp"):
            bind_listening(config)
    socks = bind_listening(config)  # now free
    try:
        assert [s.getsockname() for s in socks] == [("127.0.0.1", config.port)]
        # Listening already: a client connects before any worker exists.
        with socket.create_connection(("127.0.0.1", config.port)):
            pass
    finally:
        for sock in socks:
            sock.close()


@pytest.mark.parametrize(
    ("argv", "workers"),
    [
        (["issuer", "--config", "c.toml"], None),  # the config's `workers`
        (["issuer", "--config", "c.toml", "--workers", "2"], 2),
        (["issuer", "--workers", "auto", "serve", "--config", "c.toml"], 0),
        (["issuer", "serve", "--config", "c.toml", "--workers", "3"], 3),
    ],
)
def test_the_command_line_can_set_the_number_of_workers(
    argv: list[str], workers: int | None
) -> None:
    assert _parser().parse_args(argv).workers == workers


def test_a_bad_number_of_workers_on_the_command_line_says_what_to_give(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["issuer", "--config", "c.toml", "--workers", "0"])
    assert f"give a number of processes, 1-{MAX_WORKERS}, or auto" in capsys.readouterr().err


def _serve_once(config: IssuerConfig, worker: int | None) -> str | None:
    """Serves in this process until one request has been answered; its worker header."""

    async def main() -> str | None:
        ready, stop = asyncio.Event(), asyncio.Event()
        sock = bind_loopback()
        port = port_of(sock)
        task = asyncio.create_task(serve_here(config, ready, stop, [sock], worker=worker))
        await ready.wait()
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://127.0.0.1:{port}/healthz") as resp,
            ):
                return resp.headers.get(WORKER_HEADER)
        finally:
            stop.set()
            await task

    # A plain test running its own loop: starting an issuer opens its files on the loop.
    return asyncio.run(main())


def test_a_worker_names_itself_and_accepts_one_connection_a_turn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker taking a batch at each wake-up would take every connection of a burst (a load
    balancer's keep-alive pool) while the others idle; measured: all on one worker before."""
    sites: list[ConnectionLimits | None] = []

    class Recorded(LimitedSite):
        def __init__(self, *args: Any, limits: ConnectionLimits | None = None, **kw: Any) -> None:
            sites.append(limits)
            super().__init__(*args, limits=limits, **kw)

    monkeypatch.setattr(runner, "LimitedSite", Recorded)
    config = load_config(write_example(tmp_path, 8400)[0])
    assert _serve_once(config, worker=2) == "2"
    assert sites[-1] is not None and sites[-1].accept_batch == 1
    assert _serve_once(config, worker=None) is None  # one process: as before
    assert sites[-1] is None
