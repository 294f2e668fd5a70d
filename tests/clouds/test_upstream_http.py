"""The one upstream HTTP helper: bodies sent, failures as `Unavailable`, bounded answers, JSON."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from aiohttp import web

from credsidecar.clouds.upstream_http import MAX_RESPONSE_BYTES, post, request
from credsidecar.errors import Unavailable
from credsidecar.launch.exchange import IssuerExchange


async def echo(request: web.Request) -> web.Response:
    if request.content_type == "application/json":
        return web.json_response({"json": await request.json()})
    return web.json_response({"form": dict(await request.post())})


async def big(request: web.Request) -> web.StreamResponse:
    """Streams more than the bound without a Content-Length, as a chunked answer."""
    resp = web.StreamResponse()
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    chunk = b"x" * 65536
    for _ in range(MAX_RESPONSE_BYTES // len(chunk) + 2):
        await resp.write(chunk)
    return resp


async def sized(request: web.Request) -> web.Response:
    return web.Response(body=b"y" * (MAX_RESPONSE_BYTES + 1))


async def html(request: web.Request) -> web.Response:
    return web.Response(status=502, text="<html>gateway</html>")


async def limited(request: web.Request) -> web.Response:
    return web.json_response(
        {"error": "rate_limited", "error_description": "run 'r1' is over the per_run limit"},
        status=429, headers={"Retry-After": request.query["after"]},
    )  # fmt: skip


async def limited_issuer(request: web.Request) -> web.Response:
    """The issuer's token endpoint, rate-limited."""
    return await limited(request.clone(rel_url="/v1/token?after=42"))


@pytest.fixture
async def base(aiohttp_server: Any) -> str:
    app = web.Application()
    app.router.add_post("/echo", echo)
    app.router.add_get("/big", big)
    app.router.add_get("/sized", sized)
    app.router.add_get("/html", html)
    app.router.add_post("/limited", limited)
    app.router.add_post("/v1/token", limited_issuer)
    return str((await aiohttp_server(app)).make_url(""))


async def test_form_and_json_bodies_are_sent_as_given(
    base: str, http: aiohttp.ClientSession
) -> None:
    resp = await post(http, f"{base}/echo", "Echo", form={"a": "1"})
    assert resp.status == 200 and resp.json() == {"form": {"a": "1"}}
    resp = await post(http, f"{base}/echo", "Echo", json_body={"b": [2]})
    assert resp.fields() == {"json": {"b": [2]}}


async def test_an_unreachable_service_is_unavailable_naming_service_url_and_user(
    http: aiohttp.ClientSession, unused_tcp_port: int
) -> None:
    url = f"http://127.0.0.1:{unused_tcp_port}/token"
    with pytest.raises(Unavailable) as info:
        await post(http, url, "Google STS", form={}, who="user alice", hint="retrying")
    message = info.value.message
    assert message.startswith("Google STS is unreachable for user alice (POST " + url)
    assert message.endswith("; retrying") and info.value.retryable


@pytest.mark.parametrize("path", ["/big", "/sized"])
async def test_an_answer_over_the_bound_is_refused(
    base: str, http: aiohttp.ClientSession, path: str
) -> None:
    with pytest.raises(Unavailable, match=f"more than {MAX_RESPONSE_BYTES} bytes"):
        await request(http, "GET", f"{base}{path}", "Entra")


async def test_a_body_that_is_not_json_is_quoted_or_refused_clearly(
    base: str, http: aiohttp.ClientSession
) -> None:
    resp = await request(http, "GET", f"{base}/html", "IAM Credentials")
    assert resp.fields() == {"error_description": "<html>gateway</html>"}
    with pytest.raises(Unavailable, match=r"IAM Credentials answered HTTP 502 .* not JSON"):
        resp.json()


@pytest.mark.parametrize(
    ("header", "seen"),
    [("7", 7), (" 12 ", 12), ("100000", 300), ("Wed, 21 Oct 2026 07:28:00 GMT", None),
     ("-1", None), ("9" * 40, None)],
)  # fmt: skip
async def test_retry_after_is_read_as_seconds_and_capped(
    base: str, http: aiohttp.ClientSession, header: str, seen: int | None
) -> None:
    resp = await post(http, f"{base}/limited?after={header}", "Issuer", form={})
    assert resp.status == 429 and resp.retry_after == seen


async def test_a_rate_limited_exchange_is_retried_no_sooner_than_the_issuer_asks(
    base: str, http: aiohttp.ClientSession
) -> None:
    class Token:
        async def read(self) -> str:
            return "launch-token"

    exchange = IssuerExchange(base, Token(), http)  # type: ignore[arg-type]
    with pytest.raises(Unavailable) as info:
        await exchange.token("sts.amazonaws.com", "aws", None)
    assert info.value.upstream_retry_after == 42 and info.value.retry_after == 42
    assert "per_run limit" in info.value.message
