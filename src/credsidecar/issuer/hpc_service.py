"""HPC identities at the issuer: who may manage what, and what a launch may do over SSH.

Management (members and owners, authenticated with personal API keys from `credsidecar issuer
new-user-key`): owners create, edit and delete clusters; every member manages only their own
stored credential; `status` shows each member's state per cluster ("missing", "added",
"certificate"), to owners for everyone and to a member for themselves.

Launches (authenticated by the launch token, with the run's revocation and the user's state
re-checked every time):
- certificate mode: `certificate` signs the launch's public key for the user's Linux username;
- stored-key mode: `stored_key` says which key and username to log in with, and `sign` signs
  the SSH user-authentication request with the stored key inside the issuer, so the private key
  never leaves it. `sign` checks that what it signs is exactly a `publickey` request for that
  username and key, so the issuer is no general-purpose signing oracle for the key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
import struct
from dataclasses import dataclass
from typing import Any

import asyncssh

from credsidecar.errors import BadRequest, Forbidden, NotFound, Unauthorized, Unavailable
from credsidecar.issuer.hpc_registry import (
    CERTIFICATE,
    LINUX_USER,
    STORED_KEY,
    Cluster,
    HpcRegistry,
    StoredCredential,
    parse_cluster,
)
from credsidecar.issuer.sealing import Sealer
from credsidecar.issuer.service import IssuerService
from credsidecar.issuer.ssh_ca import SshCa, refuse_private_key

__all__ = ["USER_KEY_PREFIX", "HpcService", "Member", "hpc_status_table", "new_user_key"]

USER_KEY_PREFIX = "csu_"
MAX_PRIVATE_KEY = 32_768
MISSING, ADDED, CERTIFIED = "missing", "added", "certificate"
SSH_MSG_USERAUTH_REQUEST = 50


@dataclass(frozen=True)
class Member:
    user_id: str
    owner: bool
    key_name: str


def new_user_key() -> tuple[str, str]:
    key = USER_KEY_PREFIX + secrets.token_urlsafe(32)
    return key, hashlib.sha256(key.encode()).hexdigest()


def _text(body: Any, key: str, required: bool = True, limit: int = 4096) -> str | None:
    value = body.get(key) if isinstance(body, dict) else None
    if value is None or value == "":
        if required:
            raise BadRequest(f"{key} is required")
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise BadRequest(f"{key} must be a string of at most {limit} characters")
    return value


class HpcService:
    def __init__(
        self,
        issuer: IssuerService,
        registry: HpcRegistry,
        ca: SshCa,
        sealer: Sealer | None,
        certificate_lifetime: int,
    ) -> None:
        self.issuer = issuer
        self.registry = registry
        self.ca = ca
        self._sealer = sealer
        self.certificate_lifetime = certificate_lifetime

    def ca_public_key(self) -> str:
        return self.ca.public_key_line()

    # who is asking ---------------------------------------------------------------------------

    def authenticate(self, presented: str | None) -> Member:
        if not presented or not presented.startswith(USER_KEY_PREFIX):
            raise Unauthorized(
                "this endpoint needs `Authorization: Bearer <member API key>` "
                "(from `credsidecar issuer new-user-key --user ID`)"
            )
        found = self.registry.user_of_key(hashlib.sha256(presented.encode()).hexdigest())
        if found is None:
            raise Unauthorized("the member API key is not valid for this issuer (revoked?)")
        user_id, key_name = found
        policy = self.issuer.policy
        user = policy.users.get(user_id)
        if user is None:
            raise Forbidden(f"user {user_id!r} is no longer in the identity policy")
        if user.disabled or self.issuer.store.user_disabled(user_id) is not None:
            raise Forbidden(f"user {user_id!r} is disabled")
        return Member(user_id, user.owner, key_name)

    def _owner(self, member: Member, action: str) -> None:
        if not member.owner:
            raise Forbidden(
                f"user {member.user_id!r} may not {action}: only organization "
                "owners (`owner = true` in the policy) manage clusters"
            )

    def cluster(self, name: str) -> Cluster:
        cluster = self.registry.cluster(name)
        if cluster is None:
            raise NotFound(
                f"there is no HPC cluster {name!r}; `credsidecar hpc cluster list` "
                "shows the clusters"
            )
        return cluster

    # clusters (owners) -----------------------------------------------------------------------

    def list_clusters(self, member: Member) -> list[dict[str, Any]]:
        return [c.public() for c in self.registry.clusters()]

    def create_cluster(self, member: Member, body: Any) -> Cluster:
        self._owner(member, "create clusters")
        name = _text(body, "name") or ""
        cluster = parse_cluster(name, body, self.issuer.policy.users)
        self.registry.put_cluster(cluster, member.user_id, create=True)
        self._audit("hpc.cluster.created", member, cluster=name, mode=cluster.mode)
        return self.cluster(name)

    def update_cluster(self, member: Member, name: str, body: Any) -> Cluster:
        self._owner(member, "edit clusters")
        current = self.cluster(name)
        cluster = parse_cluster(name, body, self.issuer.policy.users, base=current)
        self.registry.put_cluster(cluster, member.user_id, create=False)
        self._audit("hpc.cluster.updated", member, cluster=name, mode=cluster.mode)
        return self.cluster(name)

    def delete_cluster(self, member: Member, name: str) -> None:
        self._owner(member, "delete clusters")
        if not self.registry.delete_cluster(name):
            raise NotFound(f"there is no HPC cluster {name!r}")
        self._audit("hpc.cluster.deleted", member, cluster=name)

    # stored credentials (each member their own) ----------------------------------------------

    def get_credential(self, member: Member, cluster: str) -> dict[str, Any]:
        self.cluster(cluster)
        found = self.registry.credential(cluster, member.user_id)
        if found is None:
            raise NotFound(f"user {member.user_id!r} has no stored credential for {cluster!r}")
        return found.public()

    def put_credential(self, member: Member, cluster_name: str, body: Any) -> dict[str, Any]:
        cluster = self.cluster(cluster_name)
        if cluster.mode != STORED_KEY:
            raise BadRequest(
                f"cluster {cluster_name!r} uses certificates: nothing to upload; "
                "an owner maps your Linux username instead"
            )
        if self._sealer is None:
            raise Unavailable(
                "stored-key mode needs a key-encryption key at the issuer: set "
                "[hpc] key_encryption_key_file (`credsidecar issuer new-kek`)",
                retry_after=60,
            )
        username = _text(body, "username") or ""
        if not LINUX_USER.fullmatch(username):
            raise BadRequest(f"username {username!r} is not a Linux username")
        private_key = _text(body, "private_key", limit=MAX_PRIVATE_KEY) or ""
        passphrase = _text(body, "passphrase", required=False, limit=1024)
        try:
            key = asyncssh.import_private_key(private_key, passphrase)
        except asyncssh.KeyEncryptionError as exc:
            raise BadRequest("the private key does not open with the passphrase given") from exc
        except (asyncssh.KeyImportError, ValueError) as exc:
            raise BadRequest(f"private_key is not an OpenSSH or PEM private key: {exc}") from exc
        public = key.export_public_key().decode().strip()
        context = f"{cluster_name}/{member.user_id}"
        sealed_key = self._sealer.seal(private_key.encode(), f"{context}/private_key")
        sealed_pass = (
            self._sealer.seal(passphrase.encode(), f"{context}/passphrase") if passphrase else None
        )
        self.registry.put_credential(
            cluster_name, member.user_id, username, public, sealed_key, sealed_pass
        )
        stored = self.registry.credential(cluster_name, member.user_id)
        assert stored is not None
        self._audit(
            "hpc.credential.stored",
            member,
            cluster=cluster_name,
            username=username,
            fingerprint=stored.fingerprint,
        )
        return stored.public()

    def delete_credential(self, member: Member, cluster: str) -> None:
        self.cluster(cluster)
        if not self.registry.delete_credential(cluster, member.user_id):
            raise NotFound(f"user {member.user_id!r} has no stored credential for {cluster!r}")
        self._audit("hpc.credential.deleted", member, cluster=cluster)

    def status(self, member: Member) -> list[dict[str, str]]:
        """One row per member: the state of each cluster for them."""
        clusters = self.registry.clusters()
        stored = {(c.cluster, c.user_id) for c in self.registry.credentials()}
        users = self.issuer.policy.users
        rows = []
        for user_id in users if member.owner else [member.user_id]:
            row = {"user": user_id}
            for cluster in clusters:
                if cluster.mode == CERTIFICATE:
                    has_name = self._username(cluster, user_id) is not None
                    row[cluster.name] = CERTIFIED if has_name else MISSING
                else:
                    row[cluster.name] = ADDED if (cluster.name, user_id) in stored else MISSING
            rows.append(row)
        return rows

    # launches --------------------------------------------------------------------------------

    def _launch(self, body: Any) -> tuple[dict[str, Any], Cluster]:
        token = _text(body, "launch_token", limit=40_000) or ""
        claims = self.issuer.verify_launch_token(token)
        user, run = str(claims["user"]), str(claims["run"])
        self.issuer.check_active(user, run)
        cluster = self.cluster(_text(body, "cluster") or "")
        # A cluster the policy also names ([identities.hpc.NAME]) is used only by launches its
        # grants gave it to, like any other identity; a registry-only cluster by any member.
        if cluster.name in self.issuer.policy.identities["hpc"]:
            granted = [d.get("name") for d in claims.get("identities", {}).get("hpc", [])]
            if cluster.name not in granted:
                raise Forbidden(
                    f"run {run!r} of user {user!r} is not granted HPC cluster {cluster.name!r}; "
                    'the policy\'s grants with provider = "hpc" decide which launches may use it'
                )
        return claims, cluster

    def _username(self, cluster: Cluster, user: str) -> str | None:
        """Certificate mode: the owner's mapping, else the policy's `usernames` for the cluster."""
        if user in cluster.usernames:
            return cluster.usernames[user]
        in_policy = self.issuer.policy.identities["hpc"].get(cluster.name)
        return getattr(in_policy, "usernames", {}).get(user)

    def _connection(self, cluster: Cluster, username: str) -> dict[str, Any]:
        return {
            "cluster": cluster.name,
            "host": cluster.host,
            "port": cluster.port,
            "scheduler": cluster.scheduler,
            "username": username,
            "known_hosts": cluster.known_hosts(),
        }

    def certificate(self, body: Any) -> dict[str, Any]:
        # Before the launch token is checked: whoever sent a private key must hear it leaked.
        refuse_private_key(body.get("public_key") if isinstance(body, dict) else None)
        claims, cluster = self._launch(body)
        user, run = str(claims["user"]), str(claims["run"])
        if cluster.mode != CERTIFICATE:
            raise BadRequest(f"cluster {cluster.name!r} uses stored keys, not certificates")
        username = self._username(cluster, user)
        if not username:
            raise Forbidden(
                f"user {user!r} has no Linux username on cluster {cluster.name!r}; "
                "an owner adds it (`credsidecar hpc cluster edit "
                f"{cluster.name} --username {user}=LINUXNAME`)"
            )
        lifetime = body.get("lifetime", self.certificate_lifetime)
        if not isinstance(lifetime, int) or isinstance(lifetime, bool) or lifetime < 60:
            raise BadRequest("lifetime must be an integer number of seconds, at least 60")
        now = self.issuer.now()
        not_after = min(now + min(lifetime, self.certificate_lifetime), int(claims["exp"]))
        if not_after <= now:
            raise Forbidden(f"the launch token of run {run!r} has expired")
        key_id = f"credsidecar:{user}:{run}:{cluster.name}"
        signed = self.ca.sign(
            _text(body, "public_key", limit=16_384) or "",
            username,
            key_id,
            now,
            not_after,
            secrets.randbits(63),
        )
        self.issuer.audit.event(
            "ssh.certificate.issued",
            user=user,
            run=run,
            cluster=cluster.name,
            principal=username,
            key_id=key_id,
            serial=signed.serial,
            fingerprint=signed.fingerprint,
            valid_before=signed.valid_before,
        )
        return {
            "certificate": signed.certificate,
            "key_id": key_id,
            "valid_after": signed.valid_after,
            "valid_before": signed.valid_before,
            **self._connection(cluster, username),
        }

    def describe_for_launch(self, body: Any) -> dict[str, Any]:
        """Which mode a launch logs in with on the cluster (and where it is)."""
        _, cluster = self._launch(body)
        return {
            "cluster": cluster.name,
            "mode": cluster.mode,
            "host": cluster.host,
            "port": cluster.port,
            "scheduler": cluster.scheduler,
        }

    def stored_key(self, body: Any) -> dict[str, Any]:
        claims, cluster = self._launch(body)
        found = self._stored(cluster, str(claims["user"]))
        return {"public_key": found.public_key, **self._connection(cluster, found.username)}

    def _stored(self, cluster: Cluster, user: str) -> StoredCredential:
        if cluster.mode != STORED_KEY:
            raise BadRequest(f"cluster {cluster.name!r} uses certificates, not stored keys")
        found = self.registry.credential(cluster.name, user)
        if found is None:
            raise Forbidden(
                f"user {user!r} has no stored credential for cluster "
                f"{cluster.name!r}; add one with `credsidecar hpc credential set "
                f"--cluster {cluster.name} ...`"
            )
        return found

    def sign(self, body: Any) -> dict[str, Any]:
        claims, cluster = self._launch(body)
        user, run = str(claims["user"]), str(claims["run"])
        found = self._stored(cluster, user)
        try:
            data = base64.b64decode(_text(body, "data", limit=16_384) or "", validate=True)
        except (binascii.Error, ValueError) as exc:
            raise BadRequest("data must be base64") from exc
        public = asyncssh.import_public_key(found.public_key)
        _check_userauth_request(data, found.username, public.public_data)
        if self._sealer is None:
            raise Unavailable(
                "stored-key mode needs the issuer's key-encryption key", retry_after=60
            )
        context = f"{cluster.name}/{user}"
        sealed = self.registry.sealed_secrets(cluster.name, user)
        assert sealed is not None
        private_text = self._sealer.open(sealed[0], f"{context}/private_key").decode()
        passphrase = (
            self._sealer.open(sealed[1], f"{context}/passphrase").decode()
            if sealed[1] is not None
            else None
        )
        key = asyncssh.import_private_key(private_text, passphrase)
        algorithm = _text(body, "algorithm", required=False) or key.sig_algorithms[0].decode()
        if algorithm.encode() not in key.sig_algorithms:
            raise BadRequest(f"algorithm {algorithm!r} is not one the key signs with")
        signature = key.sign(data, algorithm.encode())
        self.issuer.audit.event(
            "hpc.stored_key.used",
            user=user,
            run=run,
            cluster=cluster.name,
            username=found.username,
            fingerprint=found.fingerprint,
        )
        return {"signature": base64.b64encode(signature).decode()}

    def _audit(self, event: str, member: Member, **fields: Any) -> None:
        self.issuer.audit.event(event, caller=member.user_id, key=member.key_name, **fields)


def hpc_status_table(rows: list[dict[str, str]]) -> str:
    """Members x clusters, like `credsidecar issuer status` for the clouds."""
    clusters = sorted({k for r in rows for k in r if k != "user"})
    if not clusters:
        return "no HPC clusters yet (`credsidecar hpc cluster add`)"
    headers = ["user", *clusters]
    widths = [max([len(h)] + [len(r.get(h, "")) for r in rows]) for h in headers]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))]
    for row in rows:
        lines.append(
            "  ".join(row.get(h, "").ljust(w) for h, w in zip(headers, widths, strict=True))
        )
    missing = sum(1 for r in rows for c in clusters if r.get(c) == MISSING)
    lines.append(f"{len(rows)} members, {missing} member/cluster pairs without a way in")
    return "\n".join(line.rstrip() for line in lines)


def _check_userauth_request(data: bytes, username: str, key_blob: bytes) -> None:
    """`data` must be what an SSH client signs to log in as `username` with this key:
    string session id, byte 50, string user, string "ssh-connection", string "publickey",
    bool TRUE, string algorithm, string key (RFC 4252 section 7)."""
    refused = BadRequest(
        "data is not an SSH publickey authentication request for this "
        "credential's username and key; nothing else is signed"
    )
    fields: list[bytes] = []
    offset = 0

    def string() -> bytes:
        nonlocal offset
        if offset + 4 > len(data):
            raise refused
        (length,) = struct.unpack_from(">I", data, offset)
        if offset + 4 + length > len(data):
            raise refused
        value = data[offset + 4 : offset + 4 + length]
        offset += 4 + length
        return value

    string()  # session id
    if data[offset : offset + 1] != bytes([SSH_MSG_USERAUTH_REQUEST]):
        raise refused
    offset += 1
    fields = [string(), string(), string()]
    if fields != [username.encode(), b"ssh-connection", b"publickey"]:
        raise refused
    if data[offset : offset + 1] != b"\x01":
        raise refused
    offset += 1
    string()  # the signature algorithm
    if string() != key_blob or offset != len(data):
        raise refused
