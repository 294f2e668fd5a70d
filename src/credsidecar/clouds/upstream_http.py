"""The one way credsidecar calls an upstream service over HTTP (STS, IAM, Entra, the issuer).

Every upstream call shares the same rules, kept here so no exchanger spells them again:
- one timeout (`UPSTREAM_TIMEOUT`): each upstream answers from memory, so anything slower is
  an outage, and the cache keeps serving what is still valid while it retries;
- a connection failure or timeout is `Unavailable` (retryable), naming the service and the URL;
- a response body is read up to `MAX_RESPONSE_BYTES` and refused beyond it: a token response
  is a few kilobytes, and a misbehaving or hostile endpoint must not grow our memory;
- JSON is parsed in one place, with an error naming the service when it is not JSON.

Callers interpret statuses and bodies themselves (each cloud explains its refusals its own way).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from credsidecar.errors import Unavailable

__all__ = ["MAX_RESPONSE_BYTES", "UPSTREAM_TIMEOUT", "UpstreamResponse", "request"]

# Token services answer in milliseconds; 15 s total is an outage, and 5 s to connect covers a
# slow DNS or TLS handshake. The cache retries with backoff while valid credentials last.
UPSTREAM_TIMEOUT = aiohttp.ClientTimeout(total=15, connect=5)
# The largest token response seen (an STS XML answer with a session policy) is under 8 KB; a
# generous bound that no honest upstream reaches.
MAX_RESPONSE_BYTES = 1024 * 1024
_READ_CHUNK = 64 * 1024
_SNIPPET = 300  # characters of a non-JSON body quoted in an error
# The longest `Retry-After` honoured: a busy upstream (the issuer's rate limits) may slow
# renewals down, not park them while credentials run out.
MAX_RETRY_AFTER = 300


@dataclass(frozen=True)
class UpstreamResponse:
    service: str  # how messages name the upstream: "Google STS", "issuer https://..."
    url: str
    status: int
    body: bytes
    # The answer's `Retry-After` in seconds (delta-seconds only, at most MAX_RETRY_AFTER), if any.
    retry_after: int | None = None

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body as JSON, or `Unavailable` naming the service when it is not JSON."""
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise Unavailable(
                f"{self.service} answered HTTP {self.status} at {self.url} with a body that is "
                f"not JSON: {self.text[:_SNIPPET]!r}"
            ) from exc

    def fields(self) -> dict[str, Any]:
        """The body's JSON object, for reading tokens and error details leniently.

        A body that is not a JSON object (a proxy's HTML error page, say) is quoted as the
        `error_description`, so a refusal still says what the upstream answered."""
        try:
            body = json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            return {"error_description": self.text[:_SNIPPET]} if self.body else {}
        return body if isinstance(body, dict) else {}


def _retry_after(value: str | None) -> int | None:
    """`Retry-After` as delta-seconds, capped: an upstream cannot park renewals for long (an
    HTTP date, rare from these services, is ignored: the usual backoff applies)."""
    if value is None or not value.strip().isdigit() or len(value.strip()) > 6:
        return None
    return min(int(value.strip()), MAX_RETRY_AFTER)


async def request(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    service: str,
    *,
    form: Mapping[str, str] | None = None,
    json_body: Any = None,
    headers: Mapping[str, str] | None = None,
    who: str | None = None,
    hint: str = "",
    raw: bytes | None = None,
) -> UpstreamResponse:
    """Sends one request; `form` is sent form-encoded, `json_body` as JSON (not both).

    Transport failures become `Unavailable`: "<service> is unreachable [for <who>] (<method>
    <url>: <error>)[; <hint>]"."""
    kwargs: dict[str, Any] = {"timeout": UPSTREAM_TIMEOUT}
    if form is not None:
        kwargs["data"] = dict(form)
    if json_body is not None:
        kwargs["json"] = json_body
    if raw is not None:  # sent as is: a signed request's exact bytes
        kwargs["data"] = raw
    if headers is not None:
        kwargs["headers"] = dict(headers)
    try:
        async with session.request(method, url, **kwargs) as resp:
            status = resp.status
            retry_after = _retry_after(resp.headers.get("Retry-After"))
            length = resp.content_length
            if length is not None and length > MAX_RESPONSE_BYTES:
                raise _too_large(service, url, status)
            body = bytearray()
            async for chunk in resp.content.iter_chunked(_READ_CHUNK):
                body += chunk
                if len(body) > MAX_RESPONSE_BYTES:
                    raise _too_large(service, url, status)
    except (aiohttp.ClientError, TimeoutError) as exc:
        detail = f"{exc.__class__.__name__}: {exc}" if str(exc) else exc.__class__.__name__
        for_who = f" for {who}" if who else ""
        raise Unavailable(
            f"{service} is unreachable{for_who} ({method} {url}: {detail})"
            + (f"; {hint}" if hint else "")
        ) from exc
    return UpstreamResponse(service, url, status, bytes(body), retry_after)


async def post(
    session: aiohttp.ClientSession,
    url: str,
    service: str,
    *,
    form: Mapping[str, str] | None = None,
    json_body: Any = None,
    headers: Mapping[str, str] | None = None,
    who: str | None = None,
    hint: str = "",
) -> UpstreamResponse:
    """`request("POST", ...)`: every token exchange is a POST."""
    return await request(session, "POST", url, service, form=form, json_body=json_body,
                         headers=headers, who=who, hint=hint)  # fmt: skip


def _too_large(service: str, url: str, status: int) -> Unavailable:
    return Unavailable(
        f"{service} answered HTTP {status} at {url} with more than {MAX_RESPONSE_BYTES} bytes; "
        "refusing a response that large (is the URL right?)"
    )
