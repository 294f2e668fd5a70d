"""`credsidecar serve`: the sidecar's life from start to clean exit.

start: read the launch token -> build each cloud's exchanger and cache -> obtain the first
credentials -> listen on loopback -> write the job's env file (the job waits for it) -> serve
until SIGTERM/SIGINT, the watched job process ends, or `stop` is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web

from credsidecar.audit import AuditLog
from credsidecar.config import RUN_DIR_REMEDY, SidecarConfig
from credsidecar.endpoints.guards import (
    Guard,
    PeerPolicy,
    RefusalLog,
    allowed_hosts,
    well_known_hosts,
)
from credsidecar.errors import ConfigError
from credsidecar.jobenv import ENV_FILE_NAME, render
from credsidecar.launch import (
    EnvTokenSource,
    FileTokenSource,
    StaticTokenSource,
    TokenSource,
    read_claims,
)
from credsidecar.launch.exchange import DirectToken, IssuerExchange, TokenSupplier
from credsidecar.listen import WELL_KNOWN_HOST_NAMES, bind_well_known
from credsidecar.private_files import (
    FileId,
    ensure_private_dir,
    remove_private,
    write_private_atomic,
)
from credsidecar.providers import (
    AWS_TOKEN_FILE_NAME,
    Context,
    Provider,
    build_aws,
    build_azure,
    build_gcp,
)
from credsidecar.server import create_sidecar_app
from credsidecar.serving import (
    MIN_CONNECTIONS,
    ConnectionLimits,
    connection_cap,
    raise_fd_limit,
    serving,
)
from credsidecar.tls import client_context

__all__ = ["RunningSidecar", "run_sidecar"]

log = logging.getLogger(__name__)

# How often the watched job PID is polled where pidfd is not available.
PID_POLL_SECONDS = 0.5


@dataclass
class RunningSidecar:
    url: str
    port: int
    env_text: str


async def _token_source(config: SidecarConfig) -> TokenSource:
    if config.token_file is not None:
        return FileTokenSource(config.token_file)  # reads off the loop, at each `read`
    if config.direct_token_file is not None:
        return FileTokenSource(config.direct_token_file)
    if config.token_env is not None:
        return EnvTokenSource(config.token_env)
    # A pipe the launcher may write slowly: read to its end off the loop.
    return StaticTokenSource(await asyncio.to_thread(sys.stdin.read), "standard input")


def job_environment(providers: list[Provider], extra: Mapping[str, str] | None = None) -> str:
    exports: dict[str, str] = {}
    unsets: list[str] = []
    for provider in providers:
        exports.update(provider.exports)
        unsets.extend(provider.unsets)
    exports.update(extra or {})
    return render(exports, [name for name in unsets if name not in exports])


async def _wait_for_pid_exit(pid: int) -> None:
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            except PermissionError:
                pass  # exists, owned by someone else
            await asyncio.sleep(PID_POLL_SECONDS)
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    loop.add_reader(fd, done.set)
    try:
        await done.wait()
    finally:
        loop.remove_reader(fd)
        os.close(fd)


def _bind(host: str, port: int) -> socket.socket:
    """Binds before the app exists, so the Host allowlist knows the real port (no race)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.setblocking(False)
    return sock


@contextlib.asynccontextmanager
async def _serving(
    app: web.Application, sock: socket.socket, limits: ConnectionLimits | None = None
) -> AsyncIterator[None]:
    """Serves within the connection limits (serving.py): open-files limit raised, a cap with
    room made by closing idle connections, idle and header-read timeouts."""
    async with serving(app, sock, limits=limits):
        yield


