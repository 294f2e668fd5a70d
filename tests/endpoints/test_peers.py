"""Who is on the other end of a loopback connection: the kernel's socket tables, read and asked."""

from __future__ import annotations

import errno
import gc
import os
import socket
import struct
import sys
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import pytest

from credsidecar.endpoints import peers
from credsidecar.endpoints.peers import (
    ConnectionPeers,
    PeerUnknown,
    decode_endpoint,
    diag_request,
    encode_endpoint,
    find_peer_uid,
    parse_diag_reply,
    parse_row,
    peer_uid,
)

LOCALHOST, SERVER, CLIENT = IPv4Address("127.0.0.1"), 0x1F90, 0xC862
# Real rows (x86, little-endian), as the kernel prints them: our accepted socket on 8080, the
# client's socket (uid 1000), a listener, and a TIME_WAIT left by an earlier connection.
TCP = b"""\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4401 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:C862 01 00000000:00000000 00:00000000 00000000  1000        0 4417 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:C862 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1000        0 4416 1 0000000000000000 20 4 30 10 -1
   3: 0100007F:C863 0100007F:1F90 06 00000000:00000000 03:00001770 00000000     0        0 0 3 0000000000000000
"""  # noqa: E501
TCP6_HEADER = (
    b"  sl  local_address                         remote_address                        st "
    b"tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
)
# ::1 port 8080 <- ::1 port 51298, and a Java-style IPv6 socket reaching 127.0.0.1:8080 through
# ::ffff:127.0.0.1 (uid 65534).
TCP6 = TCP6_HEADER + (
    b"   0: 00000000000000000000000001000000:C862 00000000000000000000000001000000:1F90 01 "
    b"00000000:00000000 00:00000000 00000000  1001        0 5501 1 0000000000000000 20 4 30 10 -1\n"
    b"   1: 0000000000000000FFFF00000100007F:C870 0000000000000000FFFF00000100007F:1F90 01 "
    b"00000000:00000000 00:00000000 00000000 65534        0 5502 1 0000000000000000 20 4 30 10 -1\n"
)


def test_addresses_are_32_bit_words_in_host_order_and_ports_plain_numbers() -> None:
    assert encode_endpoint(LOCALHOST, SERVER, "little") == "0100007F:1F90"
    assert encode_endpoint(LOCALHOST, SERVER, "big") == "7F000001:1F90"
    assert decode_endpoint("0100007F:1F90", "little") == (LOCALHOST, SERVER)
    assert decode_endpoint("7F000001:1F90", "big") == (LOCALHOST, SERVER)
    one = "00000000000000000000000001000000:C862"
    assert decode_endpoint(one, "little") == (IPv6Address("::1"), CLIENT)
    mapped = "0000000000000000FFFF00000100007F:1F90"
    assert decode_endpoint(mapped, "little") == (IPv6Address("::ffff:127.0.0.1"), SERVER)
    for address in (LOCALHOST, IPv4Address("10.1.2.3"), IPv6Address("fe80::1:2"),
                    IPv6Address("::ffff:127.0.0.1")):  # fmt: skip
        for order in ("little", "big"):
            text = encode_endpoint(address, 443, order)  # type: ignore[arg-type]
            assert decode_endpoint(text, order) == (address, 443)  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["0100007F", "0100007F:1F9", "01007F:1F90", "ZZ00007F:1F90"])
def test_a_malformed_address_is_an_error(text: str) -> None:
    with pytest.raises(ValueError):
        decode_endpoint(text, "little")


def test_rows_give_both_ends_the_state_the_uid_and_the_inode() -> None:
    lines = TCP.decode().splitlines()
    client = parse_row(lines[3], "little")
    assert client.local == (LOCALHOST, CLIENT) and client.remote == (LOCALHOST, SERVER)
    assert (client.state, client.uid, client.inode) == (1, 1000, 4416)
    time_wait = parse_row(lines[4], "little")
    assert (time_wait.state, time_wait.uid, time_wait.inode) == (6, 0, 0)
    six = parse_row(TCP6.decode().splitlines()[1], "little")
    assert six.local == (IPv6Address("::1"), CLIENT) and six.uid == 1001
    with pytest.raises(ValueError):
        parse_row(lines[0], "little")  # the header


