"""Several issuer worker processes on one listening socket, so RS256 signing uses every core.

`workers = N` (or "auto": one per core this process may run on) in the issuer config makes
`credsidecar issuer serve` a supervisor:

1. It binds and listens once (the same address rules and taken-port error as one worker), then
   opens the store once: migrations run and the first signing key is created before any worker
   starts, so workers never race to create them.
2. It starts N workers, `python -m credsidecar.issuer.workers`, which inherit the listening
   socket(s) and one end of a private socket pair (`pass_fds`; nothing else is inherited).
   Spawned, not forked: the parent has an event loop and threads, which a fork would copy
   half-way. The kernel hands each new connection to whichever worker accepts it first; each
   worker runs the one-process issuer (runner.serve_here) with its own event loop, store
   connection(s), key refresh and policy watch. No SO_REUSEPORT: an inherited socket cannot be
   joined by another local user, a reuse-port group can (by any process of the same user).
3. Over the socket pair the parent sends the config it parsed (so a restarted worker serves
   exactly what the issuer started with, even if issuer.toml was edited since: an edit applies
   at restart, as with one process) and the worker answers "ready" once it serves. The parent
   logs the "listening on" line, and sets `ready`, only when every worker has answered. A
   worker whose socket pair reaches end-of-file (the parent is gone, even by SIGKILL) stops.
4. A worker that exits is restarted after a short backoff, the others serving meanwhile; one
   that exits `CRASH_LOOP_EXITS` times within `CRASH_LOOP_SECONDS` makes the supervisor stop
   every worker and fail with a message saying which and what to do. SIGTERM/SIGINT stop every
   worker and wait for them; SIGHUP is forwarded (policy and key reload in each worker).

A little over ~400 lines: both ends of the hand-over protocol (the supervisor's and the
worker's) live here so that they are read, and changed, together.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import io
import logging
import os
import pickle
import signal
import socket
import struct
import sys
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from credsidecar.errors import ConfigError, CredsidecarError
from credsidecar.issuer.config import MAX_WORKERS, IssuerConfig, issuer_url_warning
from credsidecar.issuer.runner import listen_error, open_service, serve_here
from credsidecar.serving import LISTEN_BACKLOG

__all__ = ["WORKER_HEADER", "supervise", "worker_count"]

WORKER_MODULE = "credsidecar.issuer.workers"
# Named, not __name__: a worker runs this module as __main__.
log = logging.getLogger(WORKER_MODULE)
# Each response names the worker that made it (its number, 1..N, not a pid): operators and the
# tests see the load spread; the issuer serves sidecars and platforms, and a small number
# reveals nothing about them.
WORKER_HEADER = "X-Credsidecar-Worker"
# A worker exiting this often within this window is crash-looping (a bad host, a broken
# install, memory exhausted at every start): restarting it more only hides the cause.
CRASH_LOOP_EXITS = 5
CRASH_LOOP_SECONDS = 60.0
# Restarts wait FIRST_RESTART_DELAY, doubled at each exit within the window, at most
# MAX_RESTART_DELAY: a worker killed once is back at once, a failing one does not spin.
FIRST_RESTART_DELAY = 0.1
MAX_RESTART_DELAY = 5.0
# A worker finishes the requests in flight on SIGTERM (aiohttp allows them 60 s); one that has
# not exited after this long is killed, so a stop always ends.
STOP_GRACE_SECONDS = 75.0
_READY = b"ready\n"
_LENGTH = struct.Struct("!I")


def worker_count(configured: int) -> int:
    """`workers` from the config: 0 ("auto") is one per core this process may run on (its CPU
    affinity: taskset, cpusets). A CPU quota (a container's CPU limit) is not a core count:
    set `workers` to the limit there."""
    if configured > 0:
        return configured
    return max(1, min(len(os.sched_getaffinity(0)), MAX_WORKERS))


def _exit_status(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
        return f"was killed by signal {-code}"
    return f"exited with status {code}"


# the config, parent to worker ----------------------------------------------------------------


class _ConfigUnpickler(pickle.Unpickler):
    """Rebuilds only the config's own types: even from our own parent, a pickle may name
    nothing else (no callable, no other class)."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "credsidecar.issuer.config" or (module, name) in (
            ("pathlib", "PosixPath"),
            ("pathlib", "Path"),
        ):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of the issuer config")


