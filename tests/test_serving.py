"""Connection limits (serving.py): a cap that makes room by closing the longest-idle connection,
idle and header-read timeouts, and the open-files limit raised at start.

The tracker is driven directly with fake transports and a fake clock; the site is driven over
real loopback connections, with the clock moved by hand and sweeps called directly (its own
sweeper is set to run once an hour), so no test waits for a timeout to pass."""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import make_mocked_request

from credsidecar.serving import (
    IN_FLIGHT_TURNS,
    MIN_CONNECTIONS,
    ConnectionLimits,
    ConnectionTracker,
    LimitedSite,
    connection_cap,
    direct_routes,
    serving,
)
from tests.support.clock import FakeClock
from tests.support.timing import scaled

IDLE, HEADER = 30.0, 10.0
LIMITS = ConnectionLimits(max_connections=4, idle_timeout=IDLE, header_timeout=HEADER)
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
# Bounds only a failing test: the events awaited happen within milliseconds.
EVENT_SECONDS = 20.0


# the tracker alone ---------------------------------------------------------------------------


class FakeTransport:
    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def tracker_with(clock: FakeClock, cap: int = 3) -> tuple[ConnectionTracker, list[FakeTransport]]:
    tracker = ConnectionTracker(cap, LIMITS, clock)
    transports = [FakeTransport(f"c{i}") for i in range(cap)]
    for transport in transports:
        assert tracker.opened(transport)  # type: ignore[arg-type]
        clock.advance(1)
    return tracker, transports


def test_at_the_cap_the_connection_waiting_longest_makes_room(clock: FakeClock) -> None:
    tracker, (c0, c1, c2) = tracker_with(clock)
    tracker.request_started(c0)  # type: ignore[arg-type]
    tracker.request_finished(c0)  # type: ignore[arg-type]  # c0 answered: now the newest wait
    assert tracker.opened(FakeTransport("new"))  # type: ignore[arg-type]
    assert (c0.closed, c1.closed, c2.closed) == (False, True, False)
    assert len(tracker) == 3


def test_a_connection_with_a_request_in_progress_is_never_closed_to_make_room(
    clock: FakeClock,
) -> None:
    tracker, transports = tracker_with(clock)
    for transport in transports[:2]:
        tracker.request_started(transport)  # type: ignore[arg-type]
    assert tracker.opened(FakeTransport("new"))  # type: ignore[arg-type]
    assert [t.closed for t in transports] == [False, False, True]
    tracker.request_started(transports[2])  # type: ignore[arg-type]  # closed: no longer tracked
    last = FakeTransport("last")
    tracker.closed(transports[2])  # type: ignore[arg-type]
    assert tracker.opened(last)  # type: ignore[arg-type]  # the slot freed by the close
    tracker.request_started(last)  # type: ignore[arg-type]
    # Every connection busy: the new one is turned away (the caller closes it).
    assert not tracker.opened(FakeTransport("turned away"))  # type: ignore[arg-type]
    assert not any(t.closed for t in [*transports[:2], last])


def test_an_idle_connection_is_closed_after_the_idle_timeout(clock: FakeClock) -> None:
    tracker = ConnectionTracker(10, LIMITS, clock)
    idle, answered = FakeTransport("idle"), FakeTransport("answered")
    tracker.opened(idle)  # type: ignore[arg-type]
    tracker.opened(answered)  # type: ignore[arg-type]
    clock.advance(IDLE - 1)
    tracker.request_started(answered)  # type: ignore[arg-type]
    tracker.request_finished(answered)  # type: ignore[arg-type]  # its idle time starts again
    assert tracker.sweep() == 0
    clock.advance(1)
    assert tracker.sweep() == 1 and idle.closed and not answered.closed
    clock.advance(IDLE - 1)
    assert tracker.sweep() == 1 and answered.closed
    assert len(tracker) == 0


