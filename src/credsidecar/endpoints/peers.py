"""Who is on the other end of a loopback TCP connection: the Unix user owning the peer's socket.

TCP has no `SO_PEERCRED`, but the kernel knows every socket of this network namespace and its
owner's uid. The peer's socket is the one whose local end is our connection's remote end and whose
remote end is our local one. Two ways to ask, both exact on that 4-tuple:

- `sock_diag` netlink (what `ss` uses), one request for exactly that socket: tens of microseconds
  whatever the number of sockets on the host. Used first.
- The text tables `/proc/net/tcp` and `/proc/net/tcp6`, where sock_diag is unavailable (gVisor,
  strict seccomp profiles). They list every socket, so their cost grows with the host's sockets:
  18-28 ms with 11,000 sockets here, and another local user can add sockets at will.

Either way a socket no process holds any more (TIME_WAIT, orphaned after close) has inode 0 and
reports uid 0, which is not its owner's: such a socket never identifies a peer.

Addresses in the /proc tables are each 32-bit word of the address as it lies in memory, printed
as a host-order integer (`%08X`): 127.0.0.1 is `0100007F` on a little-endian machine, ::1 is
`00000000000000000000000001000000`. Ports are plain host-order numbers (`%04X`).

A client may reach an IPv4 listener from an IPv6 socket through a v4-mapped address (Java does by
default): sock_diag finds such a socket by its IPv4 addresses; in the tables it is listed in
`tcp6` as `::ffff:a.b.c.d`. `ConnectionPeers` looks a connection up once and remembers the answer
for as long as the connection's transport lives.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import sys
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path
from typing import Literal

__all__ = [
    "ConnectionPeers",
    "PeerUnknown",
    "SocketRow",
    "decode_endpoint",
    "diag_request",
    "encode_endpoint",
    "find_peer_uid",
    "parse_diag_reply",
    "parse_row",
    "peer_uid",
]

IPAddress = IPv4Address | IPv6Address
Endpoint = tuple[IPAddress, int]
ByteOrder = Literal["little", "big"]

PROC_NET = Path("/proc/net")
# Columns of a table row after `split()`: "sl:", local, remote, state, tx:rx, tr:when, retrnsmt,
# uid, timeout, inode, ...
_LOCAL, _REMOTE, _STATE, _UID, _INODE = 1, 2, 3, 7, 9
TCP_LISTEN = 10

# linux/netlink.h, linux/sock_diag.h, linux/inet_diag.h (Python's socket module names none).
NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLMSG_ERROR = 2
NLM_F_REQUEST = 1
_ALL_STATES = 0xFFFFFFFF
_NO_COOKIE = 0xFFFFFFFF  # INET_DIAG_NOCOOKIE: match any socket cookie
_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port id
_REQUEST = struct.Struct("=BBBxI")  # inet_diag_req_v2: family, protocol, extensions, states
_SOCKID = struct.Struct(">HH16s16s")  # inet_diag_sockid: ports, addresses (network order)
_SOCKID_TAIL = struct.Struct("=I2I")  # interface, cookie (host order)
_MESSAGE = struct.Struct("=BBBB")  # inet_diag_msg: family, state, timer, retransmits
_MESSAGE_TAIL = struct.Struct("=IIIII")  # expires, rqueue, wqueue, uid, inode
_NOT_FOUND = (
    "no socket on this host is the peer's (it closed, or it is in another network namespace)"
)
_REPLY_SIZE = 4096  # one inet_diag_msg (72 bytes) and whatever attributes follow


class PeerUnknown(Exception):
    """The peer's socket owner could not be found; callers refuse (fail closed)."""


@dataclass(frozen=True, slots=True)
class SocketRow:
    local: Endpoint
    remote: Endpoint
    state: int
    uid: int
    # 0 for a socket no process holds any more (TIME_WAIT, orphaned): its uid column says 0,
    # which is not the owner's, so such a row never identifies a peer.
    inode: int


def encode_endpoint(address: IPAddress, port: int, byteorder: ByteOrder = sys.byteorder) -> str:
    """The kernel's text for an address and port, e.g. `0100007F:1F90` for 127.0.0.1:8080."""
    raw = address.packed
    words = (int.from_bytes(raw[i : i + 4], byteorder) for i in range(0, len(raw), 4))
    return "".join(f"{word:08X}" for word in words) + f":{port:04X}"


def decode_endpoint(text: str, byteorder: ByteOrder = sys.byteorder) -> Endpoint:
    hex_address, _, hex_port = text.partition(":")
    if len(hex_address) not in (8, 32) or len(hex_port) != 4:
        raise ValueError(f"not a socket table address: {text[:60]!r}")
    raw = b"".join(
        int(hex_address[i : i + 8], 16).to_bytes(4, byteorder)
        for i in range(0, len(hex_address), 8)
    )
    address: IPAddress = IPv4Address(raw) if len(raw) == 4 else IPv6Address(raw)
    return address, int(hex_port, 16)


