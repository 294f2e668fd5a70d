"""Unmodified Azure clients against the sandbox over HTTPS, trusting its CA through the
variables `job_env()` names: azure-identity's ClientAssertionCredential with the authority
overridden, azure-storage-blob's BlobServiceClient on the path-style account URL, MSAL, and
Node. The SDKs are synchronous, so their calls run off the event loop, where the sandbox
serves them."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Iterator
from typing import Any

import msal
import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
)
from azure.identity import ClientAssertionCredential
from azure.storage.blob import BlobServiceClient

from credsidecar.sandbox.azure.runner import AzureSandbox, start_azure_sandbox
from credsidecar.sandbox.seed import AZURE_TENANT_ID, REFERENCE_BODY, REFERENCE_KEY
from tests.sandbox.azure.test_entra import IDENTITY, assertion, entra_form
from tests.sandbox.conftest import ServedIssuer, ShiftedClock

STORAGE_SCOPE = "https://storage.azure.com/.default"


@pytest.fixture
def trust_sandbox(azure: AzureSandbox, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The job's environment: the variables that make tools trust the sandbox CA."""
    for name, value in azure.job_env().items():
        monkeypatch.setenv(name, value)
    yield


def alice_session(service: BlobServiceClient) -> dict[str, Any]:
    """What alice's job does with her storage; returns what it saw."""
    seen: dict[str, Any] = {"account": service.account_name, "url": service.url}
    mine = service.get_container_client("alice-data")
    seen["exists"] = mine.exists()
    mine.upload_blob("out/small.txt", b"single shot")
    with pytest.raises(ResourceExistsError):
        mine.upload_blob("out/small.txt", b"again")  # overwrite=False: If-None-Match: *
    mine.upload_blob("out/small.txt", b"single shot, replaced", overwrite=True)
    mine.upload_blob("out/blocks.bin", b"0123456789" * 3000, max_concurrency=1)  # > 8 KiB
    seen["names"] = [b.name for b in mine.list_blobs()]
    seen["small"] = mine.download_blob("out/small.txt").readall()
    seen["blocks"] = mine.download_blob("out/blocks.bin").readall()
    seen["size"] = mine.get_blob_client("out/blocks.bin").get_blob_properties().size
    refs = service.get_container_client("shared-refs")
    seen["reference"] = refs.download_blob(REFERENCE_KEY).readall()
    seen["walk"] = [b.name for b in refs.walk_blobs(delimiter="/")]
    for name, action in (
        ("list_bob", lambda: list(service.get_container_client("bob-data").list_blobs())),
        ("write_refs", lambda: refs.upload_blob("x.txt", b"x")),
    ):
        with pytest.raises(HttpResponseError) as denied:
            action()
        seen[name] = (denied.value.status_code, denied.value.error_code)
    mine.delete_blob("out/small.txt")
    with pytest.raises(ResourceNotFoundError):
        mine.download_blob("out/small.txt").readall()
    return seen


@pytest.mark.usefixtures("trust_sandbox")
async def test_azure_identity_and_storage_blob_reach_alices_container_and_not_bobs(
    azure: AzureSandbox, issuer: ServedIssuer
) -> None:
    client_assertion = await assertion(issuer, "alice")

    def run() -> dict[str, Any]:
        credential = ClientAssertionCredential(
            AZURE_TENANT_ID,
            IDENTITY["alice"].client_id,
            lambda: client_assertion,
            authority=azure.authority_url,
        )
        # Small single-shot and block sizes, so that the upload above 8 KiB uses blocks.
        service = BlobServiceClient(
            azure.blob_url, credential, max_single_put_size=8 * 1024, max_block_size=4 * 1024
        )
        return alice_session(service)

    seen = await asyncio.to_thread(run)
    assert seen["account"] == "sandbox" and seen["url"] == f"{azure.blob_url}/"
    assert seen["exists"] is True
    assert seen["names"] == ["out/blocks.bin", "out/small.txt"]
    assert seen["small"] == b"single shot, replaced"
    assert seen["blocks"] == b"0123456789" * 3000 and seen["size"] == 30000
    assert seen["reference"] == REFERENCE_BODY and seen["walk"] == ["refs/"]
    assert seen["list_bob"] == (403, "AuthorizationPermissionMismatch")
    assert seen["write_refs"] == (403, "AuthorizationPermissionMismatch")
    assert azure.state.calls["entra.token"] == 1  # azure-identity caches the token


