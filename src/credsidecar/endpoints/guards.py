"""The one security layer in front of every endpoint.

Refused: peers that are not loopback (or an opted-in link-local address, or the well-known
address the connection came in on: see `_peer_allowed`), `Host` headers not on
the allowlist (DNS rebinding), proxied requests (`X-Forwarded-*`, `Forwarded`, `Via`),
browser-style requests (`Origin`, `Referer`, `Sec-Fetch-*`), and peers whose socket belongs to
another Unix user than the job's (`PeerPolicy`, after the cheap checks; looked up once per
connection by `endpoints/peers.py`). Per-job secrets are compared in constant time.

The guard wraps each handler rather than running as aiohttp middleware: a middleware adds two
coroutine layers to every request, about a sixth of the serving rate for these tiny responses.
Refusals are audited (reason, path, peer, uid, never a header value), at most one line per peer
and reason every `REFUSAL_WINDOW` seconds and `MAX_REFUSAL_LINES` in all, so neither a looping
client nor one varying its requests can fill the disk.
"""

from __future__ import annotations

import hmac
import ipaddress
import math
import os
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web
from cachetools import LRUCache

from credsidecar.audit import AuditLog
from credsidecar.endpoints.peers import ConnectionPeers, PeerUnknown

__all__ = [
    "Guard",
    "PeerPolicy",
    "RefusalLog",
    "allowed_hosts",
    "refusal",
    "secret_bytes",
    "secrets_match",
    "well_known_hosts",
]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_Verdict = tuple[str | None, str | None]

# Any one of these marks a request relayed by a proxy or made by a browser page. No SDK or CLI
# talking to a metadata endpoint sends any of them (`Via` included: only proxies add it).
_PROXY_HEADERS = ("X-Forwarded-For", "Forwarded", "X-Real-IP", "Via", "X-Forwarded-Host",
                  "X-Forwarded-Proto", "X-Forwarded-Port")  # fmt: skip
_BROWSER_HEADERS = ("Origin", "Referer", "Sec-Fetch-Site", "Sec-Fetch-Mode")
# Asked of the headers' keys view, whose membership test ignores case (multidict): ~0.2 us,
# against ~0.8 us for lower-casing every header name of the request.
_REFUSED_HEADERS = frozenset(_PROXY_HEADERS + _BROWSER_HEADERS)
_LOOPBACK_FAST = frozenset({"127.0.0.1", "::1"})
REFUSAL_WINDOW = 10.0
# Refusal lines per window, every peer and reason together: about 200 bytes each, so at most
# ~1.7 MB a day however many requests are refused.
MAX_REFUSAL_LINES = 20
MAX_REFUSAL_KEYS = 1024


def secret_bytes(secret: str) -> bytes:
    """A per-job secret as `secrets_match` compares it, encoded once at start."""
    return secret.encode("utf-8", "surrogateescape")


def secrets_match(presented: str | None, expected: bytes) -> bool:
    """Constant-time comparison of a header value with `secret_bytes(secret)`."""
    if presented is None:
        return False
    # aiohttp decodes header bytes as UTF-8 with surrogateescape: encoding the same way gives
    # back the bytes sent, where a plain encode() raises on invalid UTF-8.
    return hmac.compare_digest(presented.encode("utf-8", "surrogateescape"), expected)


def allowed_hosts(port: int, extra: Iterable[str] = ()) -> frozenset[str]:
    """Host header values a local client legitimately sends for our port."""
    names = ["127.0.0.1", "localhost", "[::1]", *extra]
    hosts = {f"{name}:{port}" for name in names}
    if port == 80:  # clients omit the default port
        hosts.update(names)
    return frozenset(hosts)


def well_known_hosts(names: Iterable[str]) -> frozenset[str]:
    """Host header values for the well-known metadata addresses served on port 80 (`names` as
    clients write them: `169.254.169.254`, `metadata.google.internal`, `[fd00:ec2::254]`)."""
    return frozenset(host for name in names for host in (name, f"{name}:80"))


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _peer_allowed(remote: str | None, link_local: bool, local: str | None = None) -> bool:
    """Loopback; or the very address the connection came in on (`local`), which only this
    network namespace can connect from: a job reaching 169.254.169.254 on the namespace's
    loopback has that address as its own source, and Linux drops packets arriving from outside
    with a source address of its own (martians, `accept_local` off by default); or, with
    `link_local`, any 169.254.x peer."""
    if remote in _LOOPBACK_FAST:
        return True  # the common case, without parsing an address per request
    if remote is None:
        return False
    address = _address(remote)
    if address is None:
        return False
    if address.is_loopback or (link_local and address.is_link_local):
        return True
    return local is not None and not address.is_unspecified and address == _address(local)


def _local_address(request: web.Request) -> str | None:
    """The address the connection came in on (ours), or None."""
    transport = request.transport
    sockname = transport.get_extra_info("sockname") if transport is not None else None
    return str(sockname[0]) if isinstance(sockname, tuple) and sockname else None