def test_a_request_head_not_complete_in_time_is_closed(clock: FakeClock) -> None:
    tracker = ConnectionTracker(10, LIMITS, clock)
    slow, busy = FakeTransport("slow"), FakeTransport("busy")
    tracker.opened(slow)  # type: ignore[arg-type]
    tracker.opened(busy)  # type: ignore[arg-type]
    clock.advance(5)
    tracker.data(slow)  # type: ignore[arg-type]  # the head begins...
    tracker.data(busy)  # type: ignore[arg-type]
    tracker.request_started(busy)  # type: ignore[arg-type]  # ...and this one's is complete
    clock.advance(HEADER - 1)
    tracker.data(slow)  # type: ignore[arg-type]  # more bytes do not extend the deadline
    assert tracker.sweep() == 0
    clock.advance(1)
    assert tracker.sweep() == 1 and slow.closed
    clock.advance(IDLE * 10)
    assert tracker.sweep() == 0 and not busy.closed  # a request in progress is left alone


def test_the_cap_leaves_the_reserve_free_under_the_open_files_limit() -> None:
    limits = ConnectionLimits()
    assert connection_cap(limits, 1_048_576) == limits.max_connections
    accepts_in_flight = IN_FLIGHT_TURNS * limits.accept_batch
    assert connection_cap(limits, 1024) == 1024 - limits.fd_reserve - accepts_in_flight


def test_a_tiny_open_files_limit_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    assert connection_cap(ConnectionLimits(), 100) == MIN_CONNECTIONS
    assert "ulimit -n" in caplog.text


def test_the_soft_open_files_limit_is_raised_to_the_hard_limit() -> None:
    """In a child whose soft limit is lowered first, so this process's limits stay as they are."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip(f"the hard open-files limit here ({hard}) leaves nothing to raise")
    code = (
        "import resource\n"
        "_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
        "from credsidecar.serving import raise_fd_limit\n"
        "print(raise_fd_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)[0], hard)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=scaled(30))  # fmt: skip
    reported, now, child_hard = (int(x) for x in done.stdout.split())
    assert now == reported > 256
    assert now == child_hard or child_hard == resource.RLIM_INFINITY


# the site over real connections ---------------------------------------------------------------


@dataclass
class Served:
    site: LimitedSite
    port: int
    clock: FakeClock
    release: asyncio.Event
    entered: asyncio.Queue[None]  # one item each time /block's handler starts (its request busy)

    def spy(self, method: str) -> asyncio.Event:
        """An event set the next time the site's tracker handles `method` (opened, data...)."""
        event = asyncio.Event()
        original: Callable[..., object] = getattr(self.site.tracker, method)

        def spied(*args: object) -> object:
            result = original(*args)
            event.set()
            return result

        setattr(self.site.tracker, method, spied)
        return event


@pytest.fixture
async def served(clock: FakeClock) -> AsyncIterator[Served]:
    release = asyncio.Event()
    entered: asyncio.Queue[None] = asyncio.Queue()

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def block(request: web.Request) -> web.Response:
        entered.put_nowait(None)
        await release.wait()
        return web.Response(text="released")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/block", block)
    # Sweeps are called by the tests; the site's own sweeper would run once an hour.
    limits = ConnectionLimits(max_connections=4, idle_timeout=IDLE, header_timeout=HEADER,
                              sweep_interval=3600, fd_reserve=0, accept_batch=8)  # fmt: skip
    sock = socket.socket()  # bound first, as the sidecar does
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    port = sock.getsockname()[1]
    async with serving(app, sock, limits=limits, clock=clock) as site:
        yield Served(site, port, clock, release, entered)


class Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Conn:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def roundtrip(self, request: bytes = HEALTHZ) -> bytes:
        """One keep-alive request; returns the status line."""
        self.writer.write(request)
        async with asyncio.timeout(scaled(EVENT_SECONDS)):
            head = await self.reader.readuntil(b"\r\n\r\n")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))  # fmt: skip
            await self.reader.readexactly(length)
        return head.split(b"\r\n")[0]

    async def closed_by_server(self) -> bool:
        """Awaits the server's close (EOF); True if it came without any answer."""
        async with asyncio.timeout(scaled(EVENT_SECONDS)):
            return await self.reader.read() == b""

    def close(self) -> None:
        self.writer.close()


