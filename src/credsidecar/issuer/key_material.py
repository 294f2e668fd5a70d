"""Where the issuer's private keys live: `<kid>.pem` files on one node, sealed rows in a shared
store.

- One node (SQLite, the default): each signing key is a `<kid>.pem` file (mode 0600) in the key
  directory (mode 0700); the store holds only its metadata.
- Several replicas (`[store] url`, PostgreSQL): every replica needs every key, so the private key
  travels in the key's row (`sealed_key`), sealed with AES-256-GCM under the key-encryption key
  (sealing.py) and bound to its kid as associated data: the database never holds a private key in
  plain text, and a sealed key copied into another row does not open. The KEK comes from the
  `[hpc] key_encryption_key_file` / `key_encryption_key_env` settings (one KEK for everything the
  issuer seals), never from the database.

A key row with a `sealed_key` opens with the sealer whatever the store, and one without is read
from its file, so a key directory carried over still works.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from joserfc.jwk import ECKey, RSAKey

from credsidecar.errors import ConfigError
from credsidecar.issuer.sealing import Sealer, SealingError, load_kek

if TYPE_CHECKING:  # config.py imports keys.py, which imports this module
    from credsidecar.issuer.config import IssuerConfig

__all__ = ["KeyMaterial", "SigningKey", "sealer_for_store", "signing_key_context"]

SigningKey = RSAKey | ECKey


def signing_key_context(kid: str) -> str:
    """The associated data a signing key is sealed under: its row's kid."""
    return f"issuer signing key {kid}"


def sealer_for_store(config: IssuerConfig) -> Sealer | None:
    """The sealer for keys kept in a shared store: required with PostgreSQL, None with SQLite
    (keys stay files there). A missing or malformed KEK is a ConfigError at start."""
    kek = load_kek(config.kek_file, config.kek_env)
    if not config.store.postgres:
        return None
    if kek is None:
        raise ConfigError(
            "[store] url is a PostgreSQL database: the issuer keeps its signing keys and SSH CA "
            "key there, sealed with a key-encryption key, and none is configured; create one with "
            "`credsidecar issuer new-kek FILE` and set [hpc] key_encryption_key_file = FILE (or "
            f"the variable ${config.kek_env or 'CREDSIDECAR_HPC_KEK'}), the same on every replica"
        )
    return Sealer(kek)


def _write_private(path: Path, pem: bytes) -> None:
    # O_EXCL + mode 0600 at creation: the key is never readable by others, not even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)


def _import(pem: bytes, alg: str) -> SigningKey:
    return RSAKey.import_key(pem) if alg == "RS256" else ECKey.import_key(pem)


class KeyMaterial:
    """Saves, loads and deletes private signing keys: sealed for the store when a sealer is
    given, else as files in `key_dir`."""

    def __init__(self, key_dir: Path, sealer: Sealer | None = None) -> None:
        self._dir = key_dir
        self._sealer = sealer
        if sealer is None:
            key_dir.mkdir(parents=True, exist_ok=True)
            key_dir.chmod(0o700)

    @property
    def sealed(self) -> bool:
        return self._sealer is not None

    def save(self, kid: str, key: SigningKey) -> bytes | None:
        """Keeps `key`: returns its sealed form for the key's row, or None once the file is
        written (before the row exists, so no replica ever sees a row without its key)."""
        pem = key.as_pem(private=True)
        if self._sealer is not None:
            return self._sealer.seal(pem, signing_key_context(kid))
        _write_private(self._dir / f"{kid}.pem", pem)
        return None

    def load(self, kid: str, alg: str, sealed_key: bytes | None) -> SigningKey:
        if sealed_key is not None:
            return _import(self._open(kid, sealed_key), alg)
        path = self._dir / f"{kid}.pem"
        try:
            return _import(path.read_bytes(), alg)
        except OSError as exc:
            raise ConfigError(
                f"key {kid} is listed in the issuer database but {path} cannot be read "
                f"({exc.strerror}); restore the key directory or rotate-key"
            ) from exc

    def _open(self, kid: str, sealed_key: bytes) -> bytes:
        if self._sealer is None:
            raise ConfigError(
                f"signing key {kid} is sealed in the issuer database and no key-encryption key "
                "is configured; set [hpc] key_encryption_key_file (or its variable) to the KEK "
                "the other replicas use"
            )
        try:
            return self._sealer.open(sealed_key, signing_key_context(kid))
        except SealingError as exc:
            raise ConfigError(
                f"signing key {kid} in the issuer database does not open with the configured "
                "key-encryption key (a different KEK than the replica that created it, or a "
                "tampered row); give every replica the same KEK ([hpc] key_encryption_key_file "
                "or its variable)"
            ) from exc

    def discard(self, kid: str) -> None:
        """Removes a key's file, if it has one (a sealed key goes with its row)."""
        (self._dir / f"{kid}.pem").unlink(missing_ok=True)
