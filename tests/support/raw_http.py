"""HTTP spoken byte by byte, for requests no client library will send (malformed heads, raw
bytes that are not UTF-8, half a request) and for connections held open on purpose."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from tests.support.timing import scaled

__all__ = ["RawResponse", "exchange", "get", "request"]

# Only bounds a failing test: a server that answers closes the connection long before.
ANSWER_SECONDS = 20.0


@dataclass(frozen=True)
class RawResponse:
    status: int  # 0 when the server closed the connection without answering
    headers: dict[str, str]
    body: bytes


def _parse(data: bytes) -> RawResponse:
    if not data:
        return RawResponse(0, {}, b"")
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return RawResponse(int(status_line.split()[1]), headers, body)


async def exchange(port: int, data: bytes, host: str = "127.0.0.1") -> RawResponse:
    """Sends `data` on a new connection, then reads until the server closes it (send
    `Connection: close`)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(scaled(ANSWER_SECONDS)):
            return _parse(await reader.read())
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def request(
    port: int, method: bytes, target: bytes, *headers: bytes, host: str = "127.0.0.1"
) -> RawResponse:
    """One request of the raw target and header lines, with the right Host and
    `Connection: close`."""
    lines = [method + b" " + target + b" HTTP/1.1", f"Host: {host}:{port}".encode(), *headers,
             b"Content-Length: 0", b"Connection: close"]  # fmt: skip
    return await exchange(port, b"\r\n".join(lines) + b"\r\n\r\n", host)


async def get(port: int, target: bytes, *headers: bytes, host: str = "127.0.0.1") -> RawResponse:
    return await request(port, b"GET", target, *headers, host=host)
