"""check_azure against the sandbox Blob service over HTTPS (its own CA), with alice's and bob's
managed-identity tokens from the sandbox Entra: List Blobs for read, a marker Put Blob and
Delete Blob for write, each judged by the identity's role on the container."""

from __future__ import annotations

import aiohttp
import pytest

from credsidecar.preflight.azure import account_url, check_azure
from credsidecar.preflight.model import Access, CloudEndpoints, Outcome
from credsidecar.preflight.probe import MARKER_DIR
from credsidecar.preflight.targets import READ, WORK_DIR, WRITE, parse_target
from credsidecar.sandbox.azure import blob_store
from credsidecar.sandbox.azure.runner import AzureSandbox
from credsidecar.sandbox.seed import REFERENCE_KEY
from tests.preflight.sandbox_access import azure, closed_port, https, issuer, sandbox_clock
from tests.sandbox.azure.test_entra import IDENTITY, access_token
from tests.sandbox.conftest import ServedIssuer

__all__ = ["azure", "closed_port", "https", "issuer", "sandbox_clock"]  # fixtures

ALICE, BOB = IDENTITY["alice"].client_id, IDENTITY["bob"].client_id
ACTION = "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/"


def endpoints(azure: AzureSandbox) -> CloudEndpoints:
    return CloudEndpoints(azure_blob_url=azure.blob_url, ca_file=azure.ca_file)


def markers(azure: AzureSandbox, container: str) -> list[str]:
    return [name for name in azure.blob.containers[container].blobs if MARKER_DIR in name]


async def test_alice_may_read_write_and_delete_in_her_container_and_no_marker_is_left(
    azure: AzureSandbox, issuer: ServedIssuer, https: aiohttp.ClientSession
) -> None:
    token = await access_token(azure, issuer, https, "alice")
    for uri in ("az://sandbox/alice-data/runs/r1/",
                "https://sandbox.blob.core.windows.net/alice-data/runs/r2"):  # fmt: skip
        verdict = await check_azure(parse_target(uri, WORK_DIR), token, ALICE, endpoints(azure))
        assert verdict.outcome is Outcome.OK, verdict
        assert verdict.detail == "nothing is stored under this prefix yet"
    assert markers(azure, "alice-data") == []


async def test_reading_the_shared_references_finds_the_reference(
    azure: AzureSandbox, issuer: ServedIssuer, https: aiohttp.ClientSession
) -> None:
    token = await access_token(azure, issuer, https, "bob")
    target = parse_target(f"az://sandbox/shared-refs/{REFERENCE_KEY}", READ)
    verdict = await check_azure(target, token, BOB, endpoints(azure))
    assert (verdict.outcome, verdict.detail, verdict.identity) == (Outcome.OK, "", BOB)


async def test_bob_is_denied_reading_alice_container_with_the_data_action(
    azure: AzureSandbox, issuer: ServedIssuer, https: aiohttp.ClientSession
) -> None:
    token = await access_token(azure, issuer, https, "bob")
    verdict = await check_azure(parse_target("az://sandbox/alice-data/in", READ), token, BOB,
                                endpoints(azure))  # fmt: skip
    assert (verdict.outcome, verdict.missing) == (Outcome.DENIED, (ACTION + "read",))
    assert verdict.detail == (
        "List Blobs: HTTP 403 AuthorizationPermissionMismatch: This request is not authorized "
        "to perform this operation using this permission."
    )


async def test_writing_the_read_only_references_is_denied_blob_write(
    azure: AzureSandbox, issuer: ServedIssuer, https: aiohttp.ClientSession
) -> None:
    token = await access_token(azure, issuer, https, "alice")
    for access in (WRITE, WORK_DIR):
        target = parse_target("az://sandbox/shared-refs/out/", access)
        verdict = await check_azure(target, token, ALICE, endpoints(azure))
        assert (verdict.outcome, verdict.missing) == (Outcome.DENIED, (ACTION + "write",))
        assert verdict.detail.startswith("Put Blob: HTTP 403 AuthorizationPermissionMismatch")
    assert markers(azure, "shared-refs") == []


async def test_without_the_write_probe_write_is_unverified_and_nothing_is_written(
    azure: AzureSandbox, issuer: ServedIssuer, https: aiohttp.ClientSession
) -> None:
    token = await access_token(azure, issuer, https, "alice")
    target = parse_target("az://sandbox/shared-refs/out/", WORK_DIR)
    verdict = await check_azure(target, token, ALICE, endpoints(azure), write_probe=False)
    assert verdict.outcome is Outcome.OK
    assert verdict.unverified == (Access.WRITE, Access.DELETE)


