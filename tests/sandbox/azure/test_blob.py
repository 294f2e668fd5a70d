"""The Blob stand-in over HTTPS with Entra tokens from the sandbox: each identity's roles on
each container decide, and refusals look like Azure Storage's."""

from __future__ import annotations

import asyncio
import ssl
import stat
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict

from credsidecar.sandbox.azure.runner import AzureSandbox
from credsidecar.sandbox.seed import AZURE_TENANT_ID, REFERENCE_BODY, REFERENCE_KEY
from tests.sandbox.azure.test_entra import access_token
from tests.sandbox.conftest import ServedIssuer, ShiftedClock

VERSION = {"x-ms-version": "2025-01-05"}


async def blob_call(
    https: aiohttp.ClientSession, method: str, url: str, token: str | None = None, **kwargs: Any
) -> tuple[int, CIMultiDict[str], bytes]:
    headers = {**VERSION, **kwargs.pop("headers", {})}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with https.request(method, url, headers=headers, **kwargs) as resp:
        return resp.status, CIMultiDict(resp.headers), await resp.read()


def listing(azure: AzureSandbox, container: str, **query: str) -> str:
    extra = "".join(f"&{k}={v}" for k, v in query.items())
    return f"{azure.blob_url}/{container}?restype=container&comp=list{extra}"


def put_headers(**extra: str) -> dict[str, str]:
    return {"x-ms-blob-type": "BlockBlob", **extra}


def assert_denied(status: int, headers: CIMultiDict[str], body: bytes) -> None:
    assert status == 403, body
    assert headers["x-ms-error-code"] == "AuthorizationPermissionMismatch"
    assert body.startswith(b'<?xml version="1.0" encoding="utf-8"?><Error>')
    assert b"<Code>AuthorizationPermissionMismatch</Code>" in body
    assert (
        b"This request is not authorized to perform this operation using this permission." in body
    )


async def test_alice_writes_and_lists_her_container_and_reads_the_shared_refs(
    azure: AzureSandbox, issuer: ServedIssuer, https: aiohttp.ClientSession
) -> None:
    token = await access_token(azure, issuer, https, "alice")
    status, _, body = await blob_call(https, "GET", listing(azure, "alice-data"), token)
    assert status == 200 and b"<Blobs></Blobs>" in body
    url = f"{azure.blob_url}/alice-data/out/result.txt"
    status, headers, _ = await blob_call(
        https, "PUT", url, token, data=b"hello", headers=put_headers(**{"x-ms-meta-run": "r1"})
    )
    assert status == 201 and headers["ETag"].startswith('"0x')
    assert headers["Content-MD5"] == "XUFAKrxLKna5cZ2REBfFkg=="
    status, _, body = await blob_call(https, "GET", listing(azure, "alice-data"), token)
    assert b"<Name>out/result.txt</Name>" in body and b"<Content-Length>5</Content-Length>" in body
    status, headers, body = await blob_call(https, "GET", url, token)
    assert (status, body) == (200, b"hello")
    assert headers["x-ms-blob-type"] == "BlockBlob" and headers["x-ms-meta-run"] == "r1"
    status, headers, body = await blob_call(
        https, "GET", url, token, headers={"x-ms-range": "bytes=1-3"}
    )
    assert (status, body, headers["Content-Range"]) == (206, b"ell", "bytes 1-3/5")
    status, _, body = await blob_call(
        https, "GET", f"{azure.blob_url}/shared-refs/{REFERENCE_KEY}", token
    )
    assert (status, body) == (200, REFERENCE_BODY)
    status, _, body = await blob_call(
        https, "GET", listing(azure, "shared-refs", delimiter="/"), token
    )
    assert b"<BlobPrefix><Name>refs/</Name></BlobPrefix>" in body and b"<Blob>" not in body


async def test_alice_is_refused_bobs_container_and_writes_to_the_shared_refs(
    azure: AzureSandbox, issuer: ServedIssuer, https: aiohttp.ClientSession
) -> None:
    token = await access_token(azure, issuer, https, "alice")
    assert_denied(*await blob_call(https, "GET", listing(azure, "bob-data"), token))
    assert_denied(*await blob_call(https, "GET", f"{azure.blob_url}/bob-data/x", token))
    assert_denied(
        *await blob_call(
            https, "PUT", f"{azure.blob_url}/shared-refs/x", token, data=b"x", headers=put_headers()
        )
    )
    assert_denied(
        *await blob_call(https, "DELETE", f"{azure.blob_url}/shared-refs/{REFERENCE_KEY}", token)
    )
    status, headers, _ = await blob_call(https, "GET", listing(azure, "no-such"), token)
    assert status == 404 and headers["x-ms-error-code"] == "ContainerNotFound"


async def test_bob_and_the_workspace_identity_get_their_own_permissions(
    azure: AzureSandbox, issuer: ServedIssuer, https: aiohttp.ClientSession
) -> None:
    bob = await access_token(azure, issuer, https, "bob")
    url = f"{azure.blob_url}/bob-data/b.txt"
    assert (await blob_call(https, "PUT", url, bob, data=b"b", headers=put_headers()))[0] == 201
    assert_denied(*await blob_call(https, "GET", listing(azure, "alice-data"), bob))
    shared = await access_token(azure, issuer, https, "alice", identity="genomics-pipelines")
    assert (await blob_call(https, "GET", listing(azure, "shared-refs"), shared))[0] == 200
    assert_denied(*await blob_call(https, "GET", listing(azure, "alice-data"), shared))


