"""HPC identities at the issuer: who may manage what (this module) and what a launch may do
over SSH (hpc_launch.py).

Management (members and owners, authenticated with personal API keys from `credsidecar issuer
new-user-key`): owners create, edit and delete clusters; every member manages only their own
stored credential; `status` shows each member's state per cluster ("missing", "added",
"certificate"), to owners for everyone and to a member for themselves.

Launches (authenticated by the launch token) are HpcLaunches, in hpc_launch.py.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

import asyncssh

from credsidecar.audit import AuditLog
from credsidecar.errors import (
    BadRequest,
    Forbidden,
    NotFound,
    Unauthorized,
    Unavailable,
)
from credsidecar.issuer.hpc_registry import (
    CERTIFICATE,
    LINUX_USER,
    STORED_KEY,
    Cluster,
    HpcRegistry,
    parse_cluster,
)
from credsidecar.issuer.policy import Policy
from credsidecar.issuer.policy_watch import PolicyHolder
from credsidecar.issuer.sealing import Sealer
from credsidecar.issuer.ssh_ca import SshCa
from credsidecar.issuer.status import MISSING
from credsidecar.issuer.store import Store

__all__ = [
    "USER_KEY_PREFIX",
    "HpcService",
    "Member",
    "find_cluster",
    "linux_username",
    "new_user_key",
    "text_field",
]

USER_KEY_PREFIX = "csu_"
MAX_PRIVATE_KEY = 32_768
ADDED, CERTIFIED = "added", "certificate"


@dataclass(frozen=True)
class Member:
    user_id: str
    owner: bool
    key_name: str


def new_user_key() -> tuple[str, str]:
    key = USER_KEY_PREFIX + secrets.token_urlsafe(32)
    return key, hashlib.sha256(key.encode()).hexdigest()


def text_field(body: Any, key: str, required: bool = True, limit: int = 4096) -> str | None:
    """A string field of a JSON body, bounded; BadRequest names it when it is missing or wrong."""
    value = body.get(key) if isinstance(body, dict) else None
    if value is None or value == "":
        if required:
            raise BadRequest(f"{key} is required")
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise BadRequest(f"{key} must be a string of at most {limit} characters")
    return value


def find_cluster(registry: HpcRegistry, name: str) -> Cluster:
    cluster = registry.cluster(name)
    if cluster is None:
        raise NotFound(
            f"there is no HPC cluster {name!r}; `credsidecar hpc cluster list` shows the clusters"
        )
    return cluster


def linux_username(policy: Policy, cluster: Cluster, user: str) -> str | None:
    """Certificate mode: the owner's mapping, else the policy's `usernames` for the cluster."""
    if user in cluster.usernames:
        return cluster.usernames[user]
    in_policy = policy.identities["hpc"].get(cluster.name)
    return getattr(in_policy, "usernames", {}).get(user)


class HpcService:
    """Takes only what it uses, composed at start-up (assembly.py): a bad key-encryption key
    fails there, not at the first stored-key request."""

    def __init__(
        self,
        *,
        policy: PolicyHolder,
        store: Store,
        registry: HpcRegistry,
        audit: AuditLog,
        ca: SshCa,
        sealer: Sealer | None,
    ) -> None:
        self._policy = policy
        self._store = store
        self.registry = registry
        self._audit_log = audit
        self.ca = ca
        self._sealer = sealer

    @property
    def policy(self) -> Policy:
        return self._policy.current

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
        policy = self.policy
        user = policy.users.get(user_id)
        if user is None:
            raise Forbidden(f"user {user_id!r} is no longer in the identity policy")
        if user.disabled or self._store.user_disabled(user_id) is not None:
            raise Forbidden(f"user {user_id!r} is disabled")
        return Member(user_id, user.owner, key_name)

    def new_member_key(self, user_id: str, name: str) -> str:
        """A member API key for a policy user (shown once: only its digest is stored)."""
        self.policy.user(user_id)  # a member must be a policy user
        key, digest = new_user_key()
        self.registry.add_user_key(digest, user_id, name)
        self._audit_log.event("member_key.created", user=user_id, name=name)
        return key

    def revoke_member_keys(self, user_id: str, name: str | None) -> int:
        """Withdraws the user's member API keys (only the one labelled `name` if given)."""
        removed = self.registry.revoke_user_keys(user_id, name)
        self._audit_log.event("member_key.revoked", user=user_id, name=name, count=removed)
        return removed

    def _owner(self, member: Member, action: str) -> None:
        if not member.owner:
            raise Forbidden(
                f"user {member.user_id!r} may not {action}: only organization "
                "owners (`owner = true` in the policy) manage clusters"
            )

    def cluster(self, name: str) -> Cluster:
        return find_cluster(self.registry, name)

    # clusters (owners) -----------------------------------------------------------------------

    def list_clusters(self, member: Member) -> list[dict[str, Any]]:
        return [c.public() for c in self.registry.clusters()]

    def create_cluster(self, member: Member, body: Any) -> Cluster:
        self._owner(member, "create clusters")
        name = text_field(body, "name") or ""
        cluster = parse_cluster(name, body, self.policy.users)
        self.registry.put_cluster(cluster, member.user_id, create=True)
        self._audit("hpc.cluster.created", member, cluster=name, mode=cluster.mode)
        return self.cluster(name)

    def update_cluster(self, member: Member, name: str, body: Any) -> Cluster:
        self._owner(member, "edit clusters")
        current = self.cluster(name)
        cluster = parse_cluster(name, body, self.policy.users, base=current)
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
        username = text_field(body, "username") or ""
        if not LINUX_USER.fullmatch(username):
            raise BadRequest(f"username {username!r} is not a Linux username")
        private_key = text_field(body, "private_key", limit=MAX_PRIVATE_KEY) or ""
        passphrase = text_field(body, "passphrase", required=False, limit=1024)
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

    def status_of_everyone(self) -> list[dict[str, str]]:
        """Every member's row, for `credsidecar issuer status` (run with the issuer's state)."""
        return self.status(Member("(admin)", owner=True, key_name="cli"))

    def status(self, member: Member) -> list[dict[str, str]]:
        """One row per member: the state of each cluster for them."""
        clusters = self.registry.clusters()
        stored = {(c.cluster, c.user_id) for c in self.registry.credentials()}
        users = self.policy.users
        rows = []
        for user_id in users if member.owner else [member.user_id]:
            row = {"user": user_id}
            for cluster in clusters:
                if cluster.mode == CERTIFICATE:
                    has_name = linux_username(self.policy, cluster, user_id) is not None
                    row[cluster.name] = CERTIFIED if has_name else MISSING
                else:
                    row[cluster.name] = ADDED if (cluster.name, user_id) in stored else MISSING
            rows.append(row)
        return rows

    def _audit(self, event: str, member: Member, **fields: Any) -> None:
        self._audit_log.event(event, caller=member.user_id, key=member.key_name, **fields)
