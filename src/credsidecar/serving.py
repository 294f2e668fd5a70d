"""The listening socket and its connection limits, for the sidecar and the issuer.

Without limits another local user holding ~1,100 idle connections used up a 1,024 open-files
limit: every new request failed, `/healthz` included, and renewals failed with EMFILE. So:

- at start the soft open-files limit is raised to the hard limit (`raise_fd_limit`);
- at most `connection_cap()` connections are served, well below that limit, leaving
  `FD_RESERVE` descriptors for renewals (issuer, STS, GCP, Azure) and files;
- at the cap, the connection that has waited longest for a request (none in progress) is closed
  to make room, so a flood of idle connections cannot lock out the job or `/healthz`; only when
  every connection has a request in progress is the new one closed instead;
- an idle keep-alive connection is closed after `IDLE_TIMEOUT`, and one whose request head has
  begun but is not complete `HEADER_TIMEOUT` after its first byte is closed (slowloris).

How, with no private aiohttp attribute: the protocol factory given to `loop.create_server`
wraps each aiohttp `RequestHandler` in a thin `asyncio.Protocol` that reports connection made,
data received and connection lost to a `ConnectionTracker`; the low-level server's
`request_handler` (public) is wrapped to report when a request starts and ends. One sweeper task
closes expired connections every `SWEEP_INTERVAL`, instead of a timer per connection.

A little over ~400 lines on purpose: the tracker, the protocol wrapper reporting to it, the site
and the direct routes (`direct_routes`) are one mechanism around aiohttp's server, each part
meaningless without the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import socket
import ssl
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from aiohttp import hdrs, web

from credsidecar.malformed_log import quiet_malformed_requests

__all__ = [
    "ConnectionLimits",
    "ConnectionTracker",
    "LimitedSite",
    "connection_cap",
    "direct_routes",
    "raise_fd_limit",
    "serving",
]

log = logging.getLogger(__name__)

# The most connections served at once. SDKs fetch credentials once per renewal per process,
# over one connection, so even a job of hundreds of processes stays far below; past the cap,
# idle connections make room, so the figure only shapes a flood. Each costs a descriptor and
# some tens of KB.
MAX_CONNECTIONS = 1024
# Descriptors kept free for the process's own use: up to 100 upstream connections (aiohttp's
# client connector limit) for renewals at the issuer, STS, GCP and Azure, ~30 held from start
# (stdio, epoll, log and audit files, the watched job's pidfd), and files written later.
FD_RESERVE = 160
# asyncio accepts up to its `backlog` argument of connections at each turn of the event loop,
# and a connection reaches the tracker two turns after its accept (a task makes the transport,
# which then calls connection_made), and the descriptor of one closed to make room is freed a
# turn after that: up to IN_FLIGHT_TURNS batches of descriptors beyond the cap, so the batch
# stays small (accepting 16 a turn is still far more than a job's clients ever need).
ACCEPT_BATCH = 16
IN_FLIGHT_TURNS = 4
# ...while the kernel's queue of connections not yet accepted (no descriptor of ours) is longer,
# so a client connecting amid a flood waits its turn instead of having its SYN dropped (and
# retrying a second later).
LISTEN_BACKLOG = 1024
# An idle keep-alive connection is closed after this. SDKs reuse a connection within seconds if
# at all (credentials are fetched once per renewal), so nothing is lost, and descriptors a
# client forgot come back.
IDLE_TIMEOUT = 30.0
# A request head must be complete this long after its first byte. Clients write the whole head
# (a few hundred bytes) at once, so this is generous even on a loaded machine; a slowloris client
# holds its descriptor no longer. The same bound covers a TLS handshake (the issuer).
HEADER_TIMEOUT = 10.0
# How often expired connections are looked for: the timeouts above are this precise.
SWEEP_INTERVAL = 1.0
# Fewer than this and no job could be served: the open-files limit is too low to be usable.
MIN_CONNECTIONS = 16
# A soft limit to aim for when the hard limit is unlimited (setrlimit refuses "unlimited").
UNLIMITED_TARGET = 65536
# At most one warning a minute about making room: a flood must not flood the log too.
WARN_WINDOW = 60.0

EXPECT = hdrs.EXPECT
Clock = Callable[[], float]
Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class ConnectionLimits:
    """The figures above, injectable so tests can use a small cap and short timeouts."""

    max_connections: int = MAX_CONNECTIONS
    fd_reserve: int = FD_RESERVE
    accept_batch: int = ACCEPT_BATCH
    listen_backlog: int = LISTEN_BACKLOG
    idle_timeout: float = IDLE_TIMEOUT
    header_timeout: float = HEADER_TIMEOUT
    sweep_interval: float = SWEEP_INTERVAL


def raise_fd_limit() -> int:
    """Raises the soft open-files limit to the hard limit; returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = UNLIMITED_TARGET if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:  # e.g. above the kernel's nr_open
            log.debug("cannot raise the open-files limit from %d to %d: %s", soft, target, exc)
    log.debug("open-files limit: %s (hard %s)", soft, hard)
    return UNLIMITED_TARGET if soft == resource.RLIM_INFINITY else soft


