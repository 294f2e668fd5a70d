"""The SSH certificate authority: signs short-lived OpenSSH user certificates for launches.

The CA key (Ed25519) is created on first use as `keys/ssh-ca` (mode 0600, O_EXCL) beside the
JWT signing keys. With a shared store (PostgreSQL, several replicas) it lives in the store's
`secrets` table instead, sealed with the key-encryption key: the first replica to start creates
it (the first writer wins) and every replica signs with the same CA. A cluster admin trusts it
with `TrustedUserCAKeys`; `credsidecar hpc ca-public-key` prints the line to add.

What a certificate carries, and why:
- principals: exactly one, the user's Linux username on that cluster. Never empty: sshd takes an
  empty principal list as "any user".
- key id: `credsidecar:<user>:<run>:<cluster>`, which sshd logs at every login (`Accepted
  publickey ... ID credsidecar:alice:run-1:hpc1`), so the cluster's logs name the person.
- validity: from 60 s before now (clock skew) until the requested lifetime, never beyond the
  launch token's expiry.
- extensions: none. A batch session runs commands; it needs no PTY, X11, agent or port
  forwarding, and no ~/.ssh/rc.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import asyncssh
from cryptography.hazmat.primitives.asymmetric import rsa

from credsidecar.errors import BadRequest, ConfigError
from credsidecar.issuer.sealing import Sealer, SealingError

if TYPE_CHECKING:
    from credsidecar.issuer.config import IssuerConfig
    from credsidecar.issuer.store import Store

__all__ = [
    "CLOCK_SKEW",
    "SignedCertificate",
    "SshCa",
    "configured_ca_public_key",
    "refuse_private_key",
]

# The armour line that opens any private key: PEM (PKCS#1, SEC1, PKCS#8, encrypted PKCS#8), the
# OpenSSH format and RFC 4716's four-dash form; asyncssh would import any of them as a public
# key. (`[ ]` keeps the pattern itself from reading as key armour to secret scanners.)
_PRIVATE_KEY = re.compile(r"-{4,5} ?BEGIN [A-Z0-9 ]*PRIVATE[ ]KEY ?-{4,5}", re.IGNORECASE)

CLOCK_SKEW = 60  # seconds a certificate is valid before it is issued
ACCEPTED_KEY_TYPES = (
    b"ssh-ed25519",
    b"ecdsa-sha2-nistp256",
    b"ecdsa-sha2-nistp384",
    b"ecdsa-sha2-nistp521",
    b"ssh-rsa",
)
MIN_RSA_BITS = 3072
# The CA key's name in the store's `secrets` table, and the associated data it is sealed under.
CA_ROW = "ssh-ca"


@dataclass(frozen=True)
class SignedCertificate:
    certificate: str  # one OpenSSH line: "ssh-ed25519-cert-v01@openssh.com AAAA... key-id"
    key_id: str
    principal: str
    valid_after: int
    valid_before: int
    serial: int
    fingerprint: str  # of the signed public key, for the audit trail


class SshCa:
    """The CA key from `key_dir/ssh-ca`, or, given a shared `store` and the `sealer`, from the
    store (read at once, so a wrong key-encryption key fails at start)."""

    def __init__(
        self, key_dir: Path, *, store: Store | None = None, sealer: Sealer | None = None
    ) -> None:
        self._path = key_dir / "ssh-ca"
        self._lock = threading.Lock()
        self._key: asyncssh.SSHKey | None = None
        if store is not None:
            if sealer is None:
                raise ConfigError(
                    "the SSH CA key is kept in the shared issuer database and no key-encryption "
                    "key is configured; set [hpc] key_encryption_key_file (or its variable)"
                )
            self._key = _shared_key(store, sealer)

    def _load(self) -> asyncssh.SSHKey:
        with self._lock:
            if self._key is None:
                if not self._path.exists():
                    _create_key_file(self._path)
                self._key = asyncssh.read_private_key(self._path)
            return self._key

    def public_key_line(self) -> str:
        """The line for a cluster's TrustedUserCAKeys file."""
        return self._load().export_public_key().decode().strip()

    def sign(
        self, public_key: str, principal: str, key_id: str, now: int, not_after: int, serial: int
    ) -> SignedCertificate:
        if not principal:
            raise BadRequest("refusing to sign a certificate without a principal (any user)")
        user_key = parse_public_key(public_key)
        valid_after = now - CLOCK_SKEW
        cert = self._load().generate_user_certificate(
            user_key,
            key_id,
            serial=serial,
            principals=[principal],
            valid_after=valid_after,
            valid_before=not_after,
            permit_x11_forwarding=False,
            permit_agent_forwarding=False,
            permit_port_forwarding=False,
            permit_pty=False,
            permit_user_rc=False,
        )
        line = cert.export_certificate().decode().strip()
        fingerprint = str(user_key.get_fingerprint("sha256"))
        return SignedCertificate(line, key_id, principal, valid_after, not_after, serial,
                                 fingerprint)  # fmt: skip