def parse_row(line: str, byteorder: ByteOrder = sys.byteorder) -> SocketRow:
    """One row of /proc/net/tcp or tcp6 (not the header line)."""
    fields = line.split()
    if len(fields) <= _INODE or not fields[0].endswith(":"):
        raise ValueError(f"not a socket table row: {line[:60]!r}")
    return SocketRow(
        local=decode_endpoint(fields[_LOCAL], byteorder),
        remote=decode_endpoint(fields[_REMOTE], byteorder),
        state=int(fields[_STATE], 16),
        uid=int(fields[_UID]),
        inode=int(fields[_INODE]),
    )


def find_peer_uid(
    table: bytes, ours_local: Endpoint, ours_remote: Endpoint, byteorder: ByteOrder = sys.byteorder
) -> int | None:
    """The owner uid of the live socket whose local end is `ours_remote` and whose remote end is
    `ours_local`, or None when the table holds no such socket.

    Finds the row by its exact text rather than parsing every row: a busy host's table has
    thousands of rows and only one can match."""
    needle = (
        f" {encode_endpoint(*ours_remote, byteorder)} {encode_endpoint(*ours_local, byteorder)} "
    ).encode()
    uids = set()
    start = table.find(needle)
    while start >= 0:
        line_start = table.rfind(b"\n", 0, start) + 1
        line_end = table.find(b"\n", start)
        row = parse_row(table[line_start : line_end if line_end >= 0 else None].decode("ascii"))
        if row.inode != 0:
            uids.add(row.uid)
        start = table.find(needle, start + len(needle))
    if len(uids) > 1:  # one 4-tuple, one live socket; anything else is not trusted
        raise PeerUnknown(f"several sockets claim the peer's address (uids {sorted(uids)})")
    return uids.pop() if uids else None


class _DiagUnavailable(Exception):
    """sock_diag cannot be used here; read the /proc tables instead."""


def diag_request(ours_local: Endpoint, ours_remote: Endpoint) -> bytes:
    """A sock_diag request for the one TCP socket whose local end is `ours_remote` and whose
    remote end is `ours_local` (the peer's socket); IPv4 addresses, v4-mapped ones included, are
    asked as IPv4, which also finds an IPv6 socket connected through a mapped address."""
    local_v4, remote_v4 = _v4(ours_local[0]), _v4(ours_remote[0])
    if local_v4 is not None and remote_v4 is not None:
        family, source, destination = socket.AF_INET, remote_v4.packed, local_v4.packed
    else:
        family, source, destination = socket.AF_INET6, ours_remote[0].packed, ours_local[0].packed
    body = (
        _REQUEST.pack(family, socket.IPPROTO_TCP, 0, _ALL_STATES)
        + _SOCKID.pack(ours_remote[1], ours_local[1], source, destination)
        + _SOCKID_TAIL.pack(0, _NO_COOKIE, _NO_COOKIE)
    )
    header = _HEADER.pack(_HEADER.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, 1, 0)
    return header + body


def parse_diag_reply(data: bytes) -> SocketRow | None:
    """The socket a sock_diag reply describes, or None when the kernel has no such socket."""
    if len(data) < _HEADER.size + 4:
        raise PeerUnknown("sock_diag gave a truncated answer")
    kind = _HEADER.unpack_from(data)[1]
    if kind == NLMSG_ERROR:
        (error,) = struct.unpack_from("=i", data, _HEADER.size)
        if error == -errno.ENOENT:
            return None
        raise _DiagUnavailable(os.strerror(-error))
    needed = _HEADER.size + _MESSAGE.size + _SOCKID.size + _SOCKID_TAIL.size + _MESSAGE_TAIL.size
    if kind != SOCK_DIAG_BY_FAMILY or len(data) < needed:
        raise PeerUnknown(f"sock_diag gave an unexpected answer (type {kind})")
    family, state, _, _ = _MESSAGE.unpack_from(data, _HEADER.size)
    offset = _HEADER.size + _MESSAGE.size
    source_port, destination_port, source, destination = _SOCKID.unpack_from(data, offset)
    offset += _SOCKID.size + _SOCKID_TAIL.size
    uid, inode = _MESSAGE_TAIL.unpack_from(data, offset)[3:]
    size = 4 if family == socket.AF_INET else 16
    return SocketRow(
        local=(ip_address(source[:size]), source_port),
        remote=(ip_address(destination[:size]), destination_port),
        state=state,
        uid=uid,
        inode=inode,
    )