def connection_cap(limits: ConnectionLimits, soft_limit: int) -> int:
    """Connections to serve at most under `soft_limit` open files, the reserve kept free."""
    room = soft_limit - limits.fd_reserve - IN_FLIGHT_TURNS * limits.accept_batch
    if room < MIN_CONNECTIONS:
        log.warning(
            "the open-files limit (%d) leaves room for only %d connections; serving %d anyway: "
            "raise it (ulimit -n) to at least %d",
            soft_limit, max(room, 0), MIN_CONNECTIONS,
            limits.fd_reserve + IN_FLIGHT_TURNS * limits.accept_batch + limits.max_connections,
        )  # fmt: skip
        room = MIN_CONNECTIONS
    return min(limits.max_connections, room)


class _Conn:
    __slots__ = ("busy", "head_started", "since", "transport")

    def __init__(self, transport: asyncio.BaseTransport, now: float) -> None:
        self.transport = transport
        self.since = now  # connected, or last response: when the wait for a request began
        self.head_started: float | None = None  # first byte of the next request head
        self.busy = False  # a request is being answered


class ConnectionTracker:
    """Which connections wait for a request (oldest wait first) and which have one in progress.

    Connections waiting are closed when the cap needs room or their timeout passes; those with a
    request in progress are left alone (sidecar requests are answered from memory).

    One table, ordered by when each connection's wait began, holds both kinds: marking a request
    begun or answered flips a flag and moves the entry to the end, with no entry made or freed
    per request (this bookkeeping runs on every request; a table per kind cost ~3 % of the
    serving rate)."""

    def __init__(self, cap: int, limits: ConnectionLimits, clock: Clock = time.monotonic) -> None:
        self.cap = cap
        self._limits = limits
        self.clock = clock
        self._conns: OrderedDict[asyncio.BaseTransport, _Conn] = OrderedDict()
        self._made_room = 0
        self._turned_away = 0
        self._warned_at: float | None = None

    def __len__(self) -> int:
        return len(self._conns)

    def opened(self, transport: asyncio.BaseTransport) -> _Conn | None:
        """Tracks a new connection, making room at the cap; None: no room, close it."""
        if len(self._conns) >= self.cap:
            # Busy connections are few (each is a request being answered): skip past them.
            oldest = next((c for c in self._conns.values() if not c.busy), None)
            if oldest is None:
                self._turned_away += 1
                self._warn()
                return None
            del self._conns[oldest.transport]
            oldest.transport.close()
            self._made_room += 1
            self._warn()
        conn = self._conns[transport] = _Conn(transport, self.clock())
        return conn

    def data(self, transport: asyncio.BaseTransport) -> None:
        conn = self._conns.get(transport)
        if conn is not None:
            self.data_on(conn)

    def data_on(self, conn: _Conn) -> None:
        if conn.head_started is None and not conn.busy:
            conn.head_started = self.clock()

    def request_started(self, transport: asyncio.BaseTransport | None) -> None:
        conn = self._conns.get(transport) if transport is not None else None
        if conn is not None:
            conn.busy = True

    def request_finished(self, transport: asyncio.BaseTransport | None) -> None:
        conn = self._conns.get(transport) if transport is not None else None
        if conn is not None and conn.busy:
            conn.busy = False
            if not transport.is_closing():  # type: ignore[union-attr]  # conn found: not None
                conn.since, conn.head_started = self.clock(), None
                self._conns.move_to_end(transport)  # type: ignore[arg-type]  # newest wait

    def closed(self, transport: asyncio.BaseTransport) -> None:
        self._conns.pop(transport, None)

    def around_requests(
        self, handler: Handler, direct: Mapping[tuple[str, str], _Direct] | None = None
    ) -> Handler:
        """`handler` with each request marked begun and answered (`request_started` and
        `request_finished`, inlined: this runs on every request). A request for a route in
        `direct` (`direct_routes`) goes straight to that route's handler."""
        conns, clock = self._conns, self.clock
        direct_route = (direct or {}).get

        async def tracked(request: web.BaseRequest) -> web.StreamResponse:
            transport = request.transport
            conn = conns.get(transport) if transport is not None else None
            if conn is None:
                return await handler(request)
            conn.busy = True
            try:
                found = direct_route((request.method, request.rel_url.path_safe))
                if found is None or EXPECT in request.headers:
                    return await handler(request)
                request._match_info = found.match_info  # type: ignore[attr-defined]  # see _Direct
                return await found.handler(request)  # type: ignore[arg-type]  # an AppRunner's
            finally:
                conn.busy = False
                if not conn.transport.is_closing() and conn.transport in conns:
                    conn.since, conn.head_started = clock(), None
                    conns.move_to_end(conn.transport)  # the newest wait

        return tracked

    def sweep(self) -> int:
        """Closes connections past their idle or header timeout; returns how many."""
        now = self.clock()
        idle, header = self._limits.idle_timeout, self._limits.header_timeout
        expired = [
            conn
            for conn in self._conns.values()
            if not conn.busy
            and (now - conn.since >= idle if conn.head_started is None
                 else now - conn.head_started >= header)
        ]  # fmt: skip
        for conn in expired:
            del self._conns[conn.transport]
            conn.transport.close()
        return len(expired)

    def _warn(self) -> None:
        now = self.clock()
        if self._warned_at is not None and now - self._warned_at < WARN_WINDOW:
            return
        self._warned_at = now
        log.warning(
            "at the connection limit (%d): closed %d idle connections to make room and turned "
            "away %d new ones (every connection busy) since the last report; a local client is "
            "holding connections open (`ss -tnp` shows which)",
            self.cap, self._made_room, self._turned_away,
        )  # fmt: skip
        self._made_room = self._turned_away = 0


