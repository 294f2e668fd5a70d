"""Signing keys: files and modes, RFC 7638 key ids, rotation, staging, pruning."""

from __future__ import annotations

import base64
import hashlib
import json
import stat
from pathlib import Path

import jwt as pyjwt
import pytest

from credsidecar.issuer.keys import KeyRing
from credsidecar.issuer.store import Store
from tests.support.clock import FakeClock


def rfc7638_thumbprint(jwk: dict[str, str]) -> str:
    """Computed here from the RFC, independently of the code under test."""
    members = ("e", "kty", "n") if jwk["kty"] == "RSA" else ("crv", "kty", "x", "y")
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    digest = hashlib.sha256(canonical.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "issuer.db")


@pytest.mark.parametrize(("alg", "kty"), [("RS256", "RSA"), ("ES256", "EC")])
def test_first_start_creates_a_private_key_file_readable_only_by_owner(
    tmp_path: Path, store: Store, clock: FakeClock, alg: str, kty: str
) -> None:
    ring = KeyRing(tmp_path / "keys", store, alg, clock)
    (jwk,) = ring.jwks()["keys"]
    assert jwk["kty"] == kty and jwk["alg"] == alg
    assert jwk["kid"] == rfc7638_thumbprint(jwk)
    key_file = tmp_path / "keys" / f"{jwk['kid']}.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "issuer.db").stat().st_mode) == 0o600


def test_restart_reuses_the_same_key(tmp_path: Path, store: Store, clock: FakeClock) -> None:
    first = KeyRing(tmp_path / "keys", store, "RS256", clock).active
    second = KeyRing(tmp_path / "keys", store, "RS256", clock).active
    assert first is not None and second is not None and first.kid == second.kid


def test_es256_tokens_verify_with_pyjwt(tmp_path: Path, store: Store, clock: FakeClock) -> None:
    ring = KeyRing(tmp_path / "keys", store, "ES256", clock)
    token, kid = ring.sign({"sub": "alice", "exp": int(clock()) + 60})
    key = pyjwt.PyJWKSet.from_dict(ring.jwks())[kid]
    claims = pyjwt.decode(token, key.key, algorithms=["ES256"], options={"verify_exp": False})
    assert claims["sub"] == "alice"


def test_retired_key_stays_published_until_its_last_token_expires(
    tmp_path: Path, store: Store, clock: FakeClock
) -> None:
    ring = KeyRing(tmp_path / "keys", store, "RS256", clock)
    _, old_kid = ring.sign({"sub": "a", "exp": int(clock()) + 3600})
    new_kid = ring.rotate()
    assert new_kid != old_kid
    _, signer = ring.sign({"sub": "a", "exp": int(clock()) + 60})
    assert signer == new_kid
    assert {k["kid"] for k in ring.jwks()["keys"]} == {old_kid, new_kid}
    clock.advance(3600)
    ring.refresh()
    assert {k["kid"] for k in ring.jwks()["keys"]} == {old_kid, new_kid}
    clock.advance(1)
    ring.refresh()
    assert {k["kid"] for k in ring.jwks()["keys"]} == {new_kid}
    assert not (tmp_path / "keys" / f"{old_kid}.pem").exists()


def test_staged_key_is_published_before_it_signs(
    tmp_path: Path, store: Store, clock: FakeClock
) -> None:
    ring = KeyRing(tmp_path / "keys", store, "RS256", clock)
    active = ring.active
    assert active is not None
    staged = ring.rotate(stage=True)
    assert ring.rotate(stage=True) == staged  # staging twice keeps one pending key
    assert {k["kid"] for k in ring.jwks()["keys"]} == {active.kid, staged}
    assert ring.sign({"sub": "a", "exp": int(clock()) + 60})[1] == active.kid
    assert ring.rotate() == staged
    assert ring.sign({"sub": "a", "exp": int(clock()) + 60})[1] == staged


def test_another_process_rotation_is_seen_on_refresh(
    tmp_path: Path, store: Store, clock: FakeClock
) -> None:
    server = KeyRing(tmp_path / "keys", store, "RS256", clock)
    admin = KeyRing(tmp_path / "keys", Store(tmp_path / "issuer.db"), "RS256", clock)
    new_kid = admin.rotate()
    server.refresh()
    assert server.sign({"sub": "a", "exp": int(clock()) + 60})[1] == new_kid
