"""The issuer's services are composed at start-up: what is misconfigured fails there, and admin
actions that change state write their own audit events."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from credsidecar.errors import ConfigError, CredsidecarError
from credsidecar.issuer.config import load_config
from credsidecar.issuer.example import write_example
from credsidecar.issuer.runner import open_service
from tests.issuer.conftest import IssuerFixture


@pytest.fixture
def config_with_kek_file(tmp_path: Path) -> tuple[Path, Path]:
    config_path, _ = write_example(tmp_path, port=8400)
    kek = tmp_path / "kek"
    text = config_path.read_text()
    assert "[hpc]" not in text
    config_path.write_text(text + f'\n[hpc]\nkey_encryption_key_file = "{kek}"\n')
    return config_path, kek


def test_a_bad_key_encryption_key_fails_when_the_issuer_opens(
    config_with_kek_file: tuple[Path, Path],
) -> None:
    config_path, kek = config_with_kek_file
    kek.write_text("not base64!\n")
    kek.chmod(0o600)
    config = load_config(config_path)
    expected = r"key_encryption_key_file .*kek: not base64.*new-kek"
    with pytest.raises(ConfigError, match=expected), open_service(config):
        pass


def test_the_issuer_refuses_to_start_with_a_key_encryption_key_others_can_read(
    config_with_kek_file: tuple[Path, Path],
) -> None:
    """`credsidecar issuer` exits at once with one readable line, before it listens."""
    config_path, kek = config_with_kek_file
    kek.write_text("AAAA\n")
    kek.chmod(0o644)
    done = subprocess.run(
        [sys.executable, "-m", "credsidecar", "issuer", "--config", str(config_path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert f"credsidecar: key_encryption_key_file {kek} is readable by others; chmod 600" in (
        done.stderr
    )
    assert "Traceback" not in done.stderr


def _events(issuer: IssuerFixture, name: str) -> list[dict[str, object]]:
    return [e for e in issuer.audit_events() if e["event"] == name]


def test_member_keys_are_created_and_revoked_by_the_hpc_service_with_audit_events(
    issuer: IssuerFixture,
) -> None:
    hpc = issuer.service.hpc
    key = hpc.new_member_key("alice", "laptop")
    assert hpc.authenticate(key).user_id == "alice"
    assert hpc.revoke_member_keys("alice", "laptop") == 1
    created = _events(issuer, "member_key.created")
    revoked = _events(issuer, "member_key.revoked")
    assert [(e["user"], e["name"]) for e in created] == [("alice", "laptop")]
    assert [(e["user"], e["name"], e["count"]) for e in revoked] == [("alice", "laptop", 1)]
    assert key not in json.dumps(issuer.audit_events())


def test_a_member_key_is_only_for_a_policy_user(issuer: IssuerFixture) -> None:
    with pytest.raises(CredsidecarError, match="mallory"):
        issuer.service.hpc.new_member_key("mallory", "x")
    assert not _events(issuer, "member_key.created")


def test_rotating_the_signing_key_is_an_audit_event(issuer: IssuerFixture) -> None:
    staged = issuer.service.tokens.rotate_key(stage=True)
    active = issuer.service.tokens.rotate_key(stage=False)
    events = [(e["event"], e["kid"]) for e in issuer.audit_events() if "kid" in e]
    assert events[-2:] == [("key.staged", staged), ("key.rotated", active)]