class _Direct(NamedTuple):
    """A route a request is handed to directly, with the result of resolving it made once.

    aiohttp's `Application._handle` resolves each request's route (two coroutines, a match-info
    object made, added to and frozen) before calling the handler: about a tenth of what these
    tiny answers cost. For a fixed path the outcome is the same every time, so `direct_routes`
    resolves each once, and a request for one of them gets that result, exactly what `_handle`
    would have set (`request._match_info`, read by `request.match_info` and by the
    response-prepare signals: the one private attribute used here), and its handler. Anything
    else `_handle` does applies to none of these requests: apps with middlewares are left out,
    and requests with an `Expect` header or for any other route go through `_handle`.
    `tests/test_serving.py` checks the outcome matches aiohttp's own resolution."""

    match_info: web.UrlMappingMatchInfo
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]


def direct_routes(app: web.Application) -> dict[tuple[str, str], _Direct]:
    """(method, path) -> `_Direct` for each fixed-path route of `app` (frozen: routes are
    final), none if the app has middlewares (the direct path would skip them)."""
    if app.middlewares:
        return {}
    routes: dict[tuple[str, str], _Direct] = {}
    for fixed in app.router.resources():
        if not isinstance(fixed, web.PlainResource):
            continue
        for route in fixed:
            if route.method == hdrs.METH_ANY:
                continue
            match_info = web.UrlMappingMatchInfo({}, route)
            match_info.add_app(app)
            match_info.freeze()
            routes[route.method, fixed.canonical] = _Direct(match_info, route.handler)
    return routes


