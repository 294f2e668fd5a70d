"""The one security layer in front of every endpoint.

Refused: peers that are not loopback (or an opted-in link-local address), `Host` headers not on
the allowlist (DNS rebinding), proxied requests (`X-Forwarded-For`, `Forwarded`) and browser-style
requests (`Origin`, `Referer`, `Sec-Fetch-*`). Per-job secrets are compared in constant time.

The guard wraps each handler rather than running as aiohttp middleware: a middleware adds two
coroutine layers to every request, about a sixth of the serving rate for these tiny responses.
Refusals are audited (reason, path, peer, never a header value), at most one line per reason and
path every `REFUSAL_WINDOW` seconds with a count of those left unwritten, so a looping client
cannot fill the disk.
"""

from __future__ import annotations

import hmac
import ipaddress
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web
from cachetools import LRUCache

from credsidecar.audit import AuditLog

__all__ = ["Guard", "RefusalLog", "allowed_hosts", "refusal", "secrets_match"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Any one of these marks a request relayed by a proxy or made by a browser page.
_PROXY_HEADERS = ("X-Forwarded-For", "Forwarded", "X-Real-IP")
_BROWSER_HEADERS = ("Origin", "Referer", "Sec-Fetch-Site", "Sec-Fetch-Mode")
_LOOPBACK_FAST = frozenset({"127.0.0.1", "::1"})
REFUSAL_WINDOW = 10.0
MAX_REFUSAL_KEYS = 1024


def secrets_match(presented: str | None, expected: str) -> bool:
    if presented is None:
        return False
    return hmac.compare_digest(presented.encode(), expected.encode())


def allowed_hosts(port: int, extra: Iterable[str] = ()) -> frozenset[str]:
    """Host header values a local client legitimately sends for our port."""
    names = ["127.0.0.1", "localhost", "[::1]", *extra]
    hosts = {f"{name}:{port}" for name in names}
    if port == 80:  # clients omit the default port
        hosts.update(names)
    return frozenset(hosts)


def _peer_allowed(remote: str | None, link_local: bool) -> bool:
    if remote in _LOOPBACK_FAST:
        return True  # the common case, without parsing an address per request
    if remote is None:
        return False
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback or (link_local and address.is_link_local)


def refusal(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    code = {401: "unauthorized", 403: "access_denied"}.get(status, "invalid_request")
    return web.json_response(
        {"error": code, "error_description": message}, status=status, headers=headers
    )


class RefusalLog:
    """Audits refused requests: the first per (reason, path) in each window is written with
    the number of identical refusals left unwritten in the window before it."""

    def __init__(self, audit: AuditLog, mono: Callable[[], float] = time.monotonic) -> None:
        self._audit = audit
        self._mono = mono
        self._windows: LRUCache[tuple[str, str], list[float]] = LRUCache(MAX_REFUSAL_KEYS)

    def record(self, request: web.Request, reason: str) -> None:
        key = (reason, request.path[:200])
        now = self._mono()
        window = self._windows.get(key)
        if window is not None and now - window[0] < REFUSAL_WINDOW:
            window[1] += 1
            return
        unwritten = int(window[1]) if window is not None else 0
        self._windows[key] = [now, 0]
        self._audit.event(
            "request.refused",
            reason=reason,
            path=key[1],
            peer=request.remote,
            unwritten_before=unwritten or None,
        )


class Guard:
    def __init__(
        self,
        hosts: frozenset[str],
        refusals: RefusalLog,
        link_local: bool = False,
        decorate: Callable[[web.StreamResponse], None] | None = None,
    ) -> None:
        """`decorate` adds what a contract wants on refusals too (GCP's Metadata-Flavor header,
        the error fields MSAL reads on Azure)."""
        self._hosts = hosts
        self._refusals = refusals
        self._link_local = link_local
        self._decorate = decorate

    def reason_to_refuse(self, request: web.Request) -> str | None:
        headers = request.headers
        if not _peer_allowed(request.remote, self._link_local):
            return "the peer is not on this host's loopback"
        if headers.get("Host") not in self._hosts:
            return "unexpected Host header (possible DNS rebinding)"
        if any(h in headers for h in _PROXY_HEADERS):
            return "proxied request (X-Forwarded-For/Forwarded) refused"
        if any(h in headers for h in _BROWSER_HEADERS):
            return "browser-style request (Origin/Referer/Sec-Fetch) refused"
        return None

    def refuse(
        self, request: web.Request, status: int, reason: str, hint: str = ""
    ) -> web.Response:
        self._refusals.record(request, reason)
        response = refusal(status, f"credsidecar: {reason}{hint}")
        if self._decorate is not None:
            self._decorate(response)
        return response

    def wrap(self, handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            reason = self.reason_to_refuse(request)
            if reason is None:
                return await handler(request)
            return self.refuse(request, 403, reason)

        return guarded

    def routes(self, routes: Iterable[web.RouteDef]) -> list[web.RouteDef]:
        out = []
        for route in routes:
            kwargs: dict[str, Any] = dict(route.kwargs)
            out.append(web.route(route.method, route.path, self.wrap(route.handler), **kwargs))
        return out
