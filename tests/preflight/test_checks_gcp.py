"""check_gcp against the sandbox's Cloud Storage, with alice's and bob's service-account tokens
from the sandbox STS and IAM Credentials: one testIamPermissions call, exactly the permissions
the access needs, and nothing written."""

from __future__ import annotations

import aiohttp

from credsidecar.preflight.gcp import check_gcp, permissions_for
from credsidecar.preflight.model import Access, CloudEndpoints, Outcome
from credsidecar.preflight.targets import READ, WORK_DIR, WRITE, parse_target
from credsidecar.sandbox.gcp.runner import GcpSandbox
from tests.preflight.sandbox_access import closed_port, gcp, http, issuer, sandbox_clock
from tests.sandbox.conftest import ServedIssuer
from tests.sandbox.gcp.test_stand_ins import ALICE_SA, BOB_SA, sa_token

__all__ = ["closed_port", "gcp", "http", "issuer", "sandbox_clock"]  # fixtures


def endpoints(gcp: GcpSandbox) -> CloudEndpoints:
    return CloudEndpoints(gcs_url=gcp.storage_url)


def test_each_access_asks_exactly_its_permissions() -> None:
    assert permissions_for(READ) == ("storage.objects.list", "storage.objects.get")
    assert permissions_for(WRITE) == ("storage.objects.create",)
    assert permissions_for(WORK_DIR) == (
        "storage.objects.list", "storage.objects.get", "storage.objects.create",
        "storage.objects.delete",
    )  # fmt: skip
    assert permissions_for(frozenset({Access.DELETE})) == ("storage.objects.delete",)


async def test_alice_holds_every_permission_a_work_dir_needs_on_her_bucket(
    gcp: GcpSandbox, issuer: ServedIssuer
) -> None:
    token = await sa_token(gcp, issuer, "alice", ALICE_SA)
    verdict = await check_gcp(parse_target("gs://alice-data/work", WORK_DIR), token, ALICE_SA,
                              endpoints(gcp))  # fmt: skip
    assert (verdict.outcome, verdict.missing, verdict.identity) == (Outcome.OK, (), ALICE_SA)


async def test_bob_may_not_read_alice_bucket_and_is_told_both_permissions(
    gcp: GcpSandbox, issuer: ServedIssuer
) -> None:
    token = await sa_token(gcp, issuer, "bob", BOB_SA)
    verdict = await check_gcp(parse_target("gs://alice-data/in/", READ), token, BOB_SA,
                              endpoints(gcp))  # fmt: skip
    assert verdict.outcome is Outcome.DENIED
    assert verdict.missing == ("storage.objects.list", "storage.objects.get")
    assert verdict.detail == (
        "testIamPermissions: holds none of storage.objects.list, storage.objects.get"
    )
    mine = await check_gcp(parse_target("gs://bob-data/in/", READ), token, BOB_SA, endpoints(gcp))
    assert mine.outcome is Outcome.OK


async def test_writing_the_read_only_references_misses_create_and_delete(
    gcp: GcpSandbox, issuer: ServedIssuer
) -> None:
    token = await sa_token(gcp, issuer, "alice", ALICE_SA)
    write = await check_gcp(parse_target("gs://shared-refs/out", WRITE), token, ALICE_SA,
                            endpoints(gcp))  # fmt: skip
    assert (write.outcome, write.missing) == (Outcome.DENIED, ("storage.objects.create",))
    work = await check_gcp(parse_target("gs://shared-refs/out", WORK_DIR), token, ALICE_SA,
                           endpoints(gcp))  # fmt: skip
    assert work.missing == ("storage.objects.create", "storage.objects.delete")
    assert "holds storage.objects.list, storage.objects.get of" in work.detail


async def test_a_missing_bucket_is_not_found(gcp: GcpSandbox, issuer: ServedIssuer) -> None:
    token = await sa_token(gcp, issuer, "alice", ALICE_SA)
    verdict = await check_gcp(parse_target("gs://no-such-bucket/x", READ), token, ALICE_SA,
                              endpoints(gcp))  # fmt: skip
    assert verdict.outcome is Outcome.NOT_FOUND
    assert verdict.detail == ("testIamPermissions: HTTP 404: The specified bucket does not exist.")


async def test_an_unknown_token_is_credentials_unavailable_and_not_echoed(gcp: GcpSandbox) -> None:
    token = "ya29.not-a-sandbox-token"
    verdict = await check_gcp(parse_target("gs://alice-data/x", READ), token, ALICE_SA,
                              endpoints(gcp))  # fmt: skip
    assert verdict.outcome is Outcome.NO_CREDENTIALS
    assert verdict.detail == "testIamPermissions: HTTP 401: Invalid Credentials"
    assert token not in repr(verdict)


async def test_a_closed_port_is_not_reachable(closed_port: int) -> None:
    endpoints = CloudEndpoints(gcs_url=f"http://127.0.0.1:{closed_port}")
    verdict = await check_gcp(parse_target("gs://alice-data/x", READ), "t", ALICE_SA, endpoints)
    assert verdict.outcome is Outcome.UNREACHABLE
    assert verdict.detail.startswith("Cloud Storage: Cannot connect to host 127.0.0.1:")


async def test_a_shared_session_is_used_and_left_open(
    gcp: GcpSandbox, issuer: ServedIssuer, http: aiohttp.ClientSession
) -> None:
    token = await sa_token(gcp, issuer, "alice", ALICE_SA)
    target = parse_target("gs://alice-data/x", READ)
    for _ in range(2):
        verdict = await check_gcp(target, token, ALICE_SA, endpoints(gcp), session=http)
        assert verdict.outcome is Outcome.OK
    assert not http.closed
