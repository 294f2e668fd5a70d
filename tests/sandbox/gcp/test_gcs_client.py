"""The unmodified google-cloud-storage client against the storage stand-in.

`API_ENDPOINT_OVERRIDE` points the client at the sandbox and keeps its credentials (client.py
step 3 of "Determine the api endpoint"); `STORAGE_EMULATOR_HOST` would turn a
`storage.Client()` anonymous. The client's blocking calls run off the event loop, where the
sandbox serves them.
"""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any

import google.auth.credentials
import google.auth.exceptions
import google.oauth2.credentials
import pytest
from google.api_core import exceptions
from google.cloud import storage

from credsidecar.sandbox.gcp.runner import GcpSandbox
from credsidecar.sandbox.seed import GCP_AUDIENCE, GCP_PROJECT_ID, REFERENCE_BODY, REFERENCE_KEY
from tests.sandbox.conftest import JWT_TYPE, ServedIssuer
from tests.sandbox.gcp.test_stand_ins import ALICE_SA, sa_token


def alice_session(client: storage.Client) -> dict[str, Any]:
    """What alice's job does with the bucket API; returns what it saw."""
    seen: dict[str, Any] = {"endpoint": client._connection.API_BASE_URL}
    seen["location"] = client.get_bucket("alice-data").location
    client.bucket("alice-data").blob("small.txt").upload_from_string(b"multipart upload")
    big = client.bucket("alice-data").blob("stream.bin")
    big.upload_from_file(io.BytesIO(b"resumable " * 1000))  # no size: a resumable upload
    listed = list(client.list_blobs("alice-data"))
    seen["names"] = [blob.name for blob in listed]
    seen["bodies"] = {blob.name: blob.download_as_bytes() for blob in listed}  # via mediaLink
    reference = client.bucket("shared-refs").get_blob(REFERENCE_KEY)
    seen["reference"] = reference.download_as_bytes()
    seen["reference_size"] = reference.size
    seen["range"] = (
        client.bucket("shared-refs").blob(REFERENCE_KEY).download_as_bytes(start=1, end=5)
    )
    top_level = client.list_blobs("shared-refs", delimiter="/")
    seen["top_level"] = [blob.name for blob in top_level]
    seen["prefixes"] = top_level.prefixes
    with pytest.raises(exceptions.Forbidden) as denied:
        list(client.list_blobs("bob-data"))
    seen["list_bob"] = denied.value.message
    with pytest.raises(exceptions.Forbidden) as denied:
        client.bucket("shared-refs").blob("x").upload_from_string(b"x")
    seen["write_refs"] = denied.value.message
    client.bucket("alice-data").blob("small.txt").delete()
    seen["after_delete"] = [blob.name for blob in client.list_blobs("alice-data")]
    return seen


async def test_client_with_api_endpoint_override_uses_the_sandbox_and_its_credentials(
    gcp: GcpSandbox, issuer: ServedIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = await sa_token(gcp, issuer, "alice", ALICE_SA)
    monkeypatch.setenv("API_ENDPOINT_OVERRIDE", gcp.storage_url)

    def run() -> dict[str, Any]:
        credentials = google.oauth2.credentials.Credentials(token)
        return alice_session(storage.Client(project=GCP_PROJECT_ID, credentials=credentials))

    seen = await asyncio.to_thread(run)
    assert seen["endpoint"] == gcp.storage_url and seen["location"] == "US"
    assert seen["names"] == ["small.txt", "stream.bin"]
    assert seen["bodies"] == {"small.txt": b"multipart upload", "stream.bin": b"resumable " * 1000}
    assert seen["reference"] == REFERENCE_BODY and seen["reference_size"] == len(REFERENCE_BODY)
    assert seen["range"] == REFERENCE_BODY[1:6]
    assert seen["top_level"] == [] and seen["prefixes"] == {"refs/"}
    assert f"{ALICE_SA} does not have storage.objects.list access" in seen["list_bob"]
    assert f"{ALICE_SA} does not have storage.objects.create access" in seen["write_refs"]
    assert seen["after_delete"] == ["stream.bin"]


async def test_storage_emulator_host_makes_a_default_client_anonymous(
    gcp: GcpSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcp.storage_url)

    def run() -> None:
        client = storage.Client(project=GCP_PROJECT_ID)  # would call google.auth.default()
        assert isinstance(client._credentials, google.auth.credentials.AnonymousCredentials)
        # The sandbox answers 401 to a request without credentials; the client's session then
        # tries to refresh them (its answer to any 401), which anonymous credentials cannot.
        with pytest.raises(google.auth.exceptions.InvalidOperation, match="cannot be refreshed"):
            list(client.list_blobs("alice-data"))

    await asyncio.to_thread(run)


async def test_google_auth_default_federates_through_the_sandbox_sts_and_iam(
    gcp: GcpSandbox, issuer: ServedIssuer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """google-auth's own external_account flow (STS, then generateAccessToken) is accepted."""
    token_file, config = tmp_path / "gcp-token", tmp_path / "credentials.json"
    impersonation = f"{gcp.iam_url}/v1/projects/-/serviceAccounts/{ALICE_SA}:generateAccessToken"
    document = {
        "type": "external_account",
        "audience": GCP_AUDIENCE,
        "subject_token_type": JWT_TYPE,
        "token_url": gcp.sts_url,
        "service_account_impersonation_url": impersonation,
        "credential_source": {"file": str(token_file)},
    }
    await asyncio.to_thread(token_file.write_text, await issuer.cloud_token("alice"))
    await asyncio.to_thread(config.write_text, json.dumps(document))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(config))
    monkeypatch.setenv("API_ENDPOINT_OVERRIDE", gcp.storage_url)
    # Without a project in the environment, google.auth.default() asks the real Cloud Resource
    # Manager for the project of the pool's project number.
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", GCP_PROJECT_ID)
    # google-auth would otherwise look up the regional access boundary of the credentials at
    # the real iamcredentials.googleapis.com in a background thread; tests stay offline.
    monkeypatch.setattr(
        google.auth.credentials.CredentialsWithRegionalAccessBoundary,
        "_is_regional_access_boundary_lookup_required",
        lambda self: False,
    )

    def run() -> bytes:
        client = storage.Client(project=GCP_PROJECT_ID)
        return bytes(client.bucket("shared-refs").blob(REFERENCE_KEY).download_as_bytes())

    assert await asyncio.to_thread(run) == REFERENCE_BODY
    # Each refresh is an STS exchange followed by generateAccessToken. The client may refresh
    # twice at first, from two threads (its bucket metadata cache fetches in the background),
    # which google-auth does not serialise: the second may still be between its two calls when
    # the download returns (STS 2, IAM 1), or find the first's STS token still valid and only
    # impersonate again (STS 1, IAM 2). Never more than the two refreshes.
    calls = gcp.state.calls
    assert 1 <= calls["sts.token"] <= 2 and 1 <= calls["iam.generateAccessToken"] <= 2