def _config_message(config: IssuerConfig) -> bytes:
    data = pickle.dumps(config)
    return _LENGTH.pack(len(data)) + data


def _receive_config(control: socket.socket) -> IssuerConfig:
    """Reads the config the supervisor sent (blocking: before the worker's loop starts)."""
    with control.makefile("rb") as stream:
        head = stream.read(_LENGTH.size)
        if len(head) != _LENGTH.size:
            raise ConfigError("the issuer supervisor went away before sending its config")
        data = stream.read(_LENGTH.unpack(head)[0])
    config = _ConfigUnpickler(io.BytesIO(data)).load()  # only the config's types (see above)
    if not isinstance(config, IssuerConfig):
        raise ConfigError("the issuer supervisor sent something other than its config")
    return config


# the supervisor --------------------------------------------------------------------------------


def bind_listening(config: IssuerConfig) -> list[socket.socket]:
    """The config's listen address bound and listening (every address a host name has, as
    asyncio binds them for one worker), or the ConfigError one worker gives for a taken one."""
    socks: list[socket.socket] = []
    try:
        infos = socket.getaddrinfo(
            config.host or None, config.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:  # as asyncio does: v4 goes to its own socket
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(LISTEN_BACKLOG)
    except OSError as exc:
        for sock in socks:
            sock.close()
        raise listen_error(config, exc) from exc
    return socks


class _Worker:
    """One worker slot: its process (replaced at each restart) and its recent exits."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: asyncio.subprocess.Process | None = None
        # The supervisor's end of the socket pair: closing it tells the worker to stop.
        self.control: asyncio.StreamWriter | None = None
        self.exits: deque[float] = deque(maxlen=CRASH_LOOP_EXITS)
        self.served = False  # has served once (a later start is a restart)
        # Until its process reports ready it has no SIGHUP handler (a SIGHUP would kill it):
        # a reload asked meanwhile is sent once it serves.
        self.serving = False
        self.reload_pending = False

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)


class Supervisor:
    def __init__(self, config: IssuerConfig, count: int, socks: Sequence[socket.socket]) -> None:
        # Sent to every worker with the count resolved ("auto" made a number): each takes
        # 1/count of the rate limits, so the node's total stays as configured.
        self._config = dataclasses.replace(config, workers=count)
        self._socks = list(socks)
        self._workers = [_Worker(i) for i in range(1, count + 1)]
        self._stop = asyncio.Event()
        self._all_ready = asyncio.Event()
        self.failure: str | None = None

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        if not self._stop.is_set():
            log.info("stopping the issuer's %d workers", len(self._workers))
        self._stop.set()

    def hangup(self) -> None:
        """SIGHUP: every worker reloads its policy and keys."""
        log.info("SIGHUP: asking %d issuer workers to reload policy and keys", len(self._workers))
        for worker in self._workers:
            if worker.serving:
                worker.signal(signal.SIGHUP)
            else:
                worker.reload_pending = True

    async def _spawn(self, worker: _Worker) -> tuple[asyncio.subprocess.Process, bool]:
        """Starts the worker; whether it serves (False: it exited first)."""
        parent_end, child_end = socket.socketpair()
        fds = [child_end.fileno(), *(s.fileno() for s in self._socks)]
        level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
        argv = [sys.executable, "-m", WORKER_MODULE, "--index", str(worker.index),
                "--control-fd", str(child_end.fileno()),
                *(f"--listen-fd={s.fileno()}" for s in self._socks),
                "--log-level", level]  # fmt: skip
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, pass_fds=fds, stdin=asyncio.subprocess.DEVNULL
            )
        except BaseException:
            parent_end.close()
            raise
        finally:
            child_end.close()
        worker.proc = proc
        if self.stopping:  # stopped while it was being started: it stops too
            worker.signal(signal.SIGTERM)
        reader, writer = await asyncio.open_unix_connection(sock=parent_end)
        worker.control = writer  # kept: a writer dropped closes its end, stopping the worker
        writer.write(_config_message(self._config))
        answer = b""
        with contextlib.suppress(ConnectionError):  # it died at once: its exit is seen next
            await writer.drain()
            answer = await reader.readline()  # end-of-file if it exits before serving
        return proc, answer == _READY

    async def _run(self, worker: _Worker) -> None:
        try:
            await self._keep(worker)
        except Exception as exc:  # cannot start one (no memory, no descriptors left)
            if not self.stopping:
                self._fail(f"issuer worker {worker.index} could not be started ({exc}); "
                           "fix that and start the issuer again")  # fmt: skip

    def _fail(self, message: str) -> None:
        if self.failure is None:
            self.failure = message
            log.error("%s", message)
        self.stop()

    async def _keep(self, worker: _Worker) -> None:
        """Keeps the worker's slot filled until stop (or until it crash-loops)."""
        while not self.stopping:
            proc, serving = await self._spawn(worker)
            if serving:
                log.info("issuer worker %d (pid %d) %s", worker.index, proc.pid,
                         "serving again" if worker.served else "ready")  # fmt: skip
                worker.served = worker.serving = True
                if worker.reload_pending:
                    worker.reload_pending = False
                    worker.signal(signal.SIGHUP)
                if all(w.served for w in self._workers):
                    self._all_ready.set()
            code = await proc.wait()
            worker.serving = False
            self._close_control(worker)
            if self.stopping:
                return
            now = time.monotonic()
            worker.exits.append(now)
            recent = [t for t in worker.exits if now - t <= CRASH_LOOP_SECONDS]
            status = _exit_status(code)
            if len(recent) >= CRASH_LOOP_EXITS:
                self._fail(
                    f"issuer worker {worker.index} exited {len(recent)} times within "
                    f"{CRASH_LOOP_SECONDS:.0f} s (last: it {status}), so the issuer stops "
                    "instead of restarting it again; the worker's own log lines above say why "
                    "(killed by SIGKILL is often the out-of-memory killer: `journalctl -k`); "
                    "fix that, or set `workers = 1` to rule the workers out, and start again"
                )
                return
            delay = min(FIRST_RESTART_DELAY * 2 ** (len(recent) - 1), MAX_RESTART_DELAY)
            log.warning(
                "issuer worker %d (pid %d) %s; restarting it in %.1f s, the other workers "
                "serving meanwhile (its log lines above say why; after %d exits within %.0f s "
                "the issuer stops)",
                worker.index, proc.pid, status, delay, CRASH_LOOP_EXITS, CRASH_LOOP_SECONDS,
            )  # fmt: skip
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)

    def _close_control(self, worker: _Worker) -> None:
        if worker.control is not None:
            worker.control.close()
            worker.control = None

    async def run(self, ready: asyncio.Event | None) -> None:
        """Runs the workers until `stop()`; raises CredsidecarError if one crash-loops."""
        slots = [asyncio.create_task(self._run(w), name=f"worker {w.index}") for w in self._workers]
        announce = asyncio.create_task(self._announce(ready))
        try:
            await self._stop.wait()
        finally:
            self.stop()
            announce.cancel()
            await self._stop_workers(slots)
        if self.failure is not None:
            raise CredsidecarError(self.failure)

    async def _announce(self, ready: asyncio.Event | None) -> None:
        await self._all_ready.wait()
        host, port = self._socks[0].getsockname()[:2]
        scheme = "https" if self._config.tls_cert else "http"
        log.info(
            "issuer %s listening on %s://%s:%d with %d workers",
            self._config.issuer_url, scheme, f"[{host}]" if ":" in host else host, port,
            len(self._workers),
        )  # fmt: skip
        if ready is not None:
            ready.set()

    async def _stop_workers(self, slots: list[asyncio.Task[None]]) -> None:
        """SIGTERM to every worker; each slot ends once its worker has exited (one being
        started meanwhile is signalled by `_spawn`)."""
        for worker in self._workers:
            worker.signal(signal.SIGTERM)
        _, late = await asyncio.wait(slots, timeout=STOP_GRACE_SECONDS)
        if late:
            log.error("%d issuer worker(s) did not stop within %.0f s; killing them",
                      len(late), STOP_GRACE_SECONDS)  # fmt: skip
            for worker in self._workers:
                worker.signal(signal.SIGKILL)
            await asyncio.wait(late)
        for worker in self._workers:
            self._close_control(worker)