def test_the_peer_is_the_row_with_our_ends_swapped() -> None:
    # Our accepted socket is 127.0.0.1:8080 <- 127.0.0.1:51298; its own row (uid 1000 too here)
    # has the same addresses the other way round and must not be taken for the peer's.
    ours = ((LOCALHOST, SERVER), (LOCALHOST, CLIENT))
    assert find_peer_uid(TCP, *ours, byteorder="little") == 1000
    other_owner = TCP.replace(b"00000000  1000        0 4416", b"00000000 65534        0 4416")
    assert find_peer_uid(other_owner, *ours, byteorder="little") == 65534
    assert find_peer_uid(TCP, (LOCALHOST, SERVER), (LOCALHOST, 1), byteorder="little") is None


def test_a_socket_nobody_holds_any_more_identifies_nobody() -> None:
    """TIME_WAIT rows say uid 0 (root), which is not who made the connection."""
    assert find_peer_uid(TCP, (LOCALHOST, SERVER), (LOCALHOST, 0xC863), "little") is None


def test_two_live_sockets_on_one_address_pair_are_not_trusted() -> None:
    twice = TCP + TCP.splitlines(keepends=True)[3].replace(b"  1000  ", b" 65534  ")
    with pytest.raises(PeerUnknown, match="several sockets"):
        find_peer_uid(twice, (LOCALHOST, SERVER), (LOCALHOST, CLIENT), "little")


@pytest.fixture
def proc_net(tmp_path: Path) -> Path:
    if sys.byteorder != "little":
        pytest.skip("the sample tables are from a little-endian machine")
    (tmp_path / "tcp").write_bytes(TCP)
    (tmp_path / "tcp6").write_bytes(TCP6)
    return tmp_path


def test_tables_ipv4_ipv6_and_v4_mapped_peers(proc_net: Path) -> None:
    def lookup(local: tuple[str, int], remote: tuple[str, int]) -> int:
        return peer_uid(local, remote, proc_net=proc_net, netlink=False)

    assert lookup(("127.0.0.1", SERVER), ("127.0.0.1", CLIENT)) == 1000
    assert lookup(("::1", SERVER, 0, 0), ("::1", CLIENT, 0, 0)) == 1001
    # A Java client's IPv6 socket reaching our IPv4 listener is in tcp6, not tcp.
    assert lookup(("127.0.0.1", SERVER), ("127.0.0.1", 0xC870)) == 65534
    with pytest.raises(PeerUnknown, match="no socket on this host"):
        lookup(("127.0.0.1", SERVER), ("127.0.0.1", 1))


def test_unreadable_tables_leave_the_peer_unknown(tmp_path: Path) -> None:
    with pytest.raises(PeerUnknown, match="cannot read"):
        peer_uid(("127.0.0.1", SERVER), ("127.0.0.1", CLIENT), proc_net=tmp_path, netlink=False)


@pytest.mark.parametrize("address", [None, "/run/sock", ("not-an-ip", 80), ("127.0.0.1",)])
def test_a_connection_without_ip_addresses_has_no_known_peer(address: object) -> None:
    with pytest.raises(PeerUnknown, match="no IP address"):
        peer_uid(address, ("127.0.0.1", CLIENT))


def test_sock_diag_request_asks_for_the_peers_socket_by_its_own_ends() -> None:
    request = diag_request((LOCALHOST, SERVER), (LOCALHOST, CLIENT))
    length, kind, flags = struct.unpack_from("=IHH", request)
    assert (length, kind, flags) == (len(request), 20, 1) and len(request) == 72
    assert request[16] == socket.AF_INET and request[17] == socket.IPPROTO_TCP
    # The peer's source port is our remote port, its destination our local one.
    assert struct.unpack_from(">HH", request, 24) == (CLIENT, SERVER)
    mapped = diag_request((IPv6Address("::ffff:127.0.0.1"), SERVER), (LOCALHOST, CLIENT))
    assert mapped[16] == socket.AF_INET  # v4-mapped is asked as IPv4
    six = diag_request((IPv6Address("::1"), SERVER), (IPv6Address("::1"), CLIENT))
    assert six[16] == socket.AF_INET6


