"""A small HTTP/1.1 client bounded by one overall deadline, as SDKs talk to metadata endpoints.

http.client rather than aiohttp: smoke runs at the start of every task and as a probe, and
http.client costs a few milliseconds to import where aiohttp and asyncio cost a hundred. It sends
what the SDKs send (the Host of the URL, the headers given) and nothing that the sidecar refuses
(no proxy, no Origin, no X-Forwarded-For).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.message import Message
from urllib.parse import urlsplit

from credsidecar.smoke.model import Violation

__all__ = ["Client", "Reply", "TimedOut"]

# Metadata answers are a few KiB (a JWT is at most 20,000 characters): more is a wrong endpoint,
# and reading it would let a broken one keep a probe busy.
MAX_BODY = 256 * 1024
CHUNK = 16 * 1024


class TimedOut(Violation):
    """The overall --timeout ran out before the endpoint answered."""


@dataclass(frozen=True)
class Reply:
    url: str
    method: str
    status: int
    headers: Message
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    @property
    def what(self) -> str:
        return f"{self.method} {self.url}"

    def text(self) -> str:
        try:
            return self.body.decode()
        except UnicodeDecodeError:
            raise Violation(f"{self.what} answered a body that is not UTF-8") from None

    def expect(self, status: int, why: str = "") -> Reply:
        if self.status != status:
            # An error body explains the refusal; a success body may hold credentials, which
            # are never shown.
            shown = self.body[:200].decode("utf-8", "replace").strip() if self.status >= 400 else ""
            raise Violation(
                f"{self.what} answered {self.status}, not {status}{why}"
                + (f": {shown}" if shown else "")
            )
        return self

    def json_object(self) -> dict[str, object]:
        """The body as a JSON object, with `Content-Type: application/json` (DESIGN: every
        JSON response carries it; the Java and JS SDKs check it)."""
        content_type = (self.header("Content-Type") or "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise Violation(
                f"{self.what} answered Content-Type {self.header('Content-Type')!r}, not "
                "'application/json'"
            )
        try:
            body = json.loads(self.body)
        except ValueError:
            raise Violation(f"{self.what} answered a body that is not JSON") from None
        if not isinstance(body, dict):
            raise Violation(f"{self.what} answered JSON that is not an object")
        return body


class Client:
    def __init__(self, timeout: float, mono: Callable[[], float] = time.monotonic) -> None:
        self._mono = mono
        self._timeout = timeout
        self._deadline = mono() + timeout

    def _left(self, what: str) -> float:
        left = self._deadline - self._mono()
        if left <= 0:
            raise TimedOut(f"the overall --timeout of {self._timeout:g} s ran out before {what}")
        return left

    def request(self, method: str, url: str, headers: Mapping[str, str] | None = None) -> Reply:
        what = f"{method} {url}"
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise Violation(f"{url!r} is not an http:// URL with a host")
        try:
            port = parts.port or 80
        except ValueError:
            raise Violation(f"{url!r} has no valid port") from None
        target = parts.path or "/"
        if parts.query:
            target += f"?{parts.query}"
        conn = http.client.HTTPConnection(parts.hostname, port, timeout=self._left(what))
        try:
            conn.request(method, target, headers=dict(headers or {}))
            # Kept: http.client drops conn.sock once a response says it closes the connection.
            sock = conn.sock
            response = conn.getresponse()
            body = bytearray()
            while chunk := response.read1(CHUNK):
                body += chunk
                if len(body) > MAX_BODY:
                    raise Violation(f"{what} answered more than {MAX_BODY} bytes")
                left = self._left(what)  # a body that trickles in stops at the deadline
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.settimeout(left)
        except TimeoutError:
            self._left(what)  # raises TimedOut once the deadline has passed
            raise Violation(f"{what}: no answer in time") from None
        except ValueError:
            # http.client refuses a header value with a line break or beyond Latin-1; its message
            # quotes the value, which may be a secret.
            raise Violation(
                f"{what}: a header value (from the environment) cannot be sent "
                "(a line break or a non-Latin-1 character)"
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else repr(exc)
            raise Violation(f"{what}: no answer ({reason}); is the sidecar running?") from None
        finally:
            conn.close()
        return Reply(url, method, response.status, response.headers, bytes(body))
