"""The GCP subject-token route of `--secret-only` and the external-account file it backs."""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from credsidecar.audit import AuditLog
from credsidecar.cache import CredentialCache
from credsidecar.endpoints.gcp_external import (
    SUBJECT_TOKEN_PATH,
    GcpSubjectTokenEndpoint,
    SubjectToken,
    external_account_config,
    jwt_expiry,
)
from credsidecar.endpoints.guards import Guard, RefusalLog, allowed_hosts
from credsidecar.errors import Forbidden
from tests.support.ports import held_port

SECRET = "gcp-subject-secret-for-tests"


class Supplier:
    def __init__(self) -> None:
        self.error: Exception | None = None

    async def fetch(self) -> SubjectToken:
        if self.error is not None:
            raise self.error
        return SubjectToken("header.payload.sig", time.time() + 600)


async def _client(
    aiohttp_client: Callable[..., Any], supplier: Supplier
) -> tuple[TestClient, CredentialCache[SubjectToken], io.StringIO]:
    stream = io.StringIO()
    audit = AuditLog(stream)
    cache: CredentialCache[SubjectToken] = CredentialCache("GCP subject", supplier.fetch)
    port, server_kwargs = held_port()
    guard = Guard(allowed_hosts(port), RefusalLog(audit))
    endpoint = GcpSubjectTokenEndpoint(cache, SECRET, guard, audit, {"user": "alice"}, "//aud")
    app = web.Application()
    app.add_routes(guard.routes(endpoint.routes()))
    client = await aiohttp_client(app, server_kwargs=server_kwargs)
    return client, cache, stream


@pytest.fixture
def supplier() -> Supplier:
    return Supplier()


async def test_subject_token_is_served_with_the_exact_secret(
    aiohttp_client: Callable[..., Any], supplier: Supplier
) -> None:
    client, cache, audit = await _client(aiohttp_client, supplier)
    await cache.refresh()
    resp = await client.get(SUBJECT_TOKEN_PATH, headers={"Authorization": SECRET})
    assert resp.status == 200
    body = await resp.json()
    assert body["subject_token"] == "header.payload.sig" and 0 < body["expires_in"] <= 600
    for headers in ({}, {"Authorization": "wrong"}, {"Authorization": f"Bearer {SECRET}"}):
        resp = await client.get(SUBJECT_TOKEN_PATH, headers=headers)
        assert resp.status == 401
    assert SECRET not in audit.getvalue() and "header.payload.sig" not in audit.getvalue()


async def test_a_refusal_is_a_403_and_nothing_yet_a_503(
    aiohttp_client: Callable[..., Any], supplier: Supplier
) -> None:
    client, cache, _ = await _client(aiohttp_client, supplier)
    resp = await client.get(SUBJECT_TOKEN_PATH, headers={"Authorization": SECRET})
    assert resp.status == 503 and "Retry-After" in resp.headers
    supplier.error = Forbidden("the run 'r1' was revoked")
    with pytest.raises(Forbidden):
        await cache.refresh()
    resp = await client.get(SUBJECT_TOKEN_PATH, headers={"Authorization": SECRET})
    assert resp.status == 403


def test_external_account_file_names_sts_impersonation_and_the_secret_header() -> None:
    config = external_account_config(
        audience="//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/"
        "providers/x",
        subject_token_url=f"http://127.0.0.1:1234{SUBJECT_TOKEN_PATH}",
        secret=SECRET,
        token_url="https://sts.example/v1/token",
        impersonation_url="https://iam.example/v1/projects/-/serviceAccounts/a@b:"
        "generateAccessToken",
        lifetime=1800,
    )
    assert config["type"] == "external_account"
    source = config["credential_source"]
    assert source == {
        "url": f"http://127.0.0.1:1234{SUBJECT_TOKEN_PATH}",
        "headers": {"Authorization": SECRET},
        "format": {"type": "json", "subject_token_field_name": "subject_token"},
    }
    assert config["service_account_impersonation"] == {"token_lifetime_seconds": 1800}
    without = external_account_config(
        audience="a", subject_token_url="u", secret="s", token_url="t", impersonation_url=None,
        lifetime=1,
    )  # fmt: skip
    assert "service_account_impersonation_url" not in without


def test_google_auth_accepts_the_file_with_non_google_urls() -> None:
    from google.auth import identity_pool

    config = external_account_config(
        audience="//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/"
        "providers/x",
        subject_token_url=f"http://127.0.0.1:1234{SUBJECT_TOKEN_PATH}",
        secret=SECRET,
        token_url="http://127.0.0.1:9/v1/token",
        impersonation_url="http://127.0.0.1:9/v1/projects/-/serviceAccounts/a@b:"
        "generateAccessToken",
        lifetime=1800,
    )
    credentials = identity_pool.Credentials.from_info(config)
    assert credentials.service_account_email == "a@b"


def test_jwt_expiry_reads_exp_and_falls_back_for_anything_else() -> None:
    payload = base64.urlsafe_b64encode(json.dumps({"exp": 1234}).encode()).rstrip(b"=").decode()
    assert jwt_expiry(f"h.{payload}.s", now=100.0) == 1234.0
    for token in ("opaque", "h.!!.s", f"h.{payload[:-2]}.s", "h.e30.s"):
        assert jwt_expiry(token, now=100.0) == 400.0
