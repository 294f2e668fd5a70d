"""The HPC registry: clusters (managed by organization owners) and members' stored SSH
credentials (each managed by its member only), in the issuer's store (SQLite or PostgreSQL).

A cluster says how to reach its login node (host, port, scheduler), how the host is verified
(a host CA key, or pinned host keys; never trust on first use) and how members log in:
- certificate mode: the issuer's SSH CA signs a short-lived certificate whose one principal is
  the member's Linux username, which an owner sets in the cluster's `usernames` (a member
  naming their own principal could name anyone's account);
- stored-key mode: each member uploads their Linux username, private key and passphrase; the
  key proves the account is theirs. Private keys and passphrases are sealed (sealing.py) and no
  API ever returns them.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import asyncssh

from credsidecar.errors import BadRequest
from credsidecar.issuer.identities import SCHEDULERS
from credsidecar.issuer.ssh_ca import refuse_private_key
from credsidecar.issuer.store import Store
from credsidecar.launch.grants import LINUX_USERNAME

__all__ = [
    "CERTIFICATE",
    "MODES",
    "STORED_KEY",
    "Cluster",
    "HpcRegistry",
    "StoredCredential",
    "parse_cluster",
]

CERTIFICATE, STORED_KEY = "certificate", "stored-key"
MODES = (CERTIFICATE, STORED_KEY)
CLUSTER_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
LINUX_USER = LINUX_USERNAME  # one pattern for the policy, the registry and the launch token
HOST = re.compile(r"[A-Za-z0-9.-]{1,253}|\[[0-9a-fA-F:]+\]|[0-9a-fA-F:]+")

# Its tables are created by the store's migrations (store/migrations.py, version 1).


@dataclass(frozen=True)
class Cluster:
    name: str
    scheduler: str
    host: str
    port: int
    mode: str
    host_ca_key: str | None = None  # trust host certificates signed by this key
    host_keys: tuple[str, ...] = ()  # or exactly these host keys
    usernames: Mapping[str, str] = field(default_factory=dict)  # certificate mode
    updated_at: int = 0
    updated_by: str = ""

    @property
    def host_pattern(self) -> str:
        """How OpenSSH's known_hosts names this host (a bracketed form for other ports)."""
        host = self.host.strip("[]")
        return host if self.port == 22 else f"[{host}]:{self.port}"

    def known_hosts(self) -> str:
        """known_hosts lines that trust exactly this cluster's host keys or host CA."""
        lines = [f"{self.host_pattern} {key}" for key in self.host_keys]
        if self.host_ca_key:
            lines.append(f"@cert-authority {self.host_pattern} {self.host_ca_key}")
        return "\n".join(lines) + "\n"

    def settings(self) -> dict[str, Any]:
        return {
            "scheduler": self.scheduler,
            "host": self.host,
            "port": self.port,
            "mode": self.mode,
            "host_ca_key": self.host_ca_key,
            "host_keys": list(self.host_keys),
            "usernames": dict(self.usernames),
        }

    def public(self) -> dict[str, Any]:
        return {
            "name": self.name,
            **self.settings(),
            "updated_at": self.updated_at,
            "updated_by": self.updated_by,
        }


@dataclass(frozen=True)
class StoredCredential:
    """What may be shown of a stored credential: never the private key or passphrase."""

    cluster: str
    user_id: str
    username: str
    public_key: str
    updated_at: int

    @property
    def fingerprint(self) -> str:
        return str(asyncssh.import_public_key(self.public_key).get_fingerprint("sha256"))

    def public(self) -> dict[str, Any]:
        return {
            "cluster": self.cluster,
            "user": self.user_id,
            "username": self.username,
            "public_key": self.public_key,
            "fingerprint": self.fingerprint,
            "updated_at": self.updated_at,
        }


