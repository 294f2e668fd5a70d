"""One function maps every failure to the issuer's answer, for its API and its HPC API alike."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncssh
import pytest

from credsidecar.errors import (
    CredsidecarError,
    Forbidden,
    HpcApiError,
    InvalidGrant,
    Unauthorized,
    Unavailable,
)
from credsidecar.issuer.app import create_app
from credsidecar.issuer.http_common import error_response
from tests.issuer.conftest import IssuerFixture


def _body(response: Any) -> dict[str, str]:
    return dict(json.loads(response.body))


def test_an_error_answers_with_its_status_and_oauth_body_never_cached() -> None:
    response = error_response(InvalidGrant("the launch token expired"))
    assert response.status == 400
    assert _body(response) == {
        "error": "invalid_grant",
        "error_description": "the launch token expired",
    }
    assert response.headers["Cache-Control"] == "no-store"
    assert "WWW-Authenticate" not in response.headers and "Retry-After" not in response.headers


def test_a_401_names_the_bearer_realm() -> None:
    response = error_response(Unauthorized("the member API key is not valid"))
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="credsidecar-issuer"'


def test_a_retryable_error_says_when_to_retry() -> None:
    assert error_response(Unavailable("busy", retry_after=60)).headers["Retry-After"] == "60"
    assert error_response(HpcApiError("issuer down", 502)).headers["Retry-After"] == "5"
    assert "Retry-After" not in error_response(Forbidden("no")).headers


def test_an_unexpected_failure_is_a_500_server_error() -> None:
    response = error_response(CredsidecarError("internal error; see issuer log"))
    assert response.status == 500 and _body(response)["error"] == "server_error"


@pytest.mark.parametrize(
    ("status", "retryable"), [(500, True), (503, True), (429, True), (408, True),
                              (400, False), (401, False), (403, False), (404, False)],
)  # fmt: skip
def test_an_hpc_api_error_keeps_the_issuers_status_and_is_retryable_when_it_may_pass(
    status: int, retryable: bool
) -> None:
    error = HpcApiError(f"issuer refused GET /v1/hpc/status (HTTP {status}): why", status)
    assert isinstance(error, CredsidecarError)
    assert (error.status, error.retryable) == (status, retryable)


async def test_the_hpc_api_answers_503_with_retry_after_when_stored_keys_cannot_be_sealed(
    aiohttp_client: Any, issuer: IssuerFixture
) -> None:
    """An issuer without a key-encryption key still starts; a stored-key upload then gets a
    retryable 503 that says when to retry, through the same mapping as every other error."""
    hpc = issuer.service.hpc
    owner = await asyncio.to_thread(hpc.new_member_key, "carol", "t")
    alice = await asyncio.to_thread(hpc.new_member_key, "alice", "t")
    client = await aiohttp_client(create_app(issuer.service))
    host_key = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    cluster = {"name": "hpc2", "host": "127.0.0.1", "host_keys": [host_key], "mode": "stored-key"}
    resp = await client.post("/v1/hpc/clusters", json=cluster,
                             headers={"Authorization": f"Bearer {owner}"})  # fmt: skip
    assert resp.status == 201, await resp.text()
    private = asyncssh.generate_private_key("ssh-ed25519").export_private_key().decode()
    resp = await client.put(
        "/v1/hpc/clusters/hpc2/credential",
        json={"username": "csalice", "private_key": private},
        headers={"Authorization": f"Bearer {alice}"},
    )
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "60"
    assert "key_encryption_key_file" in (await resp.json())["error_description"]
