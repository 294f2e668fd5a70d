"""Signing keys: files and modes, RFC 7638 key ids, rotation, staging, pruning."""

from __future__ import annotations

import base64
import hashlib
import json
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import jwt as pyjwt
import pytest

from credsidecar.errors import Unavailable
from credsidecar.issuer.app import KEY_REFRESH_SECONDS
from credsidecar.issuer.keys import MAX_VIEW_AGE, PUBLISH_DELAY, REFRESH_SECONDS, KeyRing
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
    clock.advance(PUBLISH_DELAY)
    ring.refresh()
    _, signer = ring.sign({"sub": "a", "exp": int(clock()) + 60})
    assert signer == new_kid
    assert {k["kid"] for k in ring.jwks()["keys"]} == {old_kid, new_kid}
    clock.advance(3600 - PUBLISH_DELAY)
    ring.refresh()
    assert {k["kid"] for k in ring.jwks()["keys"]} == {old_kid, new_kid}
    clock.advance(1)
    ring.refresh()
    assert {k["kid"] for k in ring.jwks()["keys"]} == {new_kid}
    assert not (tmp_path / "keys" / f"{old_kid}.pem").exists()


def test_a_rotation_signs_only_after_the_publish_delay_even_in_one_process(
    tmp_path: Path, store: Store, clock: FakeClock
) -> None:
    """Consistency beats immediacy: workers and admin commands are replicas of the key view too."""
    ring = KeyRing(tmp_path / "keys", store, "RS256", clock)
    old = ring.active
    assert old is not None
    new_kid = ring.rotate()
    assert ring.rotate() == new_kid  # a second rotation before it starts keeps the one key
    assert new_kid in {k["kid"] for k in ring.jwks()["keys"]}
    clock.advance(PUBLISH_DELAY - 1)
    ring.refresh()
    assert ring.sign({"sub": "a", "exp": int(clock()) + 60})[1] == old.kid
    clock.advance(1)
    ring.refresh()
    assert ring.sign({"sub": "a", "exp": int(clock()) + 60})[1] == new_kid


def test_staged_key_is_published_before_it_signs(
    tmp_path: Path, store: Store, clock: FakeClock
) -> None:
    ring = KeyRing(tmp_path / "keys", store, "RS256", clock)
    active = ring.active
    assert active is not None
    staged = ring.rotate(stage=True)
    assert ring.rotate(stage=True) == staged  # staging twice keeps one pending key
    assert {k["kid"] for k in ring.jwks()["keys"]} == {active.kid, staged}
    clock.advance(3600)
    ring.refresh()
    assert ring.sign({"sub": "a", "exp": int(clock()) + 60})[1] == active.kid  # staged only
    # Published for longer than the publish delay already: the plain rotation starts it at once.
    assert ring.rotate() == staged
    assert ring.sign({"sub": "a", "exp": int(clock()) + 60})[1] == staged


def test_a_freshly_staged_key_starts_a_publish_delay_after_it_appeared(
    tmp_path: Path, store: Store, clock: FakeClock
) -> None:
    ring = KeyRing(tmp_path / "keys", store, "RS256", clock)
    staged = ring.rotate(stage=True)
    clock.advance(5)
    assert ring.rotate() == staged
    (record,) = [r for r in ring.records if r.kid == staged]
    assert record.state == "pending" and record.activate_at == int(clock()) - 5 + PUBLISH_DELAY


def test_another_process_rotation_is_seen_on_refresh(
    tmp_path: Path, store: Store, clock: FakeClock
) -> None:
    server = KeyRing(tmp_path / "keys", store, "RS256", clock)
    admin = KeyRing(tmp_path / "keys", Store(tmp_path / "issuer.db"), "RS256", clock)
    new_kid = admin.rotate()
    server.refresh()
    assert new_kid in {k["kid"] for k in server.jwks()["keys"]}
    clock.advance(PUBLISH_DELAY)
    server.refresh()
    assert server.sign({"sub": "a", "exp": int(clock()) + 60})[1] == new_kid


