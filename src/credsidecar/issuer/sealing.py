"""Encryption at rest for members' stored SSH keys: AES-256-GCM under a key-encryption key.

The key-encryption key (KEK) comes from a file (`[hpc] key_encryption_key_file`, 32 random
bytes written base64 by `credsidecar issuer new-kek`) or an environment variable, never from
the database it protects. Each sealed value is bound to its row and field (cluster, user,
field) as associated data, so a ciphertext copied into another member's row does not open.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from credsidecar.errors import ConfigError, CredsidecarError

__all__ = ["Sealer", "SealingError", "load_kek", "new_kek_text"]

NONCE_BYTES = 12
VERSION = b"\x01"


class SealingError(CredsidecarError):
    status = 500
    code = "server_error"


def new_kek_text() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode() + "\n"


def _decode(text: str, where: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ConfigError(
            f"{where}: not base64 ({exc}); create one with `credsidecar issuer new-kek FILE`"
        ) from exc
    if len(key) != 32:
        raise ConfigError(
            f"{where}: holds {len(key)} bytes; a key-encryption key is 32 bytes "
            "(`credsidecar issuer new-kek FILE`)"
        )
    return key


def load_kek(path: Path | None, env_name: str | None) -> bytes | None:
    """The KEK from the file, else from the variable; None when neither is configured."""
    if path is not None:
        try:
            mode = path.stat().st_mode & 0o077
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"key_encryption_key_file {path}: {exc.strerror}") from exc
        if mode:
            raise ConfigError(
                f"key_encryption_key_file {path} is readable by others; chmod 600 {path}"
            )
        return _decode(text, f"key_encryption_key_file {path}")
    if env_name and os.environ.get(env_name):
        return _decode(os.environ[env_name], f"${env_name}")
    return None


class Sealer:
    def __init__(self, kek: bytes) -> None:
        self._aead = AESGCM(kek)

    def seal(self, plaintext: bytes, context: str) -> bytes:
        nonce = secrets.token_bytes(NONCE_BYTES)
        return VERSION + nonce + self._aead.encrypt(nonce, plaintext, context.encode())

    def open(self, sealed: bytes, context: str) -> bytes:
        if sealed[:1] != VERSION:
            raise SealingError(f"stored secret for {context} has an unknown format")
        nonce, body = sealed[1 : 1 + NONCE_BYTES], sealed[1 + NONCE_BYTES :]
        try:
            return self._aead.decrypt(nonce, body, context.encode())
        except InvalidTag as exc:
            raise SealingError(
                f"stored secret for {context} does not open with the configured key-encryption "
                "key (a different key, or a tampered row); the member must upload it again"
            ) from exc