class _TrackedProtocol(asyncio.Protocol):
    """An aiohttp connection, reported to the tracker; every call passes through."""

    def __init__(self, inner: asyncio.Protocol, tracker: ConnectionTracker) -> None:
        self._inner = inner
        self._tracker = tracker
        self._conn: _Conn | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._conn = self._tracker.opened(transport)
        if self._conn is None:
            transport.close()
            return
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        conn = self._conn
        if conn is not None:
            self._tracker.data_on(conn)
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._conn is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is not None:
            self._tracker.closed(self._conn.transport)
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._conn is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._conn is not None:
            self._inner.resume_writing()


class LimitedSite(web.BaseSite):
    """An aiohttp site (on a bound socket, or host and port) serving within the limits."""

    def __init__(
        self,
        runner: web.BaseRunner,
        sock: socket.socket | None = None,
        *,
        host: str | None = None,
        port: int | None = None,
        ssl_context: ssl.SSLContext | None = None,
        limits: ConnectionLimits | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self._limits = limits or ConnectionLimits()
        super().__init__(runner, ssl_context=ssl_context, backlog=self._limits.accept_batch)
        if (sock is None) == (host is None):
            raise ValueError("give either a bound socket or a host and port")
        self._sock, self._host, self._port = sock, host, port
        self._tls = ssl_context
        self._clock = clock
        self._listener: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._quiet: contextlib.ExitStack | None = None
        self.tracker = ConnectionTracker(MIN_CONNECTIONS, self._limits, clock)

    @property
    def name(self) -> str:
        scheme = "https" if self._tls else "http"
        if self._listener is not None and self._listener.sockets:
            host, port = self._listener.sockets[0].getsockname()[:2]
        else:
            host, port = self._host, self._port
        return f"{scheme}://{f'[{host}]' if ':' in str(host) else host}:{port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        if server is None:
            raise RuntimeError("call runner.setup() before starting a site")
        self.tracker.cap = connection_cap(self._limits, raise_fd_limit())
        tracker = self.tracker
        # Read by each connection's handler when it is made.
        direct = direct_routes(self._runner.app) if isinstance(self._runner, web.AppRunner) else {}
        server.request_handler = tracker.around_requests(server.request_handler, direct)

        def protocol() -> asyncio.Protocol:
            return _TrackedProtocol(server(), tracker)

        loop = asyncio.get_running_loop()
        tls: dict[str, Any] = {}
        if self._tls is not None:
            tls = {"ssl": self._tls, "ssl_handshake_timeout": self._limits.header_timeout}
        if self._sock is not None:
            self._listener = await loop.create_server(
                protocol, sock=self._sock, backlog=self._limits.accept_batch, **tls
            )
        else:
            self._listener = await loop.create_server(
                protocol, self._host, self._port, backlog=self._limits.accept_batch,
                reuse_address=True, **tls,
            )  # fmt: skip
        for listening in self._listener.sockets:
            # The kernel's queue only; asyncio keeps accepting `accept_batch` at a time. Set on
            # a duplicate descriptor: the queue belongs to the socket, shared by both.
            with listening.dup() as duplicate:
                duplicate.listen(self._limits.listen_backlog)
        self._quiet = contextlib.ExitStack()
        self._quiet.enter_context(quiet_malformed_requests(clock=self._clock))
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="connection sweeper")
        log.debug("serving at most %d connections on %s", tracker.cap, self.name)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._limits.sweep_interval)
            self.tracker.sweep()

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._listener is not None:
            self._listener.close()
        if self._quiet is not None:
            self._quiet.close()
        await super().stop()


@contextlib.asynccontextmanager
async def serving(
    app: web.Application,
    sock: socket.socket | None = None,
    *,
    host: str | None = None,
    port: int | None = None,
    ssl_context: ssl.SSLContext | None = None,
    limits: ConnectionLimits | None = None,
    clock: Clock = time.monotonic,
) -> AsyncIterator[LimitedSite]:
    """Serves `app` within the limits until the block ends."""
    limits = limits or ConnectionLimits()
    # aiohttp's own keep-alive timer too (it also runs from connect in recent versions).
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, keepalive_timeout=limits.idle_timeout
    )
    await runner.setup()
    try:
        site = LimitedSite(runner, sock, host=host, port=port, ssl_context=ssl_context,
                           limits=limits, clock=clock)  # fmt: skip
        await site.start()
        yield site
    finally:
        await runner.cleanup()
