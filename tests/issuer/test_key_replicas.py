"""Signing keys shared by replicas: two key rings on one store (a SQLite file, and PostgreSQL)
acting as two issuer replicas, each with its own connection and its own refresh schedule, under
one fake clock; private keys sealed in the store."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from joserfc import jwt

from credsidecar.errors import ConfigError
from credsidecar.issuer.config import IssuerConfig
from credsidecar.issuer.key_material import sealer_for_store
from credsidecar.issuer.keys import MAX_VIEW_AGE, PRUNE_GRACE, PUBLISH_DELAY, KeyRing
from credsidecar.issuer.sealing import Sealer
from credsidecar.issuer.store import Store, open_store
from tests.support.clock import FakeClock
from tests.support.postgres import issuer_config_on

KEK = bytes(range(32))
OTHER_KEK = bytes(range(1, 33))

OpenStore = Callable[[], Store]


def _config(tmp_path: Path, url: str | None = None) -> IssuerConfig:
    return issuer_config_on(tmp_path, url)


@pytest.fixture(params=["sqlite", "postgres"])
def connect(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenStore]:
    """Opens one more connection to the same store, as another replica would."""
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    config = _config(tmp_path, url)
    opened: list[Store] = []

    def open_one() -> Store:
        opened.append(open_store(config))
        return opened[-1]

    yield open_one
    for store in opened:
        store.close()


class Replica:
    """One issuer process's key ring with its refresh loop's schedule (every 5 s at `offset`)."""

    def __init__(self, ring: KeyRing, offset: int) -> None:
        self.ring, self.offset = ring, offset

    def tick(self, second: int, loop: bool) -> None:
        if loop and second % 5 == self.offset:
            self.ring.refresh()

    def published(self) -> set[str]:
        return {k["kid"] for k in self.ring.jwks()["keys"]}


def _replicas(
    connect: OpenStore, clock: Callable[[], float], tmp_path: Path, sealed: bool
) -> tuple[Replica, Replica]:
    sealer = Sealer(KEK) if sealed else None
    a = KeyRing(tmp_path / "keys", connect(), "ES256", clock, sealer=sealer)
    b = KeyRing(tmp_path / "keys", connect(), "ES256", clock, sealer=sealer)
    return Replica(a, 0), Replica(b, 3)


@pytest.mark.parametrize("loop", [True, False], ids=["refresh-loop", "no-refresh-loop"])
@pytest.mark.parametrize("skew", [-5, 0, 5])
def test_no_replica_signs_with_a_key_the_other_does_not_publish(
    connect: OpenStore, clock: FakeClock, tmp_path: Path, loop: bool, skew: int
) -> None:
    """Second by second through a rotation made at A (and a second one at B), both replicas
    sign; every token's kid is in both JWKS and verifies at the other replica. B's clock is off
    by `skew` seconds; without its refresh loop, B re-reads only when signing finds its view
    older than MAX_VIEW_AGE."""
    a, b = _replicas(connect, clock, tmp_path, sealed=True)
    b.ring = KeyRing(tmp_path / "keys", connect(), "ES256", lambda: clock() + skew,
                     sealer=Sealer(KEK))  # fmt: skip
    signers: set[str] = set()
    for second in range(3 * PUBLISH_DELAY + 2 * MAX_VIEW_AGE):
        if second == 2:
            a.ring.rotate()
        if second == PUBLISH_DELAY + MAX_VIEW_AGE:
            b.ring.rotate()
        a.tick(second, loop=True)
        b.tick(second, loop=loop)
        for signer, other in ((a, b), (b, a)):
            token, kid = signer.ring.sign({"sub": "alice", "exp": int(clock()) + 600})
            signers.add(kid)
            assert kid in signer.published() and kid in other.published(), second
            jwt.decode(token, other.ring.verification_keys())  # raises if it does not verify
        clock.advance(1)
    assert len(signers) == 3  # both rotations took effect


def test_a_rotation_is_not_signed_with_before_the_other_replica_publishes_it(
    connect: OpenStore, clock: FakeClock, tmp_path: Path
) -> None:
    """The failure this prevents: A rotates and signs at once while B, which has not re-read the
    keys yet, serves a JWKS without the new key (clouds and exchanges at B refuse the token)."""
    a, b = _replicas(connect, clock, tmp_path, sealed=False)
    new_kid = a.ring.rotate()
    _, kid = a.ring.sign({"sub": "alice", "exp": int(clock()) + 600})
    assert kid != new_kid and new_kid not in b.published()


def test_replicas_starting_on_an_empty_store_share_one_first_key(
    connect: OpenStore, clock: FakeClock, tmp_path: Path
) -> None:
    a, b = _replicas(connect, clock, tmp_path, sealed=True)
    assert a.ring.active is not None and b.ring.active == a.ring.active
    assert a.published() == b.published() == {a.ring.active.kid}


def test_a_retired_key_is_pruned_only_after_its_last_token_and_the_grace(
    connect: OpenStore, clock: FakeClock, tmp_path: Path
) -> None:
    a, b = _replicas(connect, clock, tmp_path, sealed=True)
    old = a.ring.active
    assert old is not None
    a.ring.rotate()
    clock.advance(PUBLISH_DELAY - 1)
    b.ring.refresh()
    clock.advance(1)
    a.ring.refresh()  # retires the old key
    retired_at = int(clock())
    # B has not re-read since: it still signs with the old key, a long-lived token, and has not
    # written that expiry to the store yet.
    clock.advance(MAX_VIEW_AGE - 2)
    _, kid = b.ring.sign({"sub": "alice", "exp": int(clock()) + 3600})
    long_exp = int(clock()) + 3600
    assert kid == old.kid
    # The grace covers B's unwritten signature; B writes it at its next refresh.
    clock.advance(retired_at + PRUNE_GRACE - 1 - int(clock()))
    a.ring.refresh()
    assert old.kid in a.published()
    b.ring.refresh()
    clock.advance(1)
    a.ring.refresh()
    assert old.kid in a.published()  # the grace has passed; B's token has not expired
    clock.advance(long_exp - int(clock()))
    a.ring.refresh()
    assert old.kid in a.published()
    clock.advance(1)
    a.ring.refresh()
    b.ring.refresh()
    assert old.kid not in a.published() and old.kid not in b.published()
    assert [r.kid for r in a.ring.records] == [r.kid for r in b.ring.records]


def test_a_retired_key_nobody_signed_with_goes_after_the_grace(
    connect: OpenStore, clock: FakeClock, tmp_path: Path
) -> None:
    a, _ = _replicas(connect, clock, tmp_path, sealed=False)
    old = a.ring.active
    assert old is not None
    a.ring.rotate()
    clock.advance(PUBLISH_DELAY)
    a.ring.refresh()
    clock.advance(PRUNE_GRACE - 1)
    a.ring.refresh()
    assert old.kid in a.published()
    clock.advance(1)
    a.ring.refresh()
    assert old.kid not in a.published()


def test_sealed_keys_are_not_private_keys_in_the_database(
    connect: OpenStore, clock: FakeClock, tmp_path: Path
) -> None:
    store = connect()
    ring = KeyRing(tmp_path / "keys", store, "RS256", clock, sealer=Sealer(KEK))
    ring.rotate(stage=True)
    rows = store.query("SELECT kid, sealed_key FROM keys")
    assert len(rows) == 2
    for kid, sealed in rows:
        data = bytes(sealed)
        assert b"PRIVATE KEY" not in data and b"BEGIN" not in data
        assert b"PRIVATE KEY" not in base64.b64decode(base64.b64encode(data))
        assert kid.encode() not in data
    assert not (tmp_path / "keys").exists()  # no key file anywhere
    # Another replica with the same KEK opens them and verifies what this one signs.
    other = KeyRing(tmp_path / "keys", connect(), "RS256", clock, sealer=Sealer(KEK))
    token, _ = ring.sign({"sub": "alice", "exp": int(clock()) + 60})
    jwt.decode(token, other.verification_keys())


def test_a_sealed_key_moved_to_another_row_does_not_open(
    connect: OpenStore, clock: FakeClock, tmp_path: Path
) -> None:
    store = connect()
    ring = KeyRing(tmp_path / "keys", store, "RS256", clock, sealer=Sealer(KEK))
    active = ring.active
    assert active is not None
    staged = ring.rotate(stage=True)
    store.execute(
        "UPDATE keys SET sealed_key = (SELECT sealed_key FROM keys WHERE kid = ?) WHERE kid = ?",
        (active.kid, staged),
    )
    with pytest.raises(ConfigError, match=f"signing key {staged} .* does not open"):
        KeyRing(tmp_path / "keys", connect(), "RS256", clock, sealer=Sealer(KEK))


def test_a_replica_with_another_kek_refuses_to_start_saying_why(
    connect: OpenStore, clock: FakeClock, tmp_path: Path
) -> None:
    KeyRing(tmp_path / "keys", connect(), "RS256", clock, sealer=Sealer(KEK))
    with pytest.raises(ConfigError) as refused:
        KeyRing(tmp_path / "keys", connect(), "RS256", clock, sealer=Sealer(OTHER_KEK))
    message = refused.value.message
    assert "does not open with the configured key-encryption key" in message
    assert "give every replica the same KEK" in message
    with pytest.raises(ConfigError, match="no key-encryption key is configured"):
        KeyRing(tmp_path / "keys", connect(), "RS256", clock)


def test_postgresql_without_a_kek_is_a_config_error_saying_what_to_set(tmp_path: Path) -> None:
    config = _config(tmp_path, "postgresql://credsidecar@db.example.org/issuer")
    with pytest.raises(ConfigError) as refused:
        sealer_for_store(config)
    message = refused.value.message
    assert "credsidecar issuer new-kek FILE" in message
    assert "key_encryption_key_file" in message and "$CREDSIDECAR_HPC_KEK" in message


def test_sqlite_keeps_key_files_and_needs_no_kek(tmp_path: Path) -> None:
    assert sealer_for_store(_config(tmp_path)) is None
