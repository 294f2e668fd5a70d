"""Serves one stand-in on a loopback port it binds itself (see credsidecar.listen)."""

from __future__ import annotations

import ssl

from aiohttp import web

from credsidecar.listen import bind_loopback, port_of

__all__ = ["serve_app"]


async def serve_app(
    app: web.Application, runners: list[web.AppRunner], ssl_context: ssl.SSLContext | None = None
) -> str:
    """Starts `app` on a port the OS picks and returns its base URL; its runner is appended to
    `runners` as soon as it exists, so the caller's clean-up covers a half-started app."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    runners.append(runner)
    sock = bind_loopback()
    try:
        await web.SockSite(runner, sock, ssl_context=ssl_context).start()
    except BaseException:
        sock.close()
        raise
    scheme = "https" if ssl_context is not None else "http"
    return f"{scheme}://127.0.0.1:{port_of(sock)}"
