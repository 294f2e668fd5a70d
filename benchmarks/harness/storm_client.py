"""The launch storm's load client and its trivial server (benchmarks/launch_storm.py).

    python -m harness.storm_client load SPEC_FILE OUT_FILE   # the client, in its own process
    python -m harness.storm_client serve PORT_FILE           # a trivial /v1/token server

The client is open loop: each simulated sidecar arrives at its scheduled instant whether or
not earlier ones have been answered, and makes its exchanges (`POST /v1/token`, the form a real
sidecar sends) concurrently. A latency runs from the scheduled instant, so a client that falls
behind its schedule shows in the figures instead of hiding (`lag` says by how much it did).
Each exchange opens a new connection, as a sidecar's first exchanges do (a new process with an
empty pool; by its renewal 30 min later its keep-alive connections have long been closed), with
at most `connections` of them at once (a fleet's many connections, bounded), and the sidecar's
timeouts (15 s in all, 5 s to connect). The requests go round robin over `urls` (client-side,
like any HTTP load balancer in front of replicas). HTTP is written by hand over asyncio streams
(`raw_poster`: the bytes aiohttp's client sends, at a fraction of its CPU, which on a 2-core
machine the issuer keeps) or, with `client = "aiohttp"`, is aiohttp's client itself.

The trivial server answers every `POST /v1/token` with fixed bytes the size of a real answer,
after reading the form: the check that the client can offer the rate before its figures count.
Secrets (the launch tokens) travel in the spec file, in the benchmark's private work directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

EXCHANGE_PATH = "/v1/token"
# A real exchange answer is about this size (an RS256 JWT with AWS tags, and the identity).
TRIVIAL_BODY_BYTES = 1400


@dataclass
class LoadSpec:
    """What one client process does. `arrivals`: (offset s from `start_wall`, run index, the
    indices in `forms` of the exchanges that sidecar makes at once)."""

    urls: list[str]
    tokens: list[str]  # one launch token per run
    forms: list[dict[str, str]]  # per cloud: the form fields but subject_token
    arrivals: list[tuple[float, int, list[int]]]
    start_wall: float  # epoch seconds of offset 0, shared by every client process
    connections: int
    first_url: int = 0  # where this process starts its round robin
    # closed loop instead (a capacity probe): `concurrency` exchanges in flight for `seconds`
    closed_concurrency: int = 0
    closed_seconds: float = 0.0
    client: str = "raw"  # or "aiohttp" (see raw_poster)


@dataclass
class LoadResult:
    requests: int = 0
    latencies_ms: list[float] = field(default_factory=list)  # 200s only, from the schedule
    lags_ms: list[float] = field(default_factory=list)  # schedule -> request sent, every one
    sidecar_ms: list[float] = field(default_factory=list)  # schedule -> all its exchanges 200
    statuses: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)  # no HTTP answer, by exception name
    samples: dict[str, str] = field(default_factory=dict)  # first body per non-200 status
    first_sent: float | None = None  # s after offset 0
    last_done: float | None = None
    cpu_user: float = 0.0
    cpu_system: float = 0.0

    @property
    def ok(self) -> int:
        return self.statuses.get("200", 0)

    def merge(self, other: LoadResult) -> None:
        self.requests += other.requests
        self.latencies_ms += other.latencies_ms
        self.lags_ms += other.lags_ms
        self.sidecar_ms += other.sidecar_ms
        for mine, theirs in ((self.statuses, other.statuses), (self.errors, other.errors)):
            for k, n in theirs.items():
                mine[k] = mine.get(k, 0) + n
        for k, text in other.samples.items():
            self.samples.setdefault(k, text)
        if other.first_sent is not None:
            self.first_sent = min(self.first_sent or other.first_sent, other.first_sent)
        if other.last_done is not None:
            self.last_done = max(self.last_done or other.last_done, other.last_done)
        self.cpu_user += other.cpu_user
        self.cpu_system += other.cpu_system

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> LoadResult:
        return cls(**raw)


Post = Callable[[int, bytes], Awaitable[tuple[int, bytes]]]  # (url index, form) -> answer


class BadResponse(Exception):
    """The server closed the connection without a complete HTTP status line."""


@contextlib.asynccontextmanager
async def raw_poster(spec: LoadSpec) -> AsyncIterator[Post]:
    """HTTP/1.1 by hand over asyncio streams: one new connection per exchange (`Connection:
    close`), the headers aiohttp's client sends, at most `connections` at once. The issuer
    reads the same bytes as from a sidecar; the client spends a fraction of aiohttp's CPU,
    which on a 2-core machine is CPU the issuer keeps."""
    from credsidecar.clouds.upstream_http import UPSTREAM_TIMEOUT

    total, connect = UPSTREAM_TIMEOUT.total or 15.0, UPSTREAM_TIMEOUT.connect or 5.0
    slots = asyncio.Semaphore(spec.connections)
    targets = []
    for url in spec.urls:
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        head = (
            f"POST {EXCHANGE_PATH} HTTP/1.1\r\nHost: {parts.netloc}\r\nAccept: */*\r\n"
            "Accept-Encoding: gzip, deflate\r\nUser-Agent: Python/3.11 aiohttp/3\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\nConnection: close\r\n"
        ).encode()
        targets.append((host, port, head))

    async def post(target: int, body: bytes) -> tuple[int, bytes]:
        host, port, head = targets[target]
        async with slots, asyncio.timeout(total):
            async with asyncio.timeout(connect):
                reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
                raw = await reader.read()  # to EOF: the server closes after its answer
            finally:
                writer.close()
        if not raw.startswith(b"HTTP/1.") or len(raw) < 12:
            raise BadResponse(raw[:100])
        return int(raw[9:12]), raw.partition(b"\r\n\r\n")[2]

    yield post


@contextlib.asynccontextmanager
async def aiohttp_poster(spec: LoadSpec) -> AsyncIterator[Post]:
    """aiohttp's client, as the sidecar itself calls the issuer (a new connection each time)."""
    import aiohttp

    from credsidecar.clouds.upstream_http import UPSTREAM_TIMEOUT

    connector = aiohttp.TCPConnector(limit=spec.connections, limit_per_host=0, force_close=True)
    # The sidecar's timeouts, its connect timeout on the TCP connect itself: a real sidecar has
    # no pool shared with others to wait for, so waiting for one of ours is not a connect
    # failure (it counts in the latency, and in the total).
    timeout = aiohttp.ClientTimeout(
        total=UPSTREAM_TIMEOUT.total, sock_connect=UPSTREAM_TIMEOUT.connect
    )
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, cookie_jar=aiohttp.DummyCookieJar()
    ) as session:

        async def post(target: int, body: bytes) -> tuple[int, bytes]:
            url = spec.urls[target] + EXCHANGE_PATH
            async with session.post(url, data=body, headers=headers) as resp:
                return resp.status, await resp.read()

        yield post


