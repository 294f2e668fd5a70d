"""`credsidecar hpc cert --out DIR` writes a private key: only into a directory of ours."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncssh
import pytest

from credsidecar.errors import ConfigError
from credsidecar.hpc.commands import _write_cert_files


def _issued() -> dict[str, Any]:
    return {"certificate": "ssh-ed25519-cert-v01@openssh.com AAAA", "known_hosts": "",
            "cluster": "hpc1", "host": "127.0.0.1", "port": 22, "username": "csalice"}  # fmt: skip


def test_the_key_goes_into_a_new_private_directory(tmp_path: Path) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    _write_cert_files(tmp_path / "out", key, _issued())
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "out" / "id_ed25519").stat().st_mode & 0o777 == 0o600


def test_a_directory_others_can_enter_is_refused_and_left_empty(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    key = asyncssh.generate_private_key("ssh-ed25519")
    with pytest.raises(ConfigError, match="other users can reach it"):
        _write_cert_files(shared, key, _issued())
    assert list(shared.iterdir()) == []