def _create_key_file(path: Path) -> None:
    """Writes a new CA key to a private temporary file, then links it into place: `path` appears
    whole or not at all, so another worker process (workers share the key directory) never
    reads it half-written; if one linked its key first, that one stays and ours is dropped."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = asyncssh.generate_private_key("ssh-ed25519", comment="credsidecar CA")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(key.export_private_key())
            out.flush()
            os.fsync(out.fileno())
        with contextlib.suppress(FileExistsError):  # another process's key won: use theirs
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _shared_key(store: Store, sealer: Sealer) -> asyncssh.SSHKey:
    """The CA key sealed in `store`, created there by the first replica that needs it."""
    sealed = store.get_secret(CA_ROW)
    if sealed is None:
        key = asyncssh.generate_private_key("ssh-ed25519", comment="credsidecar CA")
        mine = sealer.seal(key.export_private_key(), CA_ROW)
        sealed = store.put_secret_if_absent(CA_ROW, mine)  # another replica's, if it won
    try:
        return asyncssh.import_private_key(sealer.open(sealed, CA_ROW))
    except SealingError as exc:
        raise ConfigError(
            "the SSH CA key in the issuer database does not open with the configured "
            "key-encryption key (a different KEK than the replica that created it, or a "
            "tampered row); give every replica the same KEK ([hpc] key_encryption_key_file "
            "or its variable)"
        ) from exc


def configured_ca_public_key(config: IssuerConfig) -> str:
    """The CA line of the issuer `config` describes, read where its replicas keep the key (for
    `credsidecar hpc ca-public-key --config`)."""
    if not config.store.postgres:
        return SshCa(config.key_dir).public_key_line()
    from credsidecar.issuer.key_material import sealer_for_store
    from credsidecar.issuer.store import open_store

    sealer = sealer_for_store(config)
    store = open_store(config)
    try:
        return SshCa(config.key_dir, store=store, sealer=sealer).public_key_line()
    finally:
        store.close()


def refuse_private_key(text: object, field: str = "public_key") -> None:
    """Refuses (400) a private key sent where a public key belongs, without echoing it: its
    owner must learn that it has left their machine."""
    if isinstance(text, str) and _PRIVATE_KEY.search(text):
        raise BadRequest(
            f"{field}: that is a private key; send the .pub file (e.g. ~/.ssh/id_ed25519.pub)"
            " — and treat this key as leaked: replace it and remove it wherever it is trusted"
        )


def parse_public_key(text: str) -> asyncssh.SSHKey:
    """An OpenSSH public key line the CA will sign: a known type, RSA of at least 3072 bits."""
    refuse_private_key(text)
    if not isinstance(text, str) or not text.strip() or len(text) > 16_384:
        raise BadRequest("public_key must be one OpenSSH public key line (`ssh-ed25519 AAAA...`)")
    try:
        key = asyncssh.import_public_key(text.strip())
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise BadRequest(f"public_key is not an OpenSSH public key: {exc}") from exc
    if key.algorithm not in ACCEPTED_KEY_TYPES:
        raise BadRequest(
            f"public_key type {key.algorithm.decode()} is not accepted; use ssh-ed25519 (or "
            "ECDSA, or RSA of 3072 bits or more)"
        )
    if key.algorithm == b"ssh-rsa":
        rsa_key = key.pyca_key
        bits = rsa_key.key_size if isinstance(rsa_key, rsa.RSAPublicKey) else 0
        if bits < MIN_RSA_BITS:
            raise BadRequest(f"RSA public_key has {bits} bits; at least {MIN_RSA_BITS} needed")
    return key