def refusal(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    code = {401: "unauthorized", 403: "access_denied"}.get(status, "invalid_request")
    return web.json_response(
        {"error": code, "error_description": message}, status=status, headers=headers
    )


class RefusalLog:
    """Audits refused requests. Per (peer, reason), the peer being the uid when known, else the
    address, the first refusal in each window is written, with the number of identical ones left
    unwritten since; at most `max_lines` lines are written per window in all, and refusals past
    that cap are counted into one `request.refused.suppressed` line written when the next window
    starts (at the next refusal, or at `flush`)."""

    def __init__(
        self,
        audit: AuditLog,
        mono: Callable[[], float] = time.monotonic,
        window: float = REFUSAL_WINDOW,
        max_lines: int = MAX_REFUSAL_LINES,
    ) -> None:
        self._audit = audit
        self._mono = mono
        self._window = window
        self._max_lines = max_lines
        # (peer, reason) -> [time last written, refusals unwritten since]
        self._keys: LRUCache[tuple[int | str | None, str], list[float]] = LRUCache(MAX_REFUSAL_KEYS)
        self._window_start = -math.inf
        self._lines = 0
        self._suppressed = 0

    def record(self, request: web.Request, reason: str, uid: int | None = None) -> None:
        now = self._mono()
        if now - self._window_start >= self._window:
            self.flush()
            self._window_start, self._lines = now, 0
        key = (uid if uid is not None else request.remote, reason)
        entry = self._keys.get(key)
        if entry is not None and now - entry[0] < self._window:
            entry[1] += 1
            return
        if self._lines >= self._max_lines:
            self._suppressed += 1
            return
        self._lines += 1
        self._keys[key] = [now, 0]
        self._audit.event(
            "request.refused",
            reason=reason,
            path=request.path[:200],
            peer=request.remote,
            uid=uid,
            unwritten_before=int(entry[1]) if entry is not None and entry[1] else None,
        )

    def flush(self) -> None:
        """Writes the count of refusals the cap kept out of the trail, if any."""
        if self._suppressed:
            self._audit.event(
                "request.refused.suppressed", count=self._suppressed, window_s=self._window
            )
            self._suppressed = 0


class PeerPolicy:
    """Which local Unix users the endpoints answer, by the owner of the peer's socket (looked up
    once per connection), or every local peer where the network namespace holds only the job."""

    def __init__(self, uids: frozenset[int] | None, peers: ConnectionPeers | None = None) -> None:
        """`uids` None answers any local peer (`--any-local-peer`)."""
        self.uids = uids
        self._peers = peers if peers is not None else ConnectionPeers()

    @classmethod
    def for_job(cls, allow_uids: Iterable[int] = (), any_local_peer: bool = False) -> PeerPolicy:
        """The sidecar's own user, root (who can read the job's memory anyway) and `allow_uids`."""
        if any_local_peer:
            return cls(None)
        return cls(frozenset({os.geteuid(), 0, *allow_uids}))

    def reason_to_refuse(self, request: web.Request) -> str | None:
        if self.uids is None:
            return None
        try:
            uid = self._peers.uid(request.transport)
        except PeerUnknown as exc:
            return (
                f"cannot tell which local user the peer is: {exc} (--any-local-peer turns this "
                "check off where the network namespace holds only the job)"
            )
        if uid in self.uids:
            return None
        return (
            f"peer uid {uid} is not the job's user (if the job runs as that user, start the "
            f"sidecar with --allow-uid {uid})"
        )

    def known_uid(self, request: web.Request) -> int | None:
        return self._peers.known(request.transport)


class Guard:
    def __init__(
        self,
        hosts: frozenset[str],
        refusals: RefusalLog,
        link_local: bool = False,
        decorate: Callable[[web.StreamResponse], None] | None = None,
        peers: PeerPolicy | None = None,
    ) -> None:
        """`decorate` adds what a contract wants on refusals too (GCP's Metadata-Flavor header,
        the error fields MSAL reads on Azure). `peers` defaults to the job's user and root; the
        guards of one sidecar share one policy, hence one lookup per connection."""
        self._hosts = hosts
        self._refusals = refusals
        self._link_local = link_local
        self._decorate = decorate
        self._peers = peers if peers is not None else PeerPolicy.for_job()
        # Per connection, dropped with it: a keep-alive client's requests skip the peer checks.
        self._verdicts: weakref.WeakKeyDictionary[object, _Verdict] = weakref.WeakKeyDictionary()

    def _connection_verdict(self, request: web.Request) -> _Verdict:
        """What the connection alone decides: (refusal before the header checks, after them).
        Both hold for the connection's life, so they are found once per connection."""
        if not _peer_allowed(request.remote, self._link_local, _local_address(request)):
            return ("the peer is not on this host's loopback", None)
        return (None, self._peers.reason_to_refuse(request))

    def reason_to_refuse(self, request: web.Request) -> str | None:
        transport = request.transport
        if transport is None:  # closed: nothing to cache it on
            verdict = self._connection_verdict(request)
        else:
            found = self._verdicts.get(transport)
            if found is None:
                found = self._verdicts[transport] = self._connection_verdict(request)
            verdict = found
        if verdict[0] is not None:
            return verdict[0]
        headers = request.headers
        if headers.get("Host") not in self._hosts:
            return "unexpected Host header (possible DNS rebinding)"
        if not headers.keys().isdisjoint(_REFUSED_HEADERS):
            if any(h in headers for h in _PROXY_HEADERS):
                return "proxied request (X-Forwarded-*/Forwarded/Via) refused"
            return "browser-style request (Origin/Referer/Sec-Fetch) refused"
        return verdict[1]

    def refuse(
        self, request: web.Request, status: int, reason: str, hint: str = ""
    ) -> web.Response:
        self._refusals.record(request, reason, self._peers.known_uid(request))
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