async def supervise(
    config: IssuerConfig,
    count: int,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
    sock: socket.socket | None = None,
) -> None:
    """Serves with `count` workers until SIGTERM/SIGINT (or `stop`); see the module docstring."""
    warning = issuer_url_warning(config.issuer_url)
    if warning:
        log.warning("%s", warning)
    socks = [sock] if sock is not None else await asyncio.to_thread(bind_listening, config)
    try:
        for listening in socks:
            listening.listen(LISTEN_BACKLOG)  # connections queue until a worker accepts
        # Migrations and the first signing key, once, before any worker starts; also fails
        # here, once, for what every worker would fail on (a bad key-encryption key, policy).
        await asyncio.to_thread(_prepare_state, config)
        supervisor = Supervisor(config, count, socks)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, supervisor.stop)
        loop.add_signal_handler(signal.SIGHUP, supervisor.hangup)
        stopper = asyncio.create_task((stop or asyncio.Event()).wait())
        stopper.add_done_callback(lambda _: supervisor.stop())
        try:
            await supervisor.run(ready)
        finally:
            stopper.cancel()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
    finally:
        for listening in socks:
            listening.close()


def _prepare_state(config: IssuerConfig) -> None:
    with open_service(config):
        pass


# the worker ------------------------------------------------------------------------------------


