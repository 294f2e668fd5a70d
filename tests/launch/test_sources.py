"""Launch token sources and unverified claim reading."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from credsidecar.errors import ConfigError, Unavailable
from credsidecar.launch import EnvTokenSource, FileTokenSource, StaticTokenSource, read_claims
from credsidecar.launch.grants import AwsGrant


async def test_file_source_rereads_a_rotated_file(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("first.token.value\n")
    source = FileTokenSource(path)
    assert await source.read() == "first.token.value"
    # Rotation as kubelet does it: a new file renamed over the old one.
    (tmp_path / "new").write_text("second.token.value")
    (tmp_path / "new").replace(path)
    assert await source.read() == "second.token.value"


async def test_file_source_keeps_the_last_token_while_the_file_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("a.b.c")
    source = FileTokenSource(path)
    await source.read()
    path.unlink()
    assert await source.read() == "a.b.c"


async def test_file_source_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(Unavailable, match=f"cannot read token file {tmp_path / 'absent'}"):
        await FileTokenSource(tmp_path / "absent").read()
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(Unavailable, match="is empty"):
        await FileTokenSource(tmp_path / "empty").read()


async def test_env_source_removes_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAUNCH_TOKEN", "x.y.z")
    source = EnvTokenSource("LAUNCH_TOKEN")
    assert "LAUNCH_TOKEN" not in os.environ  # children of the sidecar never see it
    assert await source.read() == "x.y.z"


def test_empty_static_source_is_refused() -> None:
    with pytest.raises(ConfigError, match="standard input is empty"):
        StaticTokenSource("  \n", "standard input")


def test_read_claims_gives_user_run_and_identities() -> None:
    import jwt as pyjwt

    token = pyjwt.encode(
        {"iss": "https://id.example", "sub": "alice", "user": "alice", "run": "r1", "exp": 5,
         "identities": {"aws": [{"name": "a", "role_arn": "arn:aws:iam::1:role/a"}]}},
        "k" * 32, algorithm="HS256",
    )  # fmt: skip
    claims = read_claims(token)
    assert (claims.user, claims.run, claims.issuer, claims.expires_at) == (
        "alice", "r1", "https://id.example", 5,
    )  # fmt: skip
    assert claims.grants.get(AwsGrant) == AwsGrant(name="a", role_arn="arn:aws:iam::1:role/a")
    assert claims.grants.get(AwsGrant, "other") is None
    assert claims.who == "user alice (run r1)"


def test_read_claims_refuses_non_jwts() -> None:
    with pytest.raises(ConfigError, match="not a JWT"):
        read_claims("not a token")
