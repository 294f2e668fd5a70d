"""Ports a test knows before its server starts, without the free-port race (credsidecar.listen).

In-process servers: an app whose Host allowlist names its port is built before it is served, so
the test binds the socket first and aiohttp's TestServer listens on that very socket
(`held_port`).

Separate processes (the issuer) name their port in their config, and their URL, before they
start, and cannot be handed a socket: they get a `candidate_port`, free when asked but possibly
taken before the process binds it, and `start_on_candidate_ports` starts them again on another
port when their log says the address was in use. (Passing a bound socket down, systemd-style,
would need the issuer to accept an inherited descriptor; a retry needs nothing from it.)
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from credsidecar.listen import bind_loopback, port_of

__all__ = ["candidate_port", "held_port", "move_port", "start_on_candidate_ports"]

T = TypeVar("T")

# Tries before giving up: another process taking the port between the probe and the bind is
# rare (a few ms window), so a second failure in a row is most likely not a race.
PORT_ATTEMPTS = 3
# How EADDRINUSE reads in a log, lowercased: asyncio's create_server, and sshd ("Address ...").
ADDRESS_IN_USE = "address already in use"


def held_port() -> tuple[int, dict[str, Any]]:
    """A loopback port held by a bound socket, and the `server_kwargs` for `aiohttp_client`
    (TestServer) that make the server listen on that socket."""
    sock = bind_loopback()

    def socket_factory(host: str, port: int, family: socket.AddressFamily) -> socket.socket:
        return sock

    return port_of(sock), {"host": "127.0.0.1", "socket_factory": socket_factory}


def candidate_port() -> int:
    """A loopback port free at the moment of asking (see the module docstring: only for a
    process started through `start_on_candidate_ports`)."""
    with bind_loopback() as sock:
        return port_of(sock)


def move_port(config: Path, old: int, new: int) -> None:
    """Rewrites `127.0.0.1:OLD` (the issuer's URL and listen address) to `127.0.0.1:NEW`."""
    text = config.read_text(encoding="utf-8")
    config.write_text(re.sub(rf"127\.0\.0\.1:{old}\b", f"127.0.0.1:{new}", text), encoding="utf-8")


def start_on_candidate_ports(
    start: Callable[[], T], log: Path, next_port: Callable[[int], None]
) -> T:
    """`start()`; when it fails and what it appended to `log` says the address was in use,
    `next_port(candidate_port())` (moves the process's config) and tries again."""
    for attempt in range(1, PORT_ATTEMPTS + 1):
        offset = log.stat().st_size if log.exists() else 0
        try:
            return start()
        except Exception:
            if attempt == PORT_ATTEMPTS or not _said_in_use(log, offset):
                raise
            next_port(candidate_port())
    raise AssertionError("unreachable")


def _said_in_use(log: Path, offset: int) -> bool:
    try:
        with log.open("rb") as f:
            f.seek(offset)
            return ADDRESS_IN_USE in f.read().decode("utf-8", "replace").lower()
    except FileNotFoundError:
        return False
