"""Sealed secrets open only with the same key and the same row and field."""

from __future__ import annotations

import base64
import secrets
from pathlib import Path

import pytest

from credsidecar.errors import ConfigError
from credsidecar.issuer.sealing import Sealer, SealingError, load_kek, new_kek_text


def test_a_sealed_value_opens_only_in_its_own_context_with_its_own_key() -> None:
    sealer = Sealer(secrets.token_bytes(32))
    plaintext = secrets.token_bytes(64)  # stands for a member's private key file
    sealed = sealer.seal(plaintext, "hpc2/bob/private_key")
    assert plaintext not in sealed
    assert sealer.open(sealed, "hpc2/bob/private_key") == plaintext
    with pytest.raises(SealingError, match="hpc2/alice/private_key"):
        sealer.open(sealed, "hpc2/alice/private_key")  # copied into another member's row
    with pytest.raises(SealingError):
        Sealer(secrets.token_bytes(32)).open(sealed, "hpc2/bob/private_key")
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(SealingError):
        sealer.open(tampered, "hpc2/bob/private_key")
    assert sealer.seal(b"x", "c") != sealer.seal(b"x", "c")  # a fresh nonce each time


def test_the_key_comes_from_a_private_file_or_a_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "kek"
    path.write_text(new_kek_text())
    path.chmod(0o600)
    assert len(load_kek(path, None) or b"") == 32
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        load_kek(path, None)
    monkeypatch.setenv("KEK", base64.b64encode(b"short").decode())
    with pytest.raises(ConfigError, match="holds 5 bytes"):
        load_kek(None, "KEK")
    monkeypatch.setenv("KEK", "not base64!")
    with pytest.raises(ConfigError, match="not base64"):
        load_kek(None, "KEK")
    monkeypatch.delenv("KEK")
    assert load_kek(None, "KEK") is None
