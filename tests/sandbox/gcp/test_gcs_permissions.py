"""The storage stand-in's buckets.testIamPermissions: the asked permissions the caller holds,
by the same bindings and scopes every other call is authorized with."""

from __future__ import annotations

from typing import Any

from credsidecar.sandbox.gcp.runner import GcpSandbox
from tests.sandbox.conftest import ServedIssuer, call
from tests.sandbox.gcp.test_stand_ins import (
    ALICE_SA,
    BOB_SA,
    federated,
    impersonate,
    objects,
    sa_token,
)

ALL = (
    "storage.objects.list", "storage.objects.get", "storage.objects.create",
    "storage.objects.delete", "storage.buckets.get",
)  # fmt: skip


async def held(
    gcp: GcpSandbox, issuer: ServedIssuer, bucket: str, token: str | None, *asked: str
) -> tuple[int, Any]:
    url = f"{gcp.storage_url}/storage/v1/b/{bucket}/iam/testPermissions"
    return await call(issuer.http, "GET", url, token, params=[("permissions", p) for p in asked])


async def test_alice_holds_the_object_admin_permissions_on_her_bucket_and_reads_shared_refs(
    gcp: GcpSandbox, issuer: ServedIssuer
) -> None:
    token = await sa_token(gcp, issuer, "alice", ALICE_SA)
    status, body = await held(gcp, issuer, "alice-data", token, *ALL)
    assert status == 200
    assert body == {"kind": "storage#testIamPermissionsResponse", "permissions": list(ALL)}
    status, body = await held(gcp, issuer, "shared-refs", token, *ALL)
    assert body["permissions"] == [
        "storage.objects.list", "storage.objects.get", "storage.buckets.get"
    ]  # fmt: skip


async def test_only_the_asked_permissions_are_answered(
    gcp: GcpSandbox, issuer: ServedIssuer
) -> None:
    token = await sa_token(gcp, issuer, "alice", ALICE_SA)
    status, body = await held(gcp, issuer, "alice-data", token, "storage.objects.create")
    assert (status, body["permissions"]) == (200, ["storage.objects.create"])


async def test_a_caller_without_a_role_gets_200_and_no_permissions_field(
    gcp: GcpSandbox, issuer: ServedIssuer
) -> None:
    """As GCS: the method needs no permission, and an empty answer omits the field; the
    listing the same caller tries is refused, which the answer agrees with."""
    token = await sa_token(gcp, issuer, "bob", BOB_SA)
    status, body = await held(gcp, issuer, "alice-data", token, *ALL)
    assert (status, body) == (200, {"kind": "storage#testIamPermissionsResponse"})
    assert (await call(issuer.http, "GET", objects(gcp, "alice-data"), token))[0] == 403


async def test_a_read_only_scope_holds_no_write_permission(
    gcp: GcpSandbox, issuer: ServedIssuer
) -> None:
    fed = await federated(gcp, issuer, "alice")
    read_only = "https://www.googleapis.com/auth/devstorage.read_only"
    status, body = await impersonate(gcp, issuer.http, fed, ALICE_SA, "generateAccessToken",
                                     scope=[read_only], lifetime="600s")  # fmt: skip
    assert status == 200, body
    status, body = await held(gcp, issuer, "alice-data", body["accessToken"], *ALL)
    assert body["permissions"] == [
        "storage.objects.list", "storage.objects.get", "storage.buckets.get"
    ]  # fmt: skip


async def test_refusals_missing_bucket_token_and_permissions(
    gcp: GcpSandbox, issuer: ServedIssuer
) -> None:
    token = await sa_token(gcp, issuer, "alice", ALICE_SA)
    status, body = await held(gcp, issuer, "no-such-bucket", token, *ALL)
    assert (status, body["error"]["message"]) == (404, "The specified bucket does not exist.")
    status, body = await held(gcp, issuer, "alice-data", None, *ALL)
    assert status == 401 and body["error"]["errors"][0]["reason"] == "required"
    status, body = await held(gcp, issuer, "alice-data", "ya29.unknown", *ALL)
    assert (status, body["error"]["message"]) == (401, "Invalid Credentials")
    status, body = await held(gcp, issuer, "alice-data", token)
    assert (status, body["error"]["message"]) == (400, "Required parameter: permissions")
    status, body = await held(gcp, issuer, "alice-data", token, "storage.buckets.list")
    assert status == 400 and "applies to projects" in body["error"]["message"]
