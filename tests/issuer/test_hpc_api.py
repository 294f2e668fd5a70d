"""The issuer's HPC API over real HTTP: who may manage what, sealed stored keys, and what a
launch gets (certificates, signatures) with the run and user re-checked."""

from __future__ import annotations

import base64
import struct
from dataclasses import dataclass
from typing import Any

import asyncssh
import pytest
from aiohttp.test_utils import TestClient

from credsidecar.issuer.app import create_app
from credsidecar.issuer.hpc_service import new_user_key
from tests.issuer.conftest import IssuerFixture
from tests.issuer.test_app import mint

HOST_KEY = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
ALICE_KEY = asyncssh.generate_private_key("ssh-ed25519")


@dataclass
class Api:
    client: TestClient
    issuer: IssuerFixture
    keys: dict[str, str]

    def auth(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[user]}"}

    async def call(self, method: str, path: str, user: str | None = None,
                   body: Any = None) -> tuple[int, Any]:  # fmt: skip
        headers = self.auth(user) if user else {}
        resp = await self.client.request(method, path, json=body, headers=headers)
        return resp.status, (await resp.json() if resp.status != 204 else None)

    async def launch(self, user: str = "alice", run: str = "run-1", **extra: Any) -> str:
        return str((await mint(self.client, self.issuer, user=user, run=run, **extra))["token"])


@pytest.fixture(autouse=True)
def kek(monkeypatch: pytest.MonkeyPatch) -> None:
    """The issuer reads its key-encryption key when it starts: set before `issuer` is built."""
    monkeypatch.setenv("CREDSIDECAR_HPC_KEK", base64.b64encode(b"k" * 32).decode())


@pytest.fixture
def member_keys(issuer: IssuerFixture) -> dict[str, str]:
    keys = {}
    for user in ("alice", "bob", "carol"):
        key, digest = new_user_key()
        issuer.service.hpc.registry.add_user_key(digest, user, "test")
        keys[user] = key
    return keys


@pytest.fixture
async def api(aiohttp_client: Any, issuer: IssuerFixture, member_keys: dict[str, str]) -> Api:
    state = Api(await aiohttp_client(create_app(issuer.service)), issuer, member_keys)
    for name, settings in (
        ("hpc1", {"usernames": {"alice": "csalice"}}),
        ("hpc2", {"mode": "stored-key"}),
    ):
        body = {"name": name, "host": "127.0.0.1", "host_keys": [HOST_KEY], **settings}
        status, created = await state.call("POST", "/v1/hpc/clusters", "carol", body)
        assert status == 201, created
    return state


async def test_management_needs_a_valid_member_key(api: Api) -> None:
    status, body = await api.call("GET", "/v1/hpc/clusters")
    assert status == 401 and "member API key" in body["error_description"]
    resp = await api.client.get("/v1/hpc/clusters", headers={"Authorization": "Bearer csu_x"})
    assert resp.status == 401
    # A platform key is not a member key.
    resp = await api.client.get("/v1/hpc/clusters", headers=api.issuer.auth)
    assert resp.status == 401
    status, body = await api.call("GET", "/v1/hpc/clusters", "alice")
    assert status == 200 and [c["name"] for c in body["clusters"]] == ["hpc1", "hpc2"]


async def test_only_owners_change_clusters(api: Api) -> None:
    for method, path, body in (
        ("POST", "/v1/hpc/clusters", {"name": "x", "host": "h", "host_keys": [HOST_KEY]}),
        ("PATCH", "/v1/hpc/clusters/hpc1", {"port": 2222}),
        ("DELETE", "/v1/hpc/clusters/hpc1", None),
    ):
        status, refused = await api.call(method, path, "alice", body)
        assert status == 403 and "only organization owners" in refused["error_description"]
    status, edited = await api.call("PATCH", "/v1/hpc/clusters/hpc1", "carol", {"port": 2222})
    assert status == 200 and edited["port"] == 2222 and edited["updated_by"] == "carol"
    assert edited["usernames"] == {"alice": "csalice"}


async def test_members_manage_only_their_own_sealed_credential(api: Api) -> None:
    private = ALICE_KEY.export_private_key("openssh", "alice pass").decode()
    path = "/v1/hpc/clusters/hpc2/credential"
    wrong = {"username": "csalice", "private_key": private, "passphrase": "nope"}
    status, body = await api.call("PUT", path, "alice", wrong)
    assert status == 400 and "does not open with the passphrase" in body["error_description"]
    status, stored = await api.call("PUT", path, "alice", {**wrong, "passphrase": "alice pass"})
    assert status == 200, stored
    assert set(stored) == {"cluster", "user", "username", "public_key", "fingerprint",
                           "updated_at"}  # fmt: skip
    assert (await api.call("GET", path, "alice"))[1] == stored
    status, body = await api.call("GET", path, "bob")  # bob sees only his own: none
    assert status == 404 and "'bob' has no stored credential" in body["error_description"]
    assert (await api.call("DELETE", path, "bob"))[0] == 404
    assert (await api.call("GET", path, "alice"))[0] == 200  # untouched
    status, body = await api.call("PUT", "/v1/hpc/clusters/hpc1/credential", "alice",
                                  {**wrong, "passphrase": "alice pass"})  # fmt: skip
    assert status == 400 and "uses certificates" in body["error_description"]
    status, rows = await api.call("GET", "/v1/hpc/status", "carol")
    table = {r["user"]: r for r in rows["members"]}
    assert table["alice"] == {"user": "alice", "hpc1": "certificate", "hpc2": "added"}
    assert table["bob"] == {"user": "bob", "hpc1": "missing", "hpc2": "missing"}
    audit = "\n".join(str(e) for e in api.issuer.audit_events())
    assert private.splitlines()[1] not in audit and "alice pass" not in audit