async def test_missing_expired_and_misdirected_tokens_are_401_with_the_bearer_challenge(
    azure: AzureSandbox,
    issuer: ServedIssuer,
    https: aiohttp.ClientSession,
    sandbox_clock: ShiftedClock,
) -> None:
    url = listing(azure, "alice-data")
    challenge = (
        f"Bearer authorization_uri={azure.authority_url}/{AZURE_TENANT_ID}/oauth2/authorize "
        "resource_id=https://storage.azure.com"
    )
    status, headers, body = await blob_call(https, "GET", url)
    assert status == 401 and headers["x-ms-error-code"] == "NoAuthenticationInformation"
    assert headers["WWW-Authenticate"] == challenge
    arm = await access_token(azure, issuer, https, "alice", resource="https://management.azure.com")
    status, headers, body = await blob_call(https, "GET", url, arm)
    assert status == 401 and headers["x-ms-error-code"] == "InvalidAuthenticationInfo"
    assert b"<AuthenticationErrorDetail>Audience validation failed." in body
    status, headers, _ = await blob_call(
        https, "GET", url, headers={"Authorization": "SharedKey a:b"}
    )
    assert status == 403 and headers["x-ms-error-code"] == "AuthenticationFailed"
    token = await access_token(azure, issuer, https, "alice")
    assert (await blob_call(https, "GET", url, token))[0] == 200
    sandbox_clock.advance(3600)
    status, headers, body = await blob_call(https, "GET", url, token)
    assert status == 401 and headers["WWW-Authenticate"] == challenge
    assert b"Lifetime validation failed. The token is expired." in body


async def test_block_uploads_conditions_and_deletes(
    azure: AzureSandbox, issuer: ServedIssuer, https: aiohttp.ClientSession
) -> None:
    token = await access_token(azure, issuer, https, "alice")
    url = f"{azure.blob_url}/alice-data/big.bin"
    for block_id, data in (("QQ==", b"one-"), ("Qg==", b"two")):
        status, _, _ = await blob_call(
            https, "PUT", f"{url}?comp=block&blockid={block_id}", token, data=data
        )
        assert status == 201
    block_list = (
        b"<?xml version='1.0'?><BlockList><Latest>QQ==</Latest><Latest>Qg==</Latest></BlockList>"
    )
    assert (await blob_call(https, "PUT", f"{url}?comp=blocklist", token, data=block_list))[
        0
    ] == 201
    assert (await blob_call(https, "GET", url, token))[2] == b"one-two"
    status, headers, _ = await blob_call(
        https, "PUT", url, token, data=b"x", headers=put_headers(**{"If-None-Match": "*"})
    )
    assert status == 409 and headers["x-ms-error-code"] == "BlobAlreadyExists"
    status, headers, _ = await blob_call(https, "GET", url, token, headers={"If-Match": '"0x1"'})
    assert status == 412 and headers["x-ms-error-code"] == "ConditionNotMet"
    assert (await blob_call(https, "DELETE", url, token))[0] == 202
    status, headers, _ = await blob_call(https, "GET", url, token)
    assert status == 404 and headers["x-ms-error-code"] == "BlobNotFound"
    status, headers, _ = await blob_call(https, "PUT", f"{url}?comp=appendblock", token, data=b"x")
    assert status == 501


async def test_the_sandbox_speaks_https_with_a_ca_made_at_start(
    azure: AzureSandbox, tmp_path: Path
) -> None:
    assert azure.authority_url.startswith("https://127.0.0.1:")
    assert azure.blob_url.startswith("https://127.0.0.1:") and azure.blob_url.endswith("/sandbox")
    ca = Path(azure.ca_file)
    assert ca.parent == tmp_path / "azure"
    mode = (await asyncio.to_thread(azure.ca.key_file.stat)).st_mode
    assert stat.S_IMODE(mode) == 0o600
    ca_text = await asyncio.to_thread(ca.read_text)
    bundle = await asyncio.to_thread(Path(azure.ca_bundle).read_text)
    assert ca_text.count("BEGIN CERTIFICATE") == 1 and bundle.endswith(ca_text)
    assert bundle.count("BEGIN CERTIFICATE") > 1  # the machine's roots come first
    assert azure.job_env() == {
        "SSL_CERT_FILE": azure.ca_bundle,
        "REQUESTS_CA_BUNDLE": azure.ca_bundle,
        "CURL_CA_BUNDLE": azure.ca_bundle,
        "NODE_EXTRA_CA_CERTS": azure.ca_file,
        "ARM_CLOUD_METADATA_URL": azure.cloud_metadata_url,
    }
    async with aiohttp.ClientSession() as untrusting:  # the default roots only
        with pytest.raises(aiohttp.ClientConnectorCertificateError) as failed:
            await untrusting.get(f"{azure.authority_url}/_sandbox/stats")
    assert isinstance(failed.value.certificate_error, ssl.SSLCertVerificationError)
