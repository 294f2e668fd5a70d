"""Malformed HTTP requests are logged without their bytes, at most once per peer per minute.

aiohttp logs a request it cannot parse at ERROR on the `aiohttp.server` logger ("Error handling
request from PEER") with the parser's exception, whose message quotes the offending request line
or header: a secret in an `Authorization` header would be written to the log, and any local user
can fill the log by sending garbage. `MalformedRequestFilter` rewrites such a record to
"malformed HTTP request from PEER: <exception class>" and drops repeats from the same peer
within `WINDOW`, counting them in the next line. Other records pass unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator

from aiohttp.http_exceptions import HttpProcessingError
from cachetools import LRUCache

__all__ = ["MalformedRequestFilter", "quiet_malformed_requests"]

SERVER_LOGGER = "aiohttp.server"
# One line per peer per minute tells an operator a client is broken or probing; more is noise.
WINDOW = 60.0
# Peers remembered for the window; a forgotten peer only means one more line.
MAX_PEERS = 256


class _Seen:
    __slots__ = ("logged_at", "suppressed")

    def __init__(self, logged_at: float) -> None:
        self.logged_at = logged_at
        self.suppressed = 0


class MalformedRequestFilter(logging.Filter):
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._clock = clock
        self._peers: LRUCache[str, _Seen] = LRUCache(MAX_PEERS)

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        args = record.args if isinstance(record.args, tuple) else ()
        peer = str(args[0]) if args else "unknown peer"
        now = self._clock()
        seen = self._peers.get(peer)
        if seen is not None and now - seen.logged_at < WINDOW:
            seen.suppressed += 1
            return False
        suppressed = seen.suppressed if seen is not None else 0
        self._peers[peer] = _Seen(now)
        record.msg = "malformed HTTP request from %s: %s%s"
        more = f" ({suppressed} more from this peer suppressed)" if suppressed else ""
        record.args = (peer, type(exc).__name__, more)
        record.exc_info = record.exc_text = None
        if record.levelno > logging.WARNING:  # the client's fault, not the server's
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


@contextlib.contextmanager
def quiet_malformed_requests(clock: Callable[[], float] = time.monotonic) -> Iterator[None]:
    """Installs the filter on aiohttp's server logger for the duration."""
    logger = logging.getLogger(SERVER_LOGGER)
    quiet = MalformedRequestFilter(clock)
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)
