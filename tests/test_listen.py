"""Bind first, then tell: the port is held from the moment it is known."""

from __future__ import annotations

import socket

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from credsidecar.listen import bind_loopback, port_of


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
