"""What a launch may do over SSH, authenticated by its launch token (the run's revocation and the
user's state re-checked every time by the verifier handed in at start-up):

- certificate mode: `certificate` signs the launch's public key for the user's Linux username;
- stored-key mode: `stored_key` says which key and username to log in with, and `sign` signs
  the SSH user-authentication request with the stored key inside the issuer, so the private key
  never leaves it. `sign` checks that what it signs is exactly a `publickey` request for that
  username and key, so the issuer is no general-purpose signing oracle for the key.

Clusters and members' credentials are managed in hpc_service.py.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any

import asyncssh

from credsidecar.audit import AuditLog
from credsidecar.errors import BadRequest, Forbidden, InvalidGrant, Unavailable
from credsidecar.issuer.hpc_registry import (
    CERTIFICATE,
    STORED_KEY,
    Cluster,
    HpcRegistry,
    StoredCredential,
)
from credsidecar.issuer.hpc_service import find_cluster, linux_username, text_field
from credsidecar.issuer.policy import Policy
from credsidecar.issuer.policy_watch import PolicyHolder
from credsidecar.issuer.sealing import Sealer
from credsidecar.issuer.ssh_ca import SshCa, refuse_private_key
from credsidecar.issuer.ssh_userauth import check_userauth_request
from credsidecar.launch.grants import Grants

__all__ = ["HpcLaunches", "LaunchVerifier"]

# The claims of a launch token that is valid and whose run and user are still active (else a
# CredsidecarError saying why): the token service's verification, handed in at start-up.
LaunchVerifier = Callable[[str], Mapping[str, Any]]


class HpcLaunches:
    """Takes only what it uses, composed at start-up (assembly.py)."""

    def __init__(
        self,
        *,
        policy: PolicyHolder,
        registry: HpcRegistry,
        audit: AuditLog,
        verify_launch: LaunchVerifier,
        ca: SshCa,
        sealer: Sealer | None,
        certificate_lifetime: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._policy = policy
        self._registry = registry
        self._audit_log = audit
        self._verify_launch = verify_launch
        self._ca = ca
        self._sealer = sealer
        self.certificate_lifetime = certificate_lifetime
        self._clock = clock

    @property
    def policy(self) -> Policy:
        return self._policy.current

    # launches --------------------------------------------------------------------------------

    def _launch(self, body: Any) -> tuple[Mapping[str, Any], Cluster]:
        token = text_field(body, "launch_token", limit=40_000) or ""
        claims = self._verify_launch(token)
        user, run = str(claims["user"]), str(claims["run"])
        cluster = find_cluster(self._registry, text_field(body, "cluster") or "")
        # A cluster the policy also names ([identities.hpc.NAME]) is used only by launches its
        # grants gave it to, like any other identity; a registry-only cluster by any member.
        if cluster.name in self.policy.identities["hpc"]:
            granted = Grants.from_claim(claims.get("identities"), error=InvalidGrant).names("hpc")
            if cluster.name not in granted:
                raise Forbidden(
                    f"run {run!r} of user {user!r} is not granted HPC cluster {cluster.name!r}; "
                    'the policy\'s grants with provider = "hpc" decide which launches may use it '
                    f"(`credsidecar issuer explain --config CONFIG --user {user}` shows them)"
                )
        return claims, cluster

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
            raise BadRequest(
                f"cluster {cluster.name!r} uses stored keys, not certificates (run {run!r} of "
                f"user {user!r}); `hpc cert` needs a certificate cluster, `hpc run` uses either"
            )
        username = linux_username(self.policy, cluster, user)
        if not username:
            raise Forbidden(
                f"user {user!r} has no Linux username on cluster {cluster.name!r}; "
                "an owner adds it (`credsidecar hpc cluster edit "
                f"{cluster.name} --username {user}=LINUXNAME`)"
            )
        lifetime = body.get("lifetime", self.certificate_lifetime)
        if not isinstance(lifetime, int) or isinstance(lifetime, bool) or lifetime < 60:
            raise BadRequest("lifetime must be an integer number of seconds, at least 60")
        now = int(self._clock())
        not_after = min(now + min(lifetime, self.certificate_lifetime), int(claims["exp"]))
        if not_after <= now:
            raise Forbidden(
                f"the launch token of run {run!r} of user {user!r} has expired; relaunch the run"
            )
        key_id = f"credsidecar:{user}:{run}:{cluster.name}"
        signed = self._ca.sign(
            text_field(body, "public_key", limit=16_384) or "",
            username,
            key_id,
            now,
            not_after,
            secrets.randbits(63),
        )
        self._audit_log.event(
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
        found = self._registry.credential(cluster.name, user)
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
            data = base64.b64decode(text_field(body, "data", limit=16_384) or "", validate=True)
        except (binascii.Error, ValueError) as exc:
            raise BadRequest("data must be base64") from exc
        public = asyncssh.import_public_key(found.public_key)
        check_userauth_request(data, found.username, public.public_data)
        if self._sealer is None:
            raise Unavailable(
                "stored-key mode needs the issuer's key-encryption key", retry_after=60
            )
        context = f"{cluster.name}/{user}"
        sealed = self._registry.sealed_secrets(cluster.name, user)
        assert sealed is not None
        private_text = self._sealer.open(sealed[0], f"{context}/private_key").decode()
        passphrase = (
            self._sealer.open(sealed[1], f"{context}/passphrase").decode()
            if sealed[1] is not None
            else None
        )
        key = asyncssh.import_private_key(private_text, passphrase)
        algorithm = text_field(body, "algorithm", required=False) or key.sig_algorithms[0].decode()
        if algorithm.encode() not in key.sig_algorithms:
            raise BadRequest(f"algorithm {algorithm!r} is not one the key signs with")
        signature = key.sign(data, algorithm.encode())
        self._audit_log.event(
            "hpc.stored_key.used",
            user=user,
            run=run,
            cluster=cluster.name,
            username=found.username,
            fingerprint=found.fingerprint,
        )
        return {"signature": base64.b64encode(signature).decode()}