async def _serve_as_worker(
    config: IssuerConfig, control: socket.socket, socks: list[socket.socket], index: int
) -> None:
    ready, stop = asyncio.Event(), asyncio.Event()
    reader, writer = await asyncio.open_unix_connection(sock=control)

    async def lifeline() -> None:
        await ready.wait()
        writer.write(_READY)
        await writer.drain()
        await reader.read()  # nothing more comes: end-of-file is the supervisor gone
        if not stop.is_set():
            log.warning("the issuer supervisor is gone; this worker stops")
            stop.set()

    task = asyncio.create_task(lifeline())
    try:
        await serve_here(config, ready, stop, socks, worker=index, share=config.workers)
    finally:
        task.cancel()
        writer.close()


def _worker_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog=WORKER_MODULE, description="(started by the issuer)")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--listen-fd", type=int, action="append", required=True)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        format=f"%(asctime)s %(levelname)s %(name)s [worker {args.index}]: %(message)s",
        stream=sys.stderr,
    )
    # Ctrl-C reaches the whole process group: the supervisor stops the workers, in order.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    control = socket.socket(fileno=args.control_fd)
    socks = [socket.socket(fileno=fd) for fd in args.listen_fd]
    try:
        config = _receive_config(control)
        asyncio.run(_serve_as_worker(config, control, socks, args.index))
    except CredsidecarError as exc:
        print(f"credsidecar: issuer worker {args.index}: {exc.message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(_worker_main(sys.argv[1:]))
