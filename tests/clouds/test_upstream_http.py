"""The one upstream HTTP helper: bodies sent, failures as `Unavailable`, bounded answers, JSON."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from aiohttp import web

from credsidecar.clouds.upstream_http import MAX_RESPONSE_BYTES, post, request
from credsidecar.errors import Unavailable


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


@pytest.fixture
async def base(aiohttp_server: Any) -> str:
    app = web.Application()
    app.router.add_post("/echo", echo)
    app.router.add_get("/big", big)
    app.router.add_get("/sized", sized)
    app.router.add_get("/html", html)
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