def test_sock_diag_replies() -> None:
    header = struct.Struct("=IHHII")
    missing = header.pack(36, 2, 0, 1, 0) + struct.pack("=i", -errno.ENOENT) + bytes(16)
    assert parse_diag_reply(missing) is None
    message = (
        struct.pack("=BBBB", socket.AF_INET, 1, 0, 0)
        + struct.pack(">HH16s16s", CLIENT, SERVER, LOCALHOST.packed, LOCALHOST.packed)
        + struct.pack("=III", 0, 0, 0)
        + struct.pack("=IIIII", 0, 0, 0, 65534, 4416)
    )
    row = parse_diag_reply(header.pack(16 + len(message), 20, 0, 1, 0) + message)
    assert row is not None
    assert row.local == (LOCALHOST, CLIENT) and row.remote == (LOCALHOST, SERVER)
    assert (row.state, row.uid, row.inode) == (1, 65534, 4416)
    with pytest.raises(PeerUnknown, match="truncated"):
        parse_diag_reply(b"\0" * 8)


# Real connections from this process: both ways of asking agree that the peer is us.

Pair = tuple[socket.socket, socket.socket]


def _connect(listen: str, family: socket.AddressFamily, target: str) -> Pair:
    server = socket.socket(socket.AF_INET6 if ":" in listen else socket.AF_INET)
    server.bind((listen, 0))
    server.listen()
    client = socket.socket(family)
    client.connect((target, server.getsockname()[1]))
    accepted, _ = server.accept()
    server.close()
    return accepted, client


@pytest.fixture(params=["ipv4", "ipv6", "ipv6-client-to-ipv4"])
def connection(request: pytest.FixtureRequest) -> Iterator[Pair]:
    shapes = {
        "ipv4": ("127.0.0.1", socket.AF_INET, "127.0.0.1"),
        "ipv6": ("::1", socket.AF_INET6, "::1"),
        "ipv6-client-to-ipv4": ("127.0.0.1", socket.AF_INET6, "::ffff:127.0.0.1"),
    }
    try:
        pair = _connect(*shapes[request.param])
    except OSError as exc:
        pytest.skip(f"no {request.param} loopback here: {exc}")
    yield pair
    for sock in pair:
        sock.close()


@pytest.mark.parametrize("netlink", [True, False], ids=["sock_diag", "proc-tables"])
def test_a_real_loopback_peer_is_this_process_user(connection: Pair, netlink: bool) -> None:
    accepted, _ = connection
    uid = peer_uid(accepted.getsockname(), accepted.getpeername(), netlink=netlink)
    assert uid == os.geteuid()


@pytest.mark.parametrize("netlink", [True, False], ids=["sock_diag", "proc-tables"])
def test_a_peer_that_closed_is_unknown_not_root(connection: Pair, netlink: bool) -> None:
    accepted, client = connection
    client.close()  # its socket lingers in FIN_WAIT2/TIME_WAIT, reported as uid 0
    with pytest.raises(PeerUnknown):
        peer_uid(accepted.getsockname(), accepted.getpeername(), netlink=netlink)


def test_without_sock_diag_the_tables_answer(
    connection: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(peers, "NETLINK_SOCK_DIAG", 250)  # no such netlink family
    accepted, _ = connection
    assert peer_uid(accepted.getsockname(), accepted.getpeername()) == os.geteuid()


class Transport:
    def __init__(self, sockname: object = ("127.0.0.1", SERVER)) -> None:
        self.sockname = sockname

    def get_extra_info(self, name: str) -> object:
        return {"sockname": self.sockname, "peername": ("127.0.0.1", CLIENT)}[name]


def test_each_connection_is_looked_up_once_and_forgotten_with_it() -> None:
    calls: list[object] = []

    def lookup(sockname: object, peername: object) -> int:
        calls.append(sockname)
        if sockname is None:
            raise PeerUnknown("no socket")
        return 65534

    known = ConnectionPeers(lookup)
    first, broken = Transport(), Transport(sockname=None)
    assert known.known(first) is None
    assert [known.uid(first) for _ in range(3)] == [65534] * 3 and known.known(first) == 65534
    for _ in range(3):
        with pytest.raises(PeerUnknown, match="no socket"):
            known.uid(broken)
    assert len(calls) == 2 and known.known(broken) is None
    with pytest.raises(PeerUnknown, match="closed"):
        known.uid(None)
    del first, broken
    gc.collect()
    assert len(known._known) == 0
