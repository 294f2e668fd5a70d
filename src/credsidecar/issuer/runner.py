"""Assembles an issuer from its config and runs it: state, keys, policy, HTTP(S) server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

from aiohttp import web

from credsidecar.audit import AuditLog
from credsidecar.errors import ConfigError, CredsidecarError
from credsidecar.issuer.app import create_app
from credsidecar.issuer.assembly import Issuer, assemble
from credsidecar.issuer.config import IssuerConfig, issuer_url_warning
from credsidecar.issuer.keys import open_key_ring
from credsidecar.issuer.policy_watch import PolicyHolder
from credsidecar.issuer.store import open_store
from credsidecar.serving import IDLE_TIMEOUT, ConnectionLimits, LimitedSite

__all__ = ["export_discovery", "listen_error", "open_service", "serve", "serve_here"]

log = logging.getLogger(__name__)


@contextlib.contextmanager
def open_service(config: IssuerConfig, *, share: int = 1) -> Iterator[Issuer]:
    """The issuer's state opened and its services composed (a bad key-encryption key fails
    here, as a ConfigError); closes the database and audit file afterwards. `share`: how many
    worker processes serve this node (each takes its share of the rate limits)."""
    config.state_dir.mkdir(parents=True, exist_ok=True)
    config.state_dir.chmod(0o700)
    audit = AuditLog.open(config.audit_log)
    try:
        store = open_store(config)  # migrates the schema; a database down fails here
    except BaseException:
        audit.close()
        raise
    try:
        # Shared through the store, sealed, with PostgreSQL (a KEK is required); files otherwise.
        keys = open_key_ring(config, store)
        try:
            policy = PolicyHolder(config.policy_path, audit)
            yield assemble(config, store, keys, policy, audit, share=share)
        finally:
            keys.close()  # writes the expiries signed since the last refresh
    finally:
        store.close()
        audit.close()


def export_discovery(service: Issuer, out_dir: Path) -> list[Path]:
    """Writes discovery and JWKS as static files laid out for a public bucket or web root."""
    target = out_dir / ".well-known"
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for name, doc in (
        ("openid-configuration", service.tokens.discovery()),
        ("jwks.json", service.keys.jwks()),
    ):
        path = target / name
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)
        written.append(path)
    return written


def _reload(service: Issuer) -> None:
    """SIGHUP: pick up policy edits and key rotations now rather than at the next poll."""
    service.policy_holder.reload()
    try:
        service.keys.refresh()
    except CredsidecarError as exc:
        log.error("key refresh failed, keeping the keys in memory: %s", exc.message)


def _tls_context(config: IssuerConfig) -> ssl.SSLContext | None:
    if config.tls_cert is None or config.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(config.tls_cert, config.tls_key)
    return context


def listen_error(config: IssuerConfig, exc: OSError) -> ConfigError:
    """What an issuer that cannot listen on its address says (one worker or a supervisor)."""
    return ConfigError(
        f"the issuer cannot listen on {config.host}:{config.port}: "
        f"{exc.strerror or exc}; stop what holds that address (`ss -ltnp` shows it) or "
        "set another `listen = HOST:PORT` in the issuer's config"
    )


async def serve(
    config: IssuerConfig,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
    sock: socket.socket | None = None,
) -> None:
    """Runs the issuer until SIGTERM/SIGINT (or `stop` is set); SIGHUP reloads policy and keys.

    `sock`, already bound (credsidecar.listen), is listened on instead of `config.listen`.
    With `workers` other than 1 in the config, a supervisor runs that many worker processes
    on the one listening socket (workers.py); one worker is this process."""
    if config.workers != 1:
        # Imported here: the one-worker path loads nothing of it.
        from credsidecar.issuer.workers import supervise, worker_count

        count = worker_count(config.workers)
        if count > 1:
            await supervise(config, count, ready=ready, stop=stop, sock=sock)
            return
    await serve_here(config, ready, stop, [sock] if sock is not None else None)


async def serve_here(
    config: IssuerConfig,
    ready: asyncio.Event | None,
    stop: asyncio.Event | None,
    socks: list[socket.socket] | None,
    *,
    worker: int | None = None,
    share: int = 1,
) -> None:
    """The issuer in this process, on `socks` (bound) or `config.listen`. As `worker` N of
    `share` under a supervisor (workers.py): SIGINT is left to the supervisor, responses name
    the worker, readiness is logged per worker (the supervisor logs "listening on" once all
    serve) and each worker's rate-limit buckets hold its share of the configured rates."""
    warning = issuer_url_warning(config.issuer_url)
    if warning and worker is None:  # a supervisor says it once, not each worker
        log.warning("%s", warning)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    with open_service(config, share=share) as service:
        app = create_app(service)
        if worker is not None:
            from credsidecar.issuer.workers import WORKER_HEADER

            async def name_worker(request: web.Request, response: web.StreamResponse) -> None:
                response.headers[WORKER_HEADER] = str(worker)

            app.on_response_prepare.append(name_worker)
        runner = web.AppRunner(
            app, access_log=None, handle_signals=False, keepalive_timeout=IDLE_TIMEOUT
        )
        await runner.setup()
        # Connection cap, idle and header-read timeouts, malformed requests logged quietly.
        tls = _tls_context(config)
        # Workers share one accept queue: one that took a whole batch at each wake-up would
        # take every connection of a burst (16 keep-alive clients, a load balancer's pool) and
        # keep them while the others idle. One a turn, a busy worker comes back later than an
        # idle one, which so takes more: the load spreads (nginx's `multi_accept off`).
        limits = ConnectionLimits(accept_batch=1) if worker is not None else None
        if socks:
            sites = [LimitedSite(runner, sock, ssl_context=tls, limits=limits) for sock in socks]
        else:
            sites = [LimitedSite(runner, host=config.host, port=config.port, ssl_context=tls)]
        try:
            for site in sites:
                await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise listen_error(config, exc) from exc
        signals = (signal.SIGTERM,) if worker is not None else (signal.SIGTERM, signal.SIGINT)
        for sig in signals:
            loop.add_signal_handler(sig, stop.set)
        reloads: set[asyncio.Task[None]] = set()

        def on_sighup() -> None:
            task = asyncio.create_task(asyncio.to_thread(_reload, service))
            reloads.add(task)  # keep a reference until it finishes
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, on_sighup)
        active = service.keys.active
        if worker is None:
            log.info(
                "issuer %s listening on %s (active key %s)",
                config.issuer_url,
                sites[0].name,
                active.kid if active else "none",
            )
        else:
            log.info("issuer worker %d serving (active key %s)", worker,
                     active.kid if active else "none")  # fmt: skip
        if ready is not None:
            ready.set()
        try:
            await stop.wait()
        finally:
            for sig in (*signals, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            await runner.cleanup()
