"""Bind first, then tell: a loopback socket on a port the OS picks, for a server to listen on.

Asking the OS for a free port, closing the socket and handing the number to a server is a race:
anything else on the machine may take the port in between (under load, something does). Here the
caller keeps the bound socket, reads its port (to put in a URL or a config) and hands the socket
itself to the server (`web.SockSite(runner, sock)`, `LimitedSite(runner, sock)`), which listens
on it: the port is never free. No SO_REUSEADDR, so nothing else can bind it meanwhile either.

Also the well-known metadata addresses (`--well-known`): port 80 of 169.254.169.254 (AWS IMDS,
GCP's metadata server, Azure IMDS), 169.254.170.2 (the ECS container endpoint) and
fd00:ec2::254 (IMDS over IPv6), each bound where it is an address of this network namespace.
"""

from __future__ import annotations

import errno
import logging
import socket

from credsidecar.errors import ConfigError

__all__ = [
    "WELL_KNOWN_ADDRESSES",
    "WELL_KNOWN_HOST_NAMES",
    "WELL_KNOWN_PORT",
    "bind_loopback",
    "bind_well_known",
    "port_of",
]

log = logging.getLogger(__name__)

WELL_KNOWN_PORT = 80
# The first is required (every cloud's SDK looks there when told nothing); the others are bound
# when present, as not every deployment adds them (IPv6 may be off).
WELL_KNOWN_ADDRESSES = ("169.254.169.254", "169.254.170.2", "fd00:ec2::254")
# Host headers clients send for them on port 80 (GCP's libraries name metadata.google.internal,
# which /etc/hosts maps to 169.254.169.254).
WELL_KNOWN_HOST_NAMES = ("169.254.169.254", "169.254.170.2", "metadata.google.internal",
                         "metadata.google.internal.", "[fd00:ec2::254]")  # fmt: skip
_SETUP = "deploy/netns/README.md shows how (`ip addr add 169.254.169.254/32 dev lo`, NET_ADMIN)"


def bind_loopback(host: str = "127.0.0.1") -> socket.socket:
    """A TCP socket bound to `host` on a port the OS picks, not yet listening (a connection to
    it is refused until a server listens on it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.bind((host, 0))
    except BaseException:
        sock.close()
        raise
    return sock


def port_of(sock: socket.socket) -> int:
    """The port a bound socket holds."""
    return int(sock.getsockname()[1])


def _bind(address: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def bind_well_known(
    addresses: tuple[str, ...] = WELL_KNOWN_ADDRESSES, port: int = WELL_KNOWN_PORT
) -> list[socket.socket]:
    """`port` of each well-known address present here; the first must be (ConfigError saying
    what to do otherwise), the others are skipped, with a log line, where absent."""
    bound: list[socket.socket] = []
    try:
        for index, address in enumerate(addresses):
            try:
                bound.append(_bind(address, port))
            except OSError as exc:
                where = f"{address if ':' not in address else f'[{address}]'}:{port}"
                if exc.errno == errno.EACCES:
                    raise ConfigError(
                        f"--well-known: binding {where} was refused: port 80 needs "
                        "CAP_NET_BIND_SERVICE (or root, or the sysctl "
                        "net.ipv4.ip_unprivileged_port_start=80 in this network namespace)"
                    ) from None
                if exc.errno == errno.EADDRINUSE:
                    raise ConfigError(
                        f"--well-known: {where} is already in use; stop whatever listens there "
                        "(`ss -tlnp`)"
                    ) from None
                absent = exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT)
                if index == 0 or not absent:
                    raise ConfigError(
                        f"--well-known: cannot bind {where} ({exc.strerror}); the address must "
                        f"be on an interface of this network namespace first: {_SETUP}"
                    ) from None
                log.info("--well-known: %s is not an address here; not serving it", where)
    except BaseException:
        for sock in bound:
            sock.close()
        raise
    return bound