async def test_a_certificate_for_a_launch_never_outlives_the_launch_token(api: Api) -> None:
    token = await api.launch(lifetime=300)
    body = {"launch_token": token, "cluster": "hpc1",
            "public_key": ALICE_KEY.export_public_key().decode()}  # fmt: skip
    status, issued = await api.call("POST", "/v1/ssh/certificates", body=body)
    assert status == 201, issued
    now = api.issuer.clock.now
    assert issued["valid_before"] == int(now) + 300  # the token's expiry, not 900 s
    cert = asyncssh.import_certificate(issued["certificate"])
    assert cert.principals == ["csalice"] and issued["username"] == "csalice"
    assert issued["known_hosts"] == f"127.0.0.1 {HOST_KEY}\n"
    bob = {**body, "launch_token": await api.launch("bob")}
    status, refused = await api.call("POST", "/v1/ssh/certificates", body=bob)
    assert status == 403 and "'bob' has no Linux username" in refused["error_description"]
    await api.client.post("/v1/runs/run-1/revoke", json={}, headers=api.issuer.auth)
    status, refused = await api.call("POST", "/v1/ssh/certificates", body=body)
    assert status == 403 and "revoked" in refused["error_description"]


async def test_a_private_key_for_a_certificate_is_refused_before_anything_else(api: Api) -> None:
    """Even with a launch token that is no good: the sender must hear the key has leaked."""
    private = ALICE_KEY.export_private_key().decode()
    for token in (await api.launch(), "not-a-token"):
        body = {"launch_token": token, "cluster": "hpc1", "public_key": private}
        status, refused = await api.call("POST", "/v1/ssh/certificates", body=body)
        assert status == 400
        assert refused["error"] == "invalid_request"
        assert "that is a private key; send the .pub file" in refused["error_description"]
        assert "treat this key as leaked" in refused["error_description"]
        assert "PRIVATE KEY" not in refused["error_description"]
    events = api.issuer.audit_events()
    assert not [e for e in events if e["event"] == "ssh.certificate.issued"]
    assert private.splitlines()[1] not in str(events)  # nor in the audit


def userauth_request(username: str, key: asyncssh.SSHKey) -> bytes:
    def string(value: bytes) -> bytes:
        return struct.pack(">I", len(value)) + value

    return (string(b"session-id") + bytes([50]) + string(username.encode())
            + string(b"ssh-connection") + string(b"publickey") + b"\x01"
            + string(b"ssh-ed25519") + string(key.public_data))  # fmt: skip


async def test_the_issuer_signs_only_the_members_login_with_the_stored_key(api: Api) -> None:
    private = ALICE_KEY.export_private_key().decode()
    status, _ = await api.call("PUT", "/v1/hpc/clusters/hpc2/credential", "alice",
                               {"username": "csalice", "private_key": private})  # fmt: skip
    assert status == 200
    token = await api.launch()
    data = userauth_request("csalice", ALICE_KEY)
    body = {"launch_token": token, "cluster": "hpc2", "data": base64.b64encode(data).decode()}
    status, signed = await api.call("POST", "/v1/hpc/stored-key/sign", body=body)
    assert status == 200, signed
    public = asyncssh.import_public_key(ALICE_KEY.export_public_key())
    assert public.verify(data, base64.b64decode(signed["signature"]))
    for other in (userauth_request("root", ALICE_KEY), b"arbitrary bytes", data + b"x"):
        status, refused = await api.call(
            "POST", "/v1/hpc/stored-key/sign",
            body={**body, "data": base64.b64encode(other).decode()},
        )  # fmt: skip
        assert status == 400 and "nothing else is signed" in refused["error_description"]
    status, described = await api.call("POST", "/v1/hpc/stored-key",
                                       body={"launch_token": token, "cluster": "hpc2"})  # fmt: skip
    assert described["username"] == "csalice" and "private_key" not in described
    status, refused = await api.call("POST", "/v1/hpc/stored-key",
                                     body={"launch_token": await api.launch("bob", "run-2"),
                                           "cluster": "hpc2"})  # fmt: skip
    assert status == 403 and "'bob' has no stored credential" in refused["error_description"]


async def test_a_cluster_the_policy_names_follows_its_grants_and_usernames(api: Api) -> None:
    """The example policy's sandbox-cluster is granted to the genomics workspace and maps
    alice -> alice; in the registry it needs only how to reach and verify it."""
    body = {"name": "sandbox-cluster", "host": "127.0.0.1", "host_keys": [HOST_KEY]}
    assert (await api.call("POST", "/v1/hpc/clusters", "carol", body))[0] == 201
    request = {"cluster": "sandbox-cluster", "public_key": ALICE_KEY.export_public_key().decode()}
    granted = await api.launch("alice", "run-ws")  # workspace genomics: granted
    status, issued = await api.call(
        "POST", "/v1/ssh/certificates", body={**request, "launch_token": granted}
    )
    assert status == 201 and issued["username"] == "alice"  # the policy's mapping
    ungranted = await api.launch("alice", "run-solo", workspace=None)
    status, refused = await api.call(
        "POST", "/v1/ssh/certificates", body={**request, "launch_token": ungranted}
    )
    assert status == 403
    assert (
        "run 'run-solo' of user 'alice' is not granted HPC cluster 'sandbox-cluster'"
        in (refused["error_description"])
    )
    rows = {r["user"]: r for r in (await api.call("GET", "/v1/hpc/status", "carol"))[1]["members"]}
    assert rows["alice"]["sandbox-cluster"] == "certificate"
    assert rows["carol"]["sandbox-cluster"] == "missing"