def _diag_peer_uid(ours_local: Endpoint, ours_remote: Endpoint) -> int:
    request = diag_request(ours_local, ours_remote)
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as diag:
            # The kernel queues its answer before send() returns: never wait for it.
            diag.setblocking(False)
            diag.send(request)
            reply = diag.recv(_REPLY_SIZE)
    except BlockingIOError as exc:
        raise PeerUnknown("sock_diag gave no answer") from exc
    except (OSError, AttributeError) as exc:  # no AF_NETLINK (not Linux), or refused
        raise _DiagUnavailable(str(exc)) from exc
    row = parse_diag_reply(reply)
    if row is None:
        raise PeerUnknown(_NOT_FOUND)
    if not (_same(row.local, ours_remote) and _same(row.remote, ours_local)):
        raise PeerUnknown("sock_diag answered for another socket")
    if row.inode == 0 or row.state == TCP_LISTEN:
        raise PeerUnknown("the peer's socket is closed")
    return row.uid


def _endpoint(address: object) -> Endpoint:
    """`(host, port)` or `(host, port, flowinfo, scope_id)` as asyncio reports them."""
    if not isinstance(address, tuple) or len(address) < 2:
        raise PeerUnknown(f"the connection has no IP address ({address!r})")
    try:
        return ip_address(str(address[0]).partition("%")[0]), int(address[1])
    except ValueError as exc:
        raise PeerUnknown(f"the connection has no IP address ({address!r})") from exc


def _v4(address: IPAddress) -> IPv4Address | None:
    if isinstance(address, IPv4Address):
        return address
    return address.ipv4_mapped


def _same(a: Endpoint, b: Endpoint) -> bool:
    return a[1] == b[1] and (_v4(a[0]) or a[0]) == (_v4(b[0]) or b[0])


def _mapped(address: IPv4Address) -> IPv6Address:
    return IPv6Address(b"\0" * 10 + b"\xff\xff" + address.packed)


def _read_table(path: Path) -> bytes:
    """A procfs read, once per connection, only where sock_diag is unavailable."""
    try:
        with path.open("rb") as table:
            return table.read()
    except OSError as exc:
        raise PeerUnknown(f"cannot read {path} ({exc.strerror})") from exc


def _table_peer_uid(ours_local: Endpoint, ours_remote: Endpoint, proc_net: Path) -> int:
    local_v4, remote_v4 = _v4(ours_local[0]), _v4(ours_remote[0])
    lookups: list[tuple[str, Endpoint, Endpoint]]
    if local_v4 is not None and remote_v4 is not None:
        plain = ("tcp", (local_v4, ours_local[1]), (remote_v4, ours_remote[1]))
        mapped = ("tcp6", (_mapped(local_v4), ours_local[1]), (_mapped(remote_v4), ours_remote[1]))
        # The peer's socket is usually of our own family; Java clients use v4-mapped IPv6.
        lookups = [plain, mapped] if isinstance(ours_local[0], IPv4Address) else [mapped, plain]
    else:
        lookups = [("tcp6", ours_local, ours_remote)]
    for name, local, remote in lookups:
        uid = find_peer_uid(_read_table(proc_net / name), local, remote)
        if uid is not None:
            return uid
    raise PeerUnknown(_NOT_FOUND)


def peer_uid(
    sockname: object, peername: object, proc_net: Path = PROC_NET, netlink: bool = True
) -> int:
    """The owner uid of the socket at the other end of the connection between our `sockname`
    and its `peername` (as asyncio's transports report them); raises PeerUnknown when it cannot
    be found. `netlink=False` reads the /proc tables only."""
    ours_local, ours_remote = _endpoint(sockname), _endpoint(peername)
    if netlink:
        try:
            return _diag_peer_uid(ours_local, ours_remote)
        except _DiagUnavailable:
            pass  # the /proc tables answer the same question, more slowly
    return _table_peer_uid(ours_local, ours_remote, proc_net)


class ConnectionPeers:
    """The peer's uid per connection, looked up on its first request and remembered (a failure
    too) for as long as the connection's transport lives, so keep-alive requests cost one lookup
    in a weak dictionary."""

    def __init__(self, lookup: Callable[[object, object], int] = peer_uid) -> None:
        self._lookup = lookup
        # uid, or why the peer is unknown (a message: a stored exception would grow a traceback
        # each time it is raised again).
        self._known: weakref.WeakKeyDictionary[object, int | str] = weakref.WeakKeyDictionary()

    def uid(self, transport: object) -> int:
        """Raises PeerUnknown when the peer cannot be identified."""
        if transport is None:
            raise PeerUnknown("the connection is closed")
        known = self._known.get(transport)
        if known is None:
            known = self._identify(transport)
            self._known[transport] = known
        if isinstance(known, str):
            raise PeerUnknown(known)
        return known

    def known(self, transport: object) -> int | None:
        """The uid found for this connection, if it was looked up and found."""
        found = self._known.get(transport) if transport is not None else None
        return found if isinstance(found, int) else None

    def _identify(self, transport: object) -> int | str:
        get_extra_info = getattr(transport, "get_extra_info", None)
        if get_extra_info is None:
            return "the connection has no socket"
        try:
            return self._lookup(get_extra_info("sockname"), get_extra_info("peername"))
        except PeerUnknown as exc:
            return str(exc)