@pytest.mark.usefixtures("trust_sandbox")
async def test_azure_identity_reports_entra_refusing_alices_assertion_for_bob(
    azure: AzureSandbox, issuer: ServedIssuer
) -> None:
    client_assertion = await assertion(issuer, "alice")

    def run() -> str:
        credential = ClientAssertionCredential(
            AZURE_TENANT_ID,
            IDENTITY["bob"].client_id,
            lambda: client_assertion,
            authority=azure.authority_url,
        )
        with pytest.raises(ClientAuthenticationError) as refused:
            credential.get_token(STORAGE_SCOPE)
        return str(refused.value.message)

    message = await asyncio.to_thread(run)
    assert message.startswith("Microsoft Entra ID error '(invalid_client) AADSTS70021:")
    assert "Assertion Subject: 'credsidecar:azure:alice'" in message


class HandOut:
    """A token credential that hands out given tokens in turn, each claiming a long life."""

    def __init__(self, *tokens: str) -> None:
        self.tokens, self.asked = list(tokens), list[tuple[tuple[str, ...], Any]]()

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.asked.append((scopes, kwargs.get("tenant_id")))
        return AccessToken(self.tokens.pop(0), int(time.time()) + 3600)


async def test_storage_blob_follows_the_401_challenge_to_a_new_token(
    issuer: ServedIssuer, sandbox_clock: ShiftedClock, tmp_path: Any
) -> None:
    """azure-core's storage policy parses the challenge and asks again for that tenant."""
    azure = await start_azure_sandbox(
        issuer.url, tmp_path / "azure", clock=sandbox_clock, token_lifetime=60
    )
    try:
        tokens = []
        for _ in range(2):
            form = entra_form(IDENTITY["alice"].client_id, await assertion(issuer, "alice"))
            async with issuer.http.post(
                azure.token_url, data=form, ssl=await asyncio.to_thread(azure.ca.client_context)
            ) as resp:
                tokens.append((await resp.json())["access_token"])
            sandbox_clock.advance(61)  # the first token has now expired, at the sandbox
        sandbox_clock.advance(-61)
        credential = HandOut(*tokens)

        def run() -> list[str]:
            service = BlobServiceClient(azure.blob_url, credential, connection_verify=azure.ca_file)
            return [b.name for b in service.get_container_client("shared-refs").list_blobs()]

        assert await asyncio.to_thread(run) == [REFERENCE_KEY]
        assert credential.asked == [((STORAGE_SCOPE,), None), ((STORAGE_SCOPE,), AZURE_TENANT_ID)]
    finally:
        await azure.stop()


@pytest.mark.usefixtures("trust_sandbox")
async def test_msal_reads_the_discovery_documents_and_gets_a_token(
    azure: AzureSandbox, issuer: ServedIssuer
) -> None:
    """MSAL (behind the az CLI) validates the authority, reads the v2.0 discovery document and
    posts to the token endpoint it names."""
    client_assertion = await assertion(issuer, "bob")

    def run() -> dict[str, Any]:
        app = msal.ConfidentialClientApplication(
            IDENTITY["bob"].client_id,
            client_credential={"client_assertion": lambda: client_assertion},
            authority=f"{azure.authority_url}/{AZURE_TENANT_ID}",
            # By default MSAL asks login.microsoftonline.com about any other authority host.
            instance_discovery=f"{azure.authority_url}/common/discovery/instance",
        )
        result: dict[str, Any] = app.acquire_token_for_client([STORAGE_SCOPE])
        return result

    result = await asyncio.to_thread(run)
    assert result.get("token_type") == "Bearer", result
    assert result["access_token"].count(".") == 2


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
async def test_node_trusts_the_sandbox_through_node_extra_ca_certs(azure: AzureSandbox) -> None:
    script = """
const https = require("https");
https.get(process.argv[1], (res) => {
  console.log(JSON.stringify({status: res.statusCode, challenge: res.headers["www-authenticate"]}));
  process.exit(0);  // without waiting for the keep-alive connection to close
}).on("error", (e) => { console.log(JSON.stringify({error: e.code})); process.exit(0); });
"""
    url = f"{azure.blob_url}/alice-data?restype=container&comp=list"
    outputs = {}
    for trusted in (True, False):
        env = {"NODE_EXTRA_CA_CERTS": azure.ca_file} if trusted else {}
        node = await asyncio.create_subprocess_exec(
            str(shutil.which("node")), "-e", script, url, env=env, stdout=asyncio.subprocess.PIPE
        )
        stdout, _ = await asyncio.wait_for(node.communicate(), timeout=60)
        outputs[trusted] = json.loads(stdout)
    assert outputs[True]["status"] == 401
    assert outputs[True]["challenge"].startswith("Bearer authorization_uri=")
    assert outputs[False] == {"error": "UNABLE_TO_VERIFY_LEAF_SIGNATURE"}
