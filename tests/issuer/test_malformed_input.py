"""Malformed bodies and credentials at the issuer: each a clear JSON 400 (401 for a key), never a
500 with a traceback."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from credsidecar.issuer.app import create_app
from credsidecar.issuer.hpc_service import USER_KEY_PREFIX
from tests.issuer.conftest import IssuerFixture
from tests.support import raw_http

FORM = "application/x-www-form-urlencoded"
EXCHANGE = b"grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange"


@pytest.fixture
async def client(aiohttp_client: Any, issuer: IssuerFixture) -> TestClient:
    return await aiohttp_client(create_app(issuer.service))


async def assert_invalid_request(resp: Any, *fragments: str) -> None:
    assert resp.status == 400, await resp.text()
    body = await resp.json()
    assert body["error"] == "invalid_request"
    for fragment in fragments:
        assert fragment in body["error_description"]


@pytest.mark.parametrize(
    ("body", "content_type", "fragment"),
    [
        (EXCHANGE + b"&audience=\xff\xfe", FORM, "invalid UTF-8"),
        (EXCHANGE + b"&audience=%ff%fe", FORM, "invalid UTF-8"),
        (EXCHANGE, f"{FORM}; charset=x-no-such-charset", "charset"),
        (EXCHANGE, f"{FORM}; charset=utf-16", "charset"),
        (EXCHANGE, "multipart/form-data; boundary=x", "must be application/x-www-form-urlencoded"),
        (b"&".join([b"a=1"] * 100), FORM, "more than"),
    ],
    ids=["raw-bytes", "percent-escapes", "unknown-charset", "utf-16", "multipart", "100-fields"],
)
async def test_a_token_exchange_form_that_is_not_utf8_form_data_is_a_clear_400(
    client: TestClient, body: bytes, content_type: str, fragment: str
) -> None:
    resp = await client.post("/v1/token", data=body, headers={"Content-Type": content_type})
    await assert_invalid_request(resp, fragment)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"[" * 30_000 + b"]" * 30_000, "nests"),
        (b'{"user": "alice", "lifetime": ' + b"9" * 5000 + b"}", "5000-digit"),
        (b'{"user": "alice", "run": "\xff"}', "invalid UTF-8"),
        (b'{"user": "alice", "lifetime": NaN}', "NaN"),
        (b'{"user": "alice", "lifetime": -Infinity}', "-Infinity"),
    ],
    ids=["30000-nested-arrays", "5000-digit-integer", "invalid-utf8", "nan", "infinity"],
)
async def test_a_json_body_that_cannot_be_parsed_safely_is_a_clear_400(
    client: TestClient, issuer: IssuerFixture, body: bytes, fragment: str
) -> None:
    for path in ("/v1/launch-tokens", "/v1/token", "/v1/runs/r1/revoke"):
        resp = await client.post(
            path, data=body, headers={**issuer.auth, "Content-Type": "application/json"}
        )
        await assert_invalid_request(resp, fragment)


@pytest.mark.parametrize(
    ("path", "key"),
    [
        (b"/v1/runs/r1/revoke", b"\xff\xfe-not-utf8"),
        (b"/v1/runs/r1/revoke", "ключ".encode()),
        (b"/v1/hpc/clusters", USER_KEY_PREFIX.encode() + b"\xff\xfe"),
        (b"/v1/hpc/clusters", USER_KEY_PREFIX.encode() + "ключ".encode()),
    ],
    ids=["platform-invalid-utf8", "platform-non-ascii", "member-invalid-utf8", "member-non-ascii"],
)
async def test_a_bearer_key_that_is_not_ascii_is_a_401(
    client: TestClient, path: bytes, key: bytes
) -> None:
    """Undecodable header bytes reach us as surrogates, which hashing the key raised on."""
    assert client.port is not None
    method = b"POST" if path.endswith(b"revoke") else b"GET"
    resp = await raw_http.request(client.port, method, path, b"Authorization: Bearer " + key)
    assert resp.status == 401, resp.body
    assert b'"error": "unauthorized"' in resp.body
