"""What the cloud checks (aws.py, gcp.py, azure.py) share: the HTTP session they talk through,
the name of the marker a write probe leaves for a moment, and detail text that is safe to show.

A check is a handful of small requests, so its timeouts are short: a storage API that has not
answered in `TOTAL_TIMEOUT` seconds is reported "not reachable" rather than waited on, and the
whole preflight of a run's paths stays within seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import secrets
import ssl
from collections.abc import AsyncIterator, Iterable

import aiohttp

from credsidecar.preflight.model import Access, Outcome, Target, Verdict
from credsidecar.tls import client_context

__all__ = [
    "CONNECT_TIMEOUT",
    "MARKER_DIR",
    "TOTAL_TIMEOUT",
    "Refused",
    "clean_detail",
    "marker_left",
    "marker_name",
    "probe_session",
    "read_capped",
    "unreachable",
    "write_accesses",
]

# Connecting is fast or it fails (a closed port, a firewall dropping packets); a storage API
# answers one small request in well under a second. Both are generous for the sandbox on a
# loaded machine and short enough that an unreachable cloud costs a preflight little.
CONNECT_TIMEOUT = 5.0
TOTAL_TIMEOUT = 15.0
# Where write probes put their marker, under the target's prefix; the random part keeps two
# preflights of one prefix (several launches at once) from deleting each other's marker.
MARKER_DIR = ".credsidecar-preflight"
# Details quote the cloud's own words; a cloud (or something in front of it) may answer with a
# whole HTML page, which a one-sentence report has no room for.
MAX_DETAIL = 300
_SPACES = re.compile(r"\s+")
# The answers a check reads are small (a permission list, one listing entry, an error); more
# than this is not one of them, and is not read into memory.
MAX_BODY = 64 * 1024


def marker_name(prefix: str) -> str:
    """`PREFIX/.credsidecar-preflight/<random>`: a fresh object name under `prefix`."""
    base = f"{prefix}/" if prefix and not prefix.endswith("/") else prefix
    return f"{base}{MARKER_DIR}/{secrets.token_hex(8)}"


class Refused(Exception):
    """One storage call of a check failed: the verdict that means (outcome, missing
    permissions, the cloud's words)."""

    def __init__(self, outcome: Outcome, detail: str, missing: tuple[str, ...] = ()) -> None:
        super().__init__(detail)
        self.outcome, self.detail, self.missing = outcome, detail, missing

    def verdict(self, target: Target, identity: str) -> Verdict:
        return Verdict(target, self.outcome, identity, self.missing, self.detail)


def marker_left(refused: Refused, target: Target, marker_url: str) -> str:
    """After a marker was written but its delete was refused: a target that needs delete
    fails (Refused again, naming the marker to remove); for one that needs only write, the
    note its verdict carries."""
    left = f"the marker {marker_url} was written but not deleted: remove it"
    if Access.DELETE in target.access:
        raise Refused(refused.outcome, f"{refused.detail}; {left}", refused.missing) from refused
    return f"{left} ({refused.detail})"


def write_accesses(target: Target) -> tuple[Access, ...]:
    """The target's accesses a write probe verifies (write and delete), in a stable order."""
    return tuple(a for a in (Access.WRITE, Access.DELETE) if a in target.access)


def clean_detail(text: str, secrets_: Iterable[str] = ()) -> str:
    """`text` on one line, at most MAX_DETAIL characters, with every secret blanked out.

    Checks pass their credential here so that a cloud echoing a request back (some proxies
    do) cannot put a token into a report."""
    for secret in secrets_:
        if secret:
            text = text.replace(secret, "[redacted]")
    text = _SPACES.sub(" ", text).strip()
    return text if len(text) <= MAX_DETAIL else text[: MAX_DETAIL - 3] + "..."


def unreachable(target: Target, identity: str, service: str, exc: BaseException) -> Verdict:
    """The verdict for a storage API that did not answer (refused, timed out, TLS failed)."""
    reason = str(exc) or type(exc).__name__
    if isinstance(exc, TimeoutError):
        reason = f"no answer within {TOTAL_TIMEOUT:g} s"
    return Verdict(
        target, Outcome.UNREACHABLE, identity, detail=clean_detail(f"{service}: {reason}")
    )


async def read_capped(resp: aiohttp.ClientResponse) -> bytes:
    """A response's body, up to MAX_BODY bytes (the rest is left unread)."""
    body = bytearray()
    while len(body) < MAX_BODY:
        chunk = await resp.content.read(MAX_BODY - len(body))  # what has arrived, or b"" at end
        if not chunk:
            break
        body += chunk
    return bytes(body)


@functools.lru_cache(maxsize=4)  # one per CA file: a run uses one, the tests a few
def _ssl_context(ca_file: str | None) -> ssl.SSLContext:
    return client_context(ca_file)


@contextlib.asynccontextmanager
async def probe_session(
    ca_file: str | None, session: aiohttp.ClientSession | None = None
) -> AsyncIterator[aiohttp.ClientSession]:
    """`session` when the caller shares one across checks; else a session of its own with the
    short timeouts, trusting the system's CAs plus `ca_file`, closed on exit."""
    if session is not None:
        yield session
        return
    # Loading CA files reads the disk: off the event loop.
    context = await asyncio.to_thread(_ssl_context, ca_file)
    timeout = aiohttp.ClientTimeout(total=TOTAL_TIMEOUT, sock_connect=CONNECT_TIMEOUT)
    connector = aiohttp.TCPConnector(ssl=context)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as own:
        yield own