async def run_load(spec: LoadSpec) -> LoadResult:
    result = LoadResult()
    origin = time.monotonic() + (spec.start_wall - time.time())  # offset 0 on this clock
    turn = [spec.first_url]
    used = {(run, form) for _, run, forms in spec.arrivals for form in forms}
    bodies = {
        (run, form): urlencode({**spec.forms[form], "subject_token": spec.tokens[run]}).encode()
        for run, form in used
    }

    async def exchange(post: Post, run: int, form: int, due: float) -> bool:
        target = turn[0] % len(spec.urls)
        turn[0] += 1
        sent = time.monotonic()
        result.requests += 1
        result.lags_ms.append((sent - due) * 1000)
        if result.first_sent is None:
            result.first_sent = sent - origin
        try:
            code, body = await post(target, bodies[run, form])
        except Exception as exc:  # any failure is counted, by its kind
            name = type(exc).__name__
            result.errors[name] = result.errors.get(name, 0) + 1
            return False
        finally:
            result.last_done = max(result.last_done or 0.0, time.monotonic() - origin)
        status = str(code)
        result.statuses[status] = result.statuses.get(status, 0) + 1
        if status == "200":
            result.latencies_ms.append((time.monotonic() - due) * 1000)
            return True
        result.samples.setdefault(status, body[:300].decode("utf-8", "replace"))
        return False

    async def sidecar(post: Post, run: int, forms: list[int], due: float) -> None:
        oks = await asyncio.gather(*(exchange(post, run, f, due) for f in forms))
        if all(oks):
            result.sidecar_ms.append((time.monotonic() - due) * 1000)

    async def closed_worker(post: Post, worker: int, until: float) -> None:
        n = worker
        while time.monotonic() < until:
            run, forms = spec.arrivals[n % len(spec.arrivals)][1:]
            await exchange(post, run, forms[n % len(forms)], time.monotonic())
            n += spec.closed_concurrency

    poster = aiohttp_poster if spec.client == "aiohttp" else raw_poster
    start = resource.getrusage(resource.RUSAGE_SELF)  # the load's CPU only, not the imports
    async with poster(spec) as post:
        tasks: list[asyncio.Task[None]] = []
        if spec.closed_concurrency:
            await asyncio.sleep(max(0.0, origin - time.monotonic()))
            until = origin + spec.closed_seconds
            tasks = [
                asyncio.create_task(closed_worker(post, w, until))
                for w in range(spec.closed_concurrency)
            ]
        else:
            for offset, run, forms in spec.arrivals:
                due = origin + offset
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(sidecar(post, run, forms, due)))
        await asyncio.gather(*tasks)
    end = resource.getrusage(resource.RUSAGE_SELF)
    result.cpu_user = end.ru_utime - start.ru_utime
    result.cpu_system = end.ru_stime - start.ru_stime
    return result


def _loop() -> asyncio.AbstractEventLoop:
    # The sidecar's own event loop (uvloop when installed): a client as cheap as a sidecar.
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()


def load_main(spec_file: str, out: str) -> None:
    raw = json.loads(Path(spec_file).read_text())
    raw["arrivals"] = [(float(o), int(r), [int(f) for f in fs]) for o, r, fs in raw["arrivals"]]
    spec = LoadSpec(**raw)
    loop = _loop()
    try:
        result = loop.run_until_complete(run_load(spec))
    finally:
        loop.close()
    tmp = Path(out + ".tmp")
    tmp.write_text(json.dumps(asdict(result)))
    tmp.replace(out)


def serve_main(port_file: str) -> None:
    """A trivial exchange server: reads the form, answers fixed bytes; every core it may use
    (SO_REUSEPORT workers are not needed: the check offers a few hundred requests a second)."""
    from aiohttp import web

    from harness.baseline import bound_and_announced

    body = json.dumps(
        {
            "access_token": "x" * (TRIVIAL_BODY_BYTES - 120),
            "issued_token_type": "urn:ietf:params:oauth:token-type:jwt",
            "token_type": "N_A",
            "expires_in": 600,
        }
    ).encode()

    async def token(request: web.Request) -> web.Response:
        await request.post()
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_post(EXCHANGE_PATH, token)
    sock = bound_and_announced(port_file)
    web.run_app(app, sock=sock, access_log=None, print=None, backlog=4096, loop=_loop())


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "load":
        load_main(argv[1], argv[2])
        return 0
    if len(argv) == 2 and argv[0] == "serve":
        serve_main(argv[1])
        return 0
    print(
        "usage: python -m harness.storm_client load SPEC_FILE OUT_FILE | serve PORT_FILE",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
