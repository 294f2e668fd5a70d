"""Bind first, then tell: the port is held from the moment it is known."""

from __future__ import annotations

import socket

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from credsidecar.errors import ConfigError
from credsidecar.listen import bind_loopback, bind_well_known, port_of


def test_the_port_of_a_bound_socket_cannot_be_taken_by_anyone_else() -> None:
    with bind_loopback() as held:
        port = port_of(held)
        assert port > 0
        with socket.socket() as other, pytest.raises(OSError):
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            other.bind(("127.0.0.1", port))


def test_a_held_port_refuses_connections_until_a_server_listens() -> None:
    with (
        bind_loopback() as held,
        socket.socket() as client,
        pytest.raises(ConnectionRefusedError),
    ):
        client.connect(("127.0.0.1", port_of(held)))


async def test_a_server_listens_on_the_very_socket_it_was_handed() -> None:
    async def here(request: web.Request) -> web.Response:
        return web.Response(text="here")

    app = web.Application()
    app.router.add_get("/", here)
    with bind_loopback() as held:
        server = TestServer(app, socket_factory=lambda host, port, family: held)
        async with TestClient(server) as client:
            assert server.port == port_of(held)
            assert await (await client.get("/")).text() == "here"


# --well-known ---------------------------------------------------------------------------------


def test_well_known_addresses_absent_here_are_skipped_but_the_first_is_required() -> None:
    # 192.0.2.1 (TEST-NET-1) is no address of this machine.
    bound = bind_well_known(("127.0.0.1", "192.0.2.1"), port=0)
    try:
        assert [s.getsockname()[0] for s in bound] == ["127.0.0.1"]
    finally:
        for sock in bound:
            sock.close()
    with pytest.raises(ConfigError, match=r"cannot bind 192\.0\.2\.1:0 .* must be on an interface"):
        bind_well_known(("192.0.2.1", "127.0.0.1"), port=0)


def test_a_well_known_address_in_use_is_a_config_error_saying_so() -> None:
    with bind_loopback() as held:
        held.listen()
        with pytest.raises(ConfigError, match="already in use"):
            bind_well_known(("127.0.0.1",), port=port_of(held))