async def test_a_flood_of_idle_connections_cannot_lock_out_a_new_request(served: Served) -> None:
    cap = served.site.tracker.cap
    assert cap == 4
    old = [await Conn.open(served.port) for _ in range(cap)]
    for conn in old:  # each answered once, in order: the first has waited longest
        assert b"200" in await conn.roundtrip()
        served.clock.advance(1)
    flood: list[Conn] = []
    try:
        for i in range(2):  # idle connections past the cap, never sending a byte
            opened = served.spy("opened")
            flood.append(await Conn.open(served.port))
            await opened.wait()
            assert await old[i].closed_by_server()  # the one waiting longest made room
        newcomer = await Conn.open(served.port)
        flood.append(newcomer)
        assert b"200" in await newcomer.roundtrip()  # e.g. /healthz still answers
        assert await old[2].closed_by_server()
        assert b"200" in await old[3].roundtrip()  # the newest of the old ones is still served
        assert len(served.site.tracker) == cap
    finally:
        for conn in old + flood:
            conn.close()


async def test_when_every_connection_is_busy_the_new_one_is_closed(served: Served) -> None:
    busy = [await Conn.open(served.port) for _ in range(served.site.tracker.cap)]
    try:
        for conn in busy:
            conn.writer.write(b"GET /block HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            await served.entered.get()
        turned_away = await Conn.open(served.port)
        busy.append(turned_away)  # closed with the others
        assert await turned_away.closed_by_server()
        served.release.set()
        for conn in busy[:-1]:  # their requests were not disturbed
            head = await conn.reader.readuntil(b"\r\n\r\n")
            assert b"200" in head
    finally:
        for conn in busy:
            conn.close()


async def test_the_site_closes_half_a_request_head_after_the_header_timeout(
    served: Served,
) -> None:
    slow = await Conn.open(served.port)
    idle = await Conn.open(served.port)
    try:
        received = served.spy("data_on")
        slow.writer.write(b"GET /healthz HTTP/1.1\r\nHos")
        await received.wait()
        served.clock.advance(HEADER)
        assert served.site.tracker.sweep() == 1
        assert await slow.closed_by_server()
        assert b"200" in await idle.roundtrip()  # an idle connection is not held to that
    finally:
        slow.close()
        idle.close()


async def test_the_site_closes_an_idle_connection_after_the_idle_timeout(served: Served) -> None:
    conn = await Conn.open(served.port)
    try:
        assert b"200" in await conn.roundtrip()
        served.clock.advance(IDLE - 1)
        assert served.site.tracker.sweep() == 0
        served.clock.advance(1)
        assert served.site.tracker.sweep() == 1
        assert await conn.closed_by_server()
    finally:
        conn.close()


async def test_malformed_requests_are_logged_without_their_bytes_once_a_minute(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    garbage = b"GET /healthz HTTP/1.1\r\nAuthorization: s3cr3t\x00\r\n\r\n"
    for _ in range(3):
        conn = await Conn.open(served.port)
        conn.writer.write(garbage)
        head = await conn.reader.read()
        assert head.startswith(b"HTTP/1.0 400")
        conn.close()
    lines = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert [r.getMessage() for r in lines] == [
        "malformed HTTP request from 127.0.0.1: BadHttpMessage"
    ]
    assert lines[0].levelno == logging.WARNING
    assert "s3cr3t" not in caplog.text
    served.clock.advance(60)
    conn = await Conn.open(served.port)
    conn.writer.write(garbage)
    await conn.reader.read()
    conn.close()
    last = [r for r in caplog.records if r.name == "aiohttp.server"][-1].getMessage()
    assert last.endswith("BadHttpMessage (2 more from this peer suppressed)")
    assert "s3cr3t" not in caplog.text


# requests handed straight to fixed-path routes ----------------------------------------------


async def _answer(request: web.Request) -> web.Response:
    """What aiohttp's own route resolution gives a handler, echoed."""
    info = request.match_info
    route = f"{info.route.method} {info.route.resource.canonical if info.route.resource else ''}"
    return web.json_response(
        {"route": route, "match": dict(info), "same_app": request.app is info.apps[0]}
    )


def _routed_app(middlewares: tuple[object, ...] = ()) -> web.Application:
    app = web.Application(middlewares=middlewares)  # type: ignore[arg-type]
    app.router.add_get("/fixed", _answer)
    app.router.add_get("/fixed/", _answer)
    app.router.add_put("/fixed", _answer)
    app.router.add_get("/items/{name}", _answer)
    app.router.add_route("*", "/any", _answer)

    async def stamp(request: web.Request, response: web.StreamResponse) -> None:
        response.headers["X-Prepared"] = "yes"

    app.on_response_prepare.append(stamp)
    app.freeze()
    return app


async def test_direct_routes_are_what_aiohttp_resolves_for_each_fixed_path() -> None:
    app = _routed_app()
    direct = direct_routes(app)
    # GET adds HEAD; the dynamic route and the any-method route are left to aiohttp.
    assert sorted(direct) == [("GET", "/fixed"), ("GET", "/fixed/"), ("HEAD", "/fixed"),
                              ("HEAD", "/fixed/"), ("PUT", "/fixed")]  # fmt: skip
    for (method, path), found in direct.items():
        resolved = await app.router.resolve(make_mocked_request(method, path, app=app))
        assert found.match_info.route is resolved.route
        assert found.handler is resolved.handler
        assert found.match_info.apps == (app,)


def test_an_app_with_middleware_gets_no_direct_routes() -> None:
    @web.middleware
    async def passthrough(request: web.Request, handler: object) -> web.StreamResponse:
        return await handler(request)  # type: ignore[operator, no-any-return]

    assert direct_routes(_routed_app((passthrough,))) == {}


async def test_requests_answered_directly_or_not_see_what_aiohttp_would_set() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    app = _routed_app()
    resolved: list[str] = []  # paths aiohttp's router resolved: those not answered directly
    resolve = app.router.resolve

    async def counted(request: web.Request) -> web.UrlMappingMatchInfo:
        resolved.append(request.path)
        return await resolve(request)

    app.router.resolve = counted  # type: ignore[method-assign]
    async with serving(app, sock), ClientSession() as client:
        cases = [("GET", "/fixed", {}, 200, "GET /fixed", {}),
                 ("GET", "/fixed/", {}, 200, "GET /fixed/", {}),
                 ("PUT", "/fixed", {}, 200, "PUT /fixed", {}),
                 ("GET", "/fixed", {"Expect": "100-continue"}, 200, "GET /fixed", {}),
                 ("GET", "/items/a%20b", {}, 200, "GET /items/{name}", {"name": "a b"}),
                 ("POST", "/any", {}, 200, "* /any", {})]  # fmt: skip
        for method, path, headers, status, route, match in cases:
            async with client.request(method, url + path, headers=headers) as response:
                assert response.status == status, (method, path)
                assert response.headers["X-Prepared"] == "yes"  # the app's prepare signal ran
                assert await response.json() == {"route": route, "match": match,
                                                 "same_app": True}  # fmt: skip
        async with client.head(url + "/fixed") as response:
            assert response.status == 200
        for method, path, status in [("DELETE", "/fixed", 405), ("GET", "/nothing", 404)]:
            async with client.request(method, url + path) as response:
                assert response.status == status, (method, path)
    # Only the Expect request, the dynamic and any-method routes and the misses were resolved.
    assert resolved == ["/fixed", "/items/a b", "/any", "/fixed", "/nothing"]
