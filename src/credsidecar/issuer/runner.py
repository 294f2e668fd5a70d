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
from credsidecar.issuer.keys import KeyRing
from credsidecar.issuer.policy_watch import PolicyHolder
from credsidecar.issuer.store import Store
from credsidecar.serving import IDLE_TIMEOUT, LimitedSite

__all__ = ["export_discovery", "open_service", "serve"]

log = logging.getLogger(__name__)


@contextlib.contextmanager
def open_service(config: IssuerConfig) -> Iterator[Issuer]:
    """The issuer's state opened and its services composed (a bad key-encryption key fails
    here, as a ConfigError); closes the database and audit file afterwards."""
    config.state_dir.mkdir(parents=True, exist_ok=True)
    config.state_dir.chmod(0o700)
    audit = AuditLog.open(config.audit_log)
    store = Store(config.database)
    try:
        keys = KeyRing(config.key_dir, store, config.key_algorithm)
        policy = PolicyHolder(config.policy_path, audit)
        yield assemble(config, store, keys, policy, audit)
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


async def serve(
    config: IssuerConfig,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
    sock: socket.socket | None = None,
) -> None:
    """Runs the issuer until SIGTERM/SIGINT (or `stop` is set); SIGHUP reloads policy and keys.

    `sock`, already bound (credsidecar.listen), is listened on instead of `config.listen`."""
    warning = issuer_url_warning(config.issuer_url)
    if warning:
        log.warning("%s", warning)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    with open_service(config) as service:
        app = create_app(service)
        runner = web.AppRunner(
            app, access_log=None, handle_signals=False, keepalive_timeout=IDLE_TIMEOUT
        )
        await runner.setup()
        # Connection cap, idle and header-read timeouts, malformed requests logged quietly.
        tls = _tls_context(config)
        if sock is not None:
            site = LimitedSite(runner, sock, ssl_context=tls)
        else:
            site = LimitedSite(runner, host=config.host, port=config.port, ssl_context=tls)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(
                f"the issuer cannot listen on {config.host}:{config.port}: "
                f"{exc.strerror or exc}; stop what holds that address (`ss -ltnp` shows it) or "
                "set another `listen = HOST:PORT` in the issuer's config"
            ) from exc
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        reloads: set[asyncio.Task[None]] = set()

        def on_sighup() -> None:
            task = asyncio.create_task(asyncio.to_thread(_reload, service))
            reloads.add(task)  # keep a reference until it finishes
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, on_sighup)
        active = service.keys.active
        log.info(
            "issuer %s listening on %s (active key %s)",
            config.issuer_url,
            site.name,
            active.kid if active else "none",
        )
        if ready is not None:
            ready.set()
        try:
            await stop.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            await runner.cleanup()