def test_the_refresh_interval_is_the_one_the_server_loop_uses() -> None:
    """keys.py's bounds are computed from it; app.py's loop must run at that pace."""
    assert REFRESH_SECONDS == KEY_REFRESH_SECONDS
    assert PUBLISH_DELAY >= 2 * REFRESH_SECONDS + 5
    assert MAX_VIEW_AGE <= PUBLISH_DELAY - 5


def test_signing_writes_no_row_until_the_refresh_flushes_the_latest_expiry(
    tmp_path: Path, store: Store, clock: FakeClock
) -> None:
    ring = KeyRing(tmp_path / "keys", store, "RS256", clock)
    now = int(clock())
    for lifetime in (600, 3600, 60):
        kid = ring.sign({"sub": "a", "exp": now + lifetime})[1]
    assert store.key_records()[0].last_exp == 0
    ring.refresh()
    assert [(r.kid, r.last_exp) for r in store.key_records()] == [(kid, now + 3600)]
    ring.sign({"sub": "a", "exp": now + 7200})
    ring.close()
    assert store.key_records()[0].last_exp == now + 7200


class FlakyStore:
    """A store whose next `record_signatures` fails as a database outage does."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.fail_next = False

    def record_signatures(self, exps: Mapping[str, int]) -> None:
        if self.fail_next:
            self.fail_next = False
            raise Unavailable("the issuer database is unreachable")
        self._store.record_signatures(exps)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def test_expiries_not_written_during_an_outage_are_written_at_the_next_refresh(
    tmp_path: Path, store: Store, clock: FakeClock
) -> None:
    flaky = FlakyStore(store)
    ring = KeyRing(tmp_path / "keys", cast(Store, flaky), "RS256", clock)
    now = int(clock())
    ring.sign({"sub": "a", "exp": now + 3600})
    flaky.fail_next = True
    with pytest.raises(Unavailable):
        ring.refresh()
    ring.sign({"sub": "a", "exp": now + 600})
    ring.refresh()
    assert store.key_records()[0].last_exp == now + 3600


def test_a_stale_view_is_re_read_before_signing(
    tmp_path: Path, store: Store, clock: FakeClock
) -> None:
    """No refresh loop at all (a stalled event loop): signing still never uses a view older
    than MAX_VIEW_AGE, so a key retired elsewhere stops signing here within that bound."""
    server = KeyRing(tmp_path / "keys", store, "RS256", clock)
    admin = KeyRing(tmp_path / "keys", Store(tmp_path / "issuer.db"), "RS256", clock)
    old = server.active
    new_kid = admin.rotate()
    clock.advance(PUBLISH_DELAY - 1)
    server.refresh()  # its last look: the new key is still pending
    clock.advance(1)
    admin.refresh()  # activates it
    clock.advance(MAX_VIEW_AGE - 2)
    assert old is not None and server.sign({"sub": "a", "exp": int(clock()) + 60})[1] == old.kid
    clock.advance(1)
    assert server.sign({"sub": "a", "exp": int(clock()) + 60})[1] == new_kid


class DownStore:
    """A store whose reads fail while `down`, counting the attempts."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.down = False
        self.reads = 0

    def key_records(self) -> list[Any]:
        self.reads += 1
        if self.down:
            raise Unavailable("the issuer database db.example.org/issuer is unreachable")
        return self._store.key_records()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def test_signing_with_the_store_down_fails_fast_after_one_attempt_a_second(
    tmp_path: Path, store: Store, clock: FakeClock
) -> None:
    down = DownStore(store)
    ring = KeyRing(tmp_path / "keys", cast(Store, down), "RS256", clock)
    down.down = True
    clock.advance(MAX_VIEW_AGE)
    reads = down.reads
    for _ in range(5):
        with pytest.raises(Unavailable, match=r"keys could not be re-read: .* unreachable"):
            ring.sign({"sub": "a", "exp": int(clock()) + 60})
    assert down.reads == reads + 1
    down.down = False
    clock.advance(1)
    active = ring.active
    assert active is not None
    assert ring.sign({"sub": "a", "exp": int(clock()) + 60})[1] == active.kid