def _host_key(text: Any, what: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise BadRequest(f"{what} must be an OpenSSH public key line")
    refuse_private_key(text, what)  # a host's private key pasted by mistake is leaked
    try:
        key = asyncssh.import_public_key(text.strip())
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise BadRequest(f"{what} is not an OpenSSH public key: {exc}") from exc
    return key.export_public_key().decode().strip()


def parse_cluster(
    name: str, body: Any, users: Mapping[str, object], base: Cluster | None = None
) -> Cluster:
    """A cluster from an API body (`base`'s values for the keys it leaves out, for edits)."""
    if not CLUSTER_NAME.fullmatch(name or ""):
        raise BadRequest(
            f"cluster name {name!r} must be 1-64 letters, digits, dashes or underscores"
        )
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    known = {"scheduler", "host", "port", "mode", "host_ca_key", "host_keys", "usernames"}
    unknown = set(body) - known - {"name"}
    if unknown:
        raise BadRequest(f"unknown cluster setting(s) {sorted(unknown)}; use {sorted(known)}")
    merged = {**(base.settings() if base else {}), **body}
    scheduler = str(merged.get("scheduler", "slurm")).lower()
    if scheduler not in SCHEDULERS:
        raise BadRequest(f"scheduler {scheduler!r} is not one of {', '.join(sorted(SCHEDULERS))}")
    host = merged.get("host")
    if not isinstance(host, str) or not HOST.fullmatch(host):
        raise BadRequest("host must be the login node's DNS name or IP address")
    port = merged.get("port", 22)
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise BadRequest("port must be an integer between 1 and 65535")
    mode = merged.get("mode", CERTIFICATE)
    if mode not in MODES:
        raise BadRequest(f"mode must be one of {', '.join(MODES)}")
    ca_key = merged.get("host_ca_key")
    ca_key = _host_key(ca_key, "host_ca_key") if ca_key else None
    raw_keys = merged.get("host_keys") or []
    if not isinstance(raw_keys, list):
        raise BadRequest("host_keys must be a list of OpenSSH public key lines")
    host_keys = tuple(_host_key(k, f"host_keys[{i}]") for i, k in enumerate(raw_keys))
    if not ca_key and not host_keys:
        raise BadRequest(
            f"cluster {name!r} needs host_ca_key or host_keys: the login node's identity is "
            "verified against them (never trusted on first use); `ssh-keyscan -p PORT HOST` "
            "lists the host keys to check with the cluster's admins"
        )
    usernames = merged.get("usernames") or {}
    if not isinstance(usernames, dict):
        raise BadRequest("usernames must map member ids to Linux usernames")
    for user, linux in usernames.items():
        if user not in users:
            raise BadRequest(f"usernames names {user!r}, who is not a member (a policy user)")
        if not isinstance(linux, str) or not LINUX_USER.fullmatch(linux):
            raise BadRequest(f"usernames maps {user!r} to {linux!r}, not a Linux username")
    if mode == STORED_KEY and usernames:
        raise BadRequest(
            "usernames apply to certificate mode; in stored-key mode each member "
            "uploads their own username and key"
        )
    return Cluster(name, scheduler, host, port, mode, ca_key, host_keys, dict(usernames))


class HpcRegistry:
    def __init__(self, store: Store) -> None:
        self._store = store

    # clusters --------------------------------------------------------------------------------

    def clusters(self) -> list[Cluster]:
        rows = self._store.query(
            "SELECT name, settings, updated_at, updated_by FROM hpc_clusters ORDER BY name"
        )
        return [self._cluster(*row) for row in rows]

    def cluster(self, name: str) -> Cluster | None:
        rows = self._store.query(
            "SELECT name, settings, updated_at, updated_by FROM hpc_clusters WHERE name = ?",
            (name,),
        )
        return self._cluster(*rows[0]) if rows else None

    @staticmethod
    def _cluster(name: str, settings: str, updated_at: int, updated_by: str) -> Cluster:
        data = json.loads(settings)
        return Cluster(
            name=name,
            scheduler=data["scheduler"],
            host=data["host"],
            port=data["port"],
            mode=data["mode"],
            host_ca_key=data.get("host_ca_key"),
            host_keys=tuple(data.get("host_keys", ())),
            usernames=dict(data.get("usernames", {})),
            updated_at=updated_at,
            updated_by=updated_by,
        )

    def put_cluster(self, cluster: Cluster, by: str, create: bool) -> None:
        now = int(time.time())
        settings = json.dumps(cluster.settings(), sort_keys=True)
        if create:
            changed = self._store.execute(
                "INSERT INTO hpc_clusters (name, settings, updated_at, updated_by) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (name) DO NOTHING",
                (cluster.name, settings, now, by),
            )
            if not changed:
                raise BadRequest(f"cluster {cluster.name!r} already exists; edit it instead")
        else:
            self._store.execute(
                "UPDATE hpc_clusters SET settings = ?, updated_at = ?, updated_by = ? "
                "WHERE name = ?",
                (settings, now, by, cluster.name),
            )
        if cluster.mode == CERTIFICATE:  # stored keys belong to stored-key mode only
            self._store.execute("DELETE FROM hpc_credentials WHERE cluster = ?", (cluster.name,))

    def delete_cluster(self, name: str) -> bool:
        self._store.execute("DELETE FROM hpc_credentials WHERE cluster = ?", (name,))
        return self._store.execute("DELETE FROM hpc_clusters WHERE name = ?", (name,)) == 1

    # members' stored credentials -------------------------------------------------------------

    def credential(self, cluster: str, user_id: str) -> StoredCredential | None:
        rows = self._store.query(
            "SELECT cluster, user_id, username, public_key, updated_at FROM hpc_credentials "
            "WHERE cluster = ? AND user_id = ?",
            (cluster, user_id),
        )
        return StoredCredential(*rows[0]) if rows else None

    def credentials(self) -> list[StoredCredential]:
        rows = self._store.query(
            "SELECT cluster, user_id, username, public_key, updated_at FROM hpc_credentials"
        )
        return [StoredCredential(*row) for row in rows]

    def sealed_secrets(self, cluster: str, user_id: str) -> tuple[bytes, bytes | None] | None:
        rows = self._store.query(
            "SELECT private_key, passphrase FROM hpc_credentials WHERE cluster = ? AND user_id = ?",
            (cluster, user_id),
        )
        if not rows:
            return None
        private_key, passphrase = rows[0]
        return bytes(private_key), bytes(passphrase) if passphrase is not None else None

    def put_credential(
        self,
        cluster: str,
        user_id: str,
        username: str,
        public_key: str,
        private_key: bytes,
        passphrase: bytes | None,
    ) -> None:
        self._store.execute(
            "INSERT INTO hpc_credentials (cluster, user_id, username, public_key, "
            "private_key, passphrase, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (cluster, user_id) DO UPDATE SET username = excluded.username, "
            "public_key = excluded.public_key, private_key = excluded.private_key, "
            "passphrase = excluded.passphrase, updated_at = excluded.updated_at",
            (cluster, user_id, username, public_key, private_key, passphrase, int(time.time())),
        )

    def delete_credential(self, cluster: str, user_id: str) -> bool:
        return (
            self._store.execute(
                "DELETE FROM hpc_credentials WHERE cluster = ? AND user_id = ?", (cluster, user_id)
            )
            == 1
        )

    # members' API keys -----------------------------------------------------------------------

    def add_user_key(self, sha256: str, user_id: str, name: str) -> None:
        self._store.execute(
            "INSERT INTO user_keys (sha256, user_id, name, created_at) VALUES (?, ?, ?, ?)",
            (sha256, user_id, name, int(time.time())),
        )

    def user_of_key(self, sha256: str) -> tuple[str, str] | None:
        rows = self._store.query("SELECT user_id, name FROM user_keys WHERE sha256 = ?", (sha256,))
        return (str(rows[0][0]), str(rows[0][1])) if rows else None

    def revoke_user_keys(self, user_id: str, name: str | None = None) -> int:
        if name is None:
            return self._store.execute("DELETE FROM user_keys WHERE user_id = ?", (user_id,))
        return self._store.execute(
            "DELETE FROM user_keys WHERE user_id = ? AND name = ?", (user_id, name)
        )