async def test_a_marker_that_could_not_be_deleted_is_named_so_it_can_be_removed(
    azure: AzureSandbox,
    issuer: ServedIssuer,
    https: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With a role that may write but not delete: a write-only target passes with a note naming
    the marker left behind; a work dir (delete needed) is denied the delete action."""
    writer = "Writer without delete"
    roles = {**blob_store.ROLE_ACTIONS, writer: frozenset({ACTION + "read", ACTION + "write"})}
    monkeypatch.setattr(blob_store, "ROLE_ACTIONS", roles)
    azure.blob.containers["alice-data"].roles[IDENTITY["alice"].object_id] = writer
    token = await access_token(azure, issuer, https, "alice")
    write = await check_azure(parse_target("az://sandbox/alice-data/out", WRITE), token, ALICE,
                              endpoints(azure))  # fmt: skip
    work = await check_azure(parse_target("az://sandbox/alice-data/work", WORK_DIR), token,
                             ALICE, endpoints(azure))  # fmt: skip
    first, second = sorted(markers(azure, "alice-data"))
    assert write.outcome is Outcome.OK
    assert write.detail.startswith(
        f"the marker {azure.blob_url}/alice-data/{first} was written but not deleted: remove it"
        " (Delete Blob: HTTP 403 AuthorizationPermissionMismatch"
    )
    assert (work.outcome, work.missing) == (Outcome.DENIED, (ACTION + "delete",))
    assert work.detail.startswith("Delete Blob: HTTP 403 AuthorizationPermissionMismatch")
    assert work.detail.endswith(
        f"; the marker {azure.blob_url}/alice-data/{second} was written but not deleted: remove it"
    )
    assert first.startswith(f"out/{MARKER_DIR}/") and second.startswith(f"work/{MARKER_DIR}/")


async def test_a_missing_container_is_not_found(
    azure: AzureSandbox, issuer: ServedIssuer, https: aiohttp.ClientSession
) -> None:
    token = await access_token(azure, issuer, https, "alice")
    verdict = await check_azure(parse_target("az://sandbox/no-such-container/x", READ), token,
                                ALICE, endpoints(azure))  # fmt: skip
    assert verdict.outcome is Outcome.NOT_FOUND
    assert verdict.detail.startswith("List Blobs: HTTP 404 ContainerNotFound")


async def test_an_account_the_configured_url_does_not_serve_is_not_checked(
    azure: AzureSandbox,
) -> None:
    """--azure-blob-url serves one account: another account's path cannot be checked there
    (not reachable, exit 2), which is not the same as it not existing."""
    verdict = await check_azure(parse_target("az://otheraccount/alice-data/x", READ), "t",
                                ALICE, endpoints(azure))  # fmt: skip
    assert verdict.outcome is Outcome.UNREACHABLE
    assert verdict.detail == (
        f"storage account 'otheraccount' cannot be checked through {azure.blob_url}, which "
        "serves account 'sandbox' only"
    )
    assert azure.state.calls.get("blob.list") is None
    assert account_url("acct1", CloudEndpoints()) == ("https://acct1.blob.core.windows.net", None)


async def test_an_invalid_token_is_credentials_unavailable_and_not_echoed(
    azure: AzureSandbox,
) -> None:
    token = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.not-signed"
    verdict = await check_azure(parse_target("az://sandbox/alice-data/x", READ), token, ALICE,
                                endpoints(azure))  # fmt: skip
    assert verdict.outcome is Outcome.NO_CREDENTIALS
    assert verdict.detail.startswith("List Blobs: HTTP 401 InvalidAuthenticationInfo")
    assert token not in repr(verdict)


async def test_a_closed_port_is_not_reachable(azure: AzureSandbox, closed_port: int) -> None:
    endpoints = CloudEndpoints(
        azure_blob_url=f"https://127.0.0.1:{closed_port}/sandbox", ca_file=azure.ca_file
    )
    verdict = await check_azure(parse_target("az://sandbox/alice-data/x", READ), "t", ALICE,
                                endpoints)  # fmt: skip
    assert verdict.outcome is Outcome.UNREACHABLE
    assert verdict.detail.startswith("Azure Blob storage: Cannot connect to host 127.0.0.1:")
