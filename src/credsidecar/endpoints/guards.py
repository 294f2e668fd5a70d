"""The one security layer in front of every endpoint.

Refused: peers that are not loopback (or an opted-in link-local address), `Host` headers not on
the allowlist (DNS rebinding), proxied requests (`X-Forwarded-For`, `Forwarded`) and browser-style
requests (`Origin`, `Referer`, `Sec-Fetch-*`). Per-job secrets are compared in constant time.
Each refusal is an audit event naming the reason, the path and the peer, never a header value.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Awaitable, Callable, Iterable

from aiohttp import web
from aiohttp.typedefs import Middleware

from credsidecar.audit import AuditLog

__all__ = ["allowed_hosts", "guard_middleware", "secrets_match"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Any one of these marks a request relayed by a proxy or made by a browser page.
_PROXY_HEADERS = ("X-Forwarded-For", "Forwarded", "X-Real-IP")
_BROWSER_HEADERS = ("Origin", "Referer", "Sec-Fetch-Site", "Sec-Fetch-Mode")


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
    return web.json_response(
        {"error": "access_denied" if status == 403 else "unauthorized",
         "error_description": message},
        status=status,
        headers=headers,
    )  # fmt: skip


def guard_middleware(
    hosts: frozenset[str],
    audit: AuditLog,
    link_local: bool = False,
    decorate: Callable[[web.Request, web.StreamResponse], None] | None = None,
) -> Middleware:
    """`decorate` adds headers a contract wants on refusals too (GCP's Metadata-Flavor)."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        headers = request.headers
        reason: str | None = None
        if not _peer_allowed(request.remote, link_local):
            reason = "the peer is not on this host's loopback"
        elif headers.get("Host") not in hosts:
            reason = "unexpected Host header (possible DNS rebinding)"
        elif any(h in headers for h in _PROXY_HEADERS):
            reason = "proxied request (X-Forwarded-For/Forwarded) refused"
        elif any(h in headers for h in _BROWSER_HEADERS):
            reason = "browser-style request (Origin/Referer/Sec-Fetch) refused"
        if reason is None:
            return await handler(request)
        audit.event("request.refused", reason=reason, path=request.path, peer=request.remote)
        response = refusal(403, f"credsidecar: {reason}")
        if decorate is not None:
            decorate(request, response)
        return response

    return guard