@contextlib.asynccontextmanager
async def _serving_all(
    guard: Guard, providers: list[Provider], socks: list[socket.socket]
) -> AsyncIterator[None]:
    """The same routes on every socket (loopback, and the well-known addresses), one app each;
    with several, the connection cap is shared out so that together they stay within it."""
    limits = None
    if len(socks) > 1:
        total = connection_cap(ConnectionLimits(), raise_fd_limit())
        limits = ConnectionLimits(max_connections=max(MIN_CONNECTIONS, total // len(socks)))
    async with contextlib.AsyncExitStack() as sites:
        for listening in socks:
            app = create_sidecar_app(guard, providers)
            await sites.enter_async_context(_serving(app, listening, limits))
        yield


def _where(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def _remove_files(private: list[Path], env_file: Path | None, env_file_id: FileId | None) -> None:
    """At exit: the run directory's files, and the --env-file we wrote if it is still ours."""
    for path in private:
        path.unlink(missing_ok=True)
    if env_file is not None and env_file_id is not None:
        remove_private(env_file, env_file_id)


async def run_sidecar(
    config: SidecarConfig,
    stop: asyncio.Event | None = None,
    started: asyncio.Future[RunningSidecar] | None = None,
) -> int:
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    # SIGTERM/SIGINT stop the sidecar from the first moment, also while it waits for its first
    # credentials: as PID 1 in a container an unhandled SIGTERM is ignored, and the runtime
    # would kill it after its grace period.
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    try:
        return await _run(config, stop, started)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(RuntimeError, ValueError):
                loop.remove_signal_handler(sig)


async def _run(
    config: SidecarConfig, stop: asyncio.Event, started: asyncio.Future[RunningSidecar] | None
) -> int:
    # Start-up I/O runs off the loop, like the rest. A bad --ca-file stops here, before
    # anything starts (loading CA files, the system's included, reads the disk).
    tls = await asyncio.to_thread(client_context, config.ca_file)
    # Refused before anything is written if another user planted or can reach it.
    run_dir = await asyncio.to_thread(
        ensure_private_dir, config.run_dir, what="run directory", remedy=RUN_DIR_REMEDY
    )
    env_file_id: FileId | None = None  # the --env-file we wrote, removed at exit if still ours
    audit = await asyncio.to_thread(AuditLog.open, config.audit_log)
    source = await _token_source(config)
    claims = None if config.direct else read_claims(await source.read())
    who = {"user": claims.user, "run": claims.run} if claims else {"user": "direct", "run": None}
    providers: list[Provider] = []
    connector = aiohttp.TCPConnector(ssl=tls)
    async with aiohttp.ClientSession(connector=connector) as session:
        supplier: TokenSupplier
        if claims is None:
            supplier = DirectToken(source)
        else:
            issuer = config.issuer_url or claims.issuer
            if not issuer:
                raise ConfigError("the launch token names no issuer (iss); pass --issuer-url")
            supplier = IssuerExchange(issuer, source, session)
        # Bound before anything is built, so the Host allowlist and the job's URLs know the port.
        try:
            sock = _bind(config.host, config.port)
            try:
                # --well-known: port 80 of the clouds' metadata addresses, beside loopback.
                well_known = bind_well_known() if config.well_known else []
            except BaseException:
                sock.close()
                raise
        except BaseException:  # nothing else is started yet: the audit log is all to close
            await asyncio.to_thread(audit.close)
            raise
        port = int(sock.getsockname()[1])
        url = f"http://{config.host}:{port}"
        hosts = allowed_hosts(port, ["169.254.169.254"] if config.link_local else [])
        if well_known:
            hosts |= well_known_hosts(WELL_KNOWN_HOST_NAMES)
        refusals = RefusalLog(audit)
        peers = PeerPolicy.for_job(config.allow_uids, config.any_local_peer)
        ctx = Context(config, claims, supplier, session, audit, who, url, hosts, refusals, peers)
        stopping: list[asyncio.Task[object]] = []
        try:
            builders = (("aws", build_aws), ("gcp", build_gcp), ("azure", build_azure))
            for name, build in builders:
                if config.clouds is not None and name not in config.clouds:
                    continue
                provider = await build(ctx)
                if provider is not None:
                    providers.append(provider)
            if not providers:
                who_text = claims.who if claims else "this launch"
                raise ConfigError(
                    f"{who_text} carries no cloud identity to serve; grant one in the policy "
                    "or pass --aws-role-arn"
                )
            stopping.append(asyncio.create_task(stop.wait()))
            if config.exit_with is not None:
                stopping.append(asyncio.create_task(_wait_for_pid_exit(config.exit_with)))
            starting: asyncio.Future[object] = asyncio.ensure_future(
                asyncio.gather(*(p.start() for p in providers))
            )
            await asyncio.wait([starting, *stopping], return_when=asyncio.FIRST_COMPLETED)
            if not starting.done():  # stopped (or the job ended) before the first credentials
                starting.cancel()
                await asyncio.gather(starting, return_exceptions=True)
                log.info("sidecar stopping before it was ready")
                return 0
            starting.result()  # a failed start raises here
            guard = Guard(hosts, refusals, config.link_local, peers=peers)
            async with _serving_all(guard, providers, [sock, *well_known]):
                env_text = job_environment(providers, config.job_env)
                await asyncio.to_thread(write_private_atomic, run_dir / ENV_FILE_NAME, env_text)
                if config.env_file is not None:
                    env_file_id = await asyncio.to_thread(
                        write_private_atomic, config.env_file, env_text
                    )
                described = "; ".join(p.description for p in providers)
                also = [_where(s) for s in well_known]
                log.info("sidecar ready at %s%s for %s", url,
                         f" and {', '.join(also)}" if also else "", described)  # fmt: skip
                audit.event("sidecar.ready", **who, url=url, providers=[p.name for p in providers],
                            **({"well_known": also} if also else {}))  # fmt: skip
                if started is not None and not started.done():
                    started.set_result(RunningSidecar(url, port, env_text))
                await asyncio.wait(stopping, return_when=asyncio.FIRST_COMPLETED)
                log.info("sidecar stopping")
        finally:
            for task in stopping:
                task.cancel()
            sock.close()
            for extra in well_known:
                extra.close()
            for provider in providers:
                await provider.close()
            private = [run_dir / ENV_FILE_NAME, run_dir / AWS_TOKEN_FILE_NAME]
            private += [f for p in providers for f in p.private_files]
            await asyncio.to_thread(_remove_files, private, config.env_file, env_file_id)
            refusals.flush()  # a last "N refusals suppressed" is not lost at exit
            audit.event("sidecar.stopped", **who)
            await asyncio.to_thread(audit.close)
    return 0
