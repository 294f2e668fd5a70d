"""Bind first, then tell: a loopback socket on a port the OS picks, for a server to listen on.

Asking the OS for a free port, closing the socket and handing the number to a server is a race:
anything else on the machine may take the port in between (under load, something does). Here the
caller keeps the bound socket, reads its port (to put in a URL or a config) and hands the socket
itself to the server (`web.SockSite(runner, sock)`, `LimitedSite(runner, sock)`), which listens
on it: the port is never free. No SO_REUSEADDR, so nothing else can bind it meanwhile either.
"""

from __future__ import annotations

import socket

__all__ = ["bind_loopback", "port_of"]


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
