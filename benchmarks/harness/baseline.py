"""The bare aiohttp app the sidecar's rate is compared with: no middleware, one handler per route
returning fixed bytes, in its own process (`harness.child baseline`) on the server core.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from harness.processes import child_argv, child_env, http, wait_until

if TYPE_CHECKING:
    from harness.run import Bench


@dataclass
class BareRoute:
    """One route of the bare app: the exact bytes, content type and extra headers to return."""

    path: str
    body: bytes
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)


def start_baseline(
    bench: Bench, routes: list[BareRoute], wrapper: Sequence[str] = (), timeout: float = 30
) -> tuple[subprocess.Popen[bytes], str]:
    """A bare aiohttp app in its own process on the server core; returns it and its base URL
    once every route answers its bytes. `wrapper`: as for `start_sidecar`."""
    spec = bench.work / "baseline.json"
    spec.write_text(
        json.dumps(
            [
                {
                    "path": r.path,
                    "body": r.body.decode("latin-1"),
                    "content_type": r.content_type,
                    "headers": r.headers,
                }
                for r in routes
            ]
        )
    )
    port_file = bench.work / "baseline.port"
    port_file.unlink(missing_ok=True)  # a bare app started before in this run wrote one
    log = bench.work / "baseline.log"
    proc = bench.procs.start(
        [*wrapper, *child_argv("baseline", str(spec), str(port_file))],
        log,
        bench.server_core,
        env=child_env(),
    )
    wait_until(port_file.exists, "baseline", proc, log, timeout=timeout)
    url = f"http://127.0.0.1:{port_file.read_text()}"

    def serving(route: BareRoute) -> bool:
        try:  # the port file is written just before the app listens
            return http("GET", url + route.path, timeout=1)[1] == route.body
        except OSError:
            return False

    for r in routes:
        wait_until(partial(serving, r), "baseline serving", proc, log, timeout=timeout)
    return proc, url


def bound_and_announced(port_file: str) -> socket.socket:
    """A socket bound to a free loopback port, whose number is then written to `port_file`
    (atomically: whoever waits for the file reads a whole number)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    tmp = Path(port_file + ".tmp")
    tmp.write_text(str(sock.getsockname()[1]))
    tmp.replace(port_file)
    return sock


def serve_baseline(spec_file: str, port_file: str) -> None:
    """A bare aiohttp app: no middleware, one handler per route returning fixed bytes."""
    from aiohttp import web

    app = web.Application()
    for spec in json.loads(Path(spec_file).read_text()):
        body = spec["body"].encode("latin-1")
        headers = {"Content-Type": spec["content_type"], **spec["headers"]}

        async def handler(
            request: web.Request, body: bytes = body, headers: dict[str, str] = headers
        ) -> web.Response:
            return web.Response(body=body, headers=headers)

        app.router.add_get(spec["path"], handler)
    sock = bound_and_announced(port_file)
    # The same event loop the sidecar runs on (uvloop when installed), for a like-for-like ratio.
    try:
        import uvloop

        loop: asyncio.AbstractEventLoop | None = uvloop.new_event_loop()
    except ImportError:
        loop = None
    web.run_app(app, sock=sock, access_log=None, print=None, backlog=1024, loop=loop)
