"""Signing keys: generated on first start, rotated on request, published until safe to drop.

Every issuer process (each worker, each replica, and admin commands such as `rotate-key`) holds
a *view* of the keys: their states from the store and their private keys (key_material.py:
`<kid>.pem` files on one node, sealed rows in a shared PostgreSQL store). The view is re-read
every REFRESH_SECONDS by the server (app.py's loop), and signing re-reads it first when it is
older than MAX_VIEW_AGE, so no process signs from a view older than that.

The rules that keep tokens verifiable at every replica while views lag:
- A new key is published before anything signs with it: a plain rotation adds it as `pending`
  with `activate_at = now + PUBLISH_DELAY`, and the first refresh (at any replica) after that time
  activates it (`store.activate_due`, exactly one replica wins). By then every replica has
  re-read the keys at least once since the key appeared, so every JWKS lists it and every
  replica verifies launch tokens it signs. `rotate(stage=True)` only publishes; a later plain
  rotation activates the staged key once it has been published PUBLISH_DELAY.
- A retired key stays published until the last token it signed has expired and no replica with
  a view from before its retirement can still sign with it (`retired_at + PRUNE_GRACE`).
- Signatures are counted in memory (the latest expiry per key) and written to the store in one
  batch at each refresh and at close, not once per token; PRUNE_GRACE also covers that lag.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, OctKey, OKPKey, RSAKey

from credsidecar.errors import ConfigError, CredsidecarError, Unavailable
from credsidecar.issuer.key_material import KeyMaterial, SigningKey, sealer_for_store
from credsidecar.issuer.limits import check_jwt_size
from credsidecar.issuer.sealing import Sealer
from credsidecar.issuer.store import KeyRecord, Store
from credsidecar.issuer.store.base import KEYS_LOCK

if TYPE_CHECKING:  # config.py imports this module (ALGORITHMS)
    from credsidecar.issuer.config import IssuerConfig

__all__ = [
    "ALGORITHMS",
    "MAX_VIEW_AGE",
    "PRUNE_GRACE",
    "PUBLISH_DELAY",
    "REFRESH_SECONDS",
    "KeyRing",
    "open_key_ring",
]

log = logging.getLogger(__name__)

ALGORITHMS = ("RS256", "ES256")
RSA_BITS = 2048  # accepted by every cloud; 2048 keeps signing fast on the exchange path

# How often a serving process re-reads the keys: app.KEY_REFRESH_SECONDS (a test holds them equal).
REFRESH_SECONDS = 5.0
# Signing re-reads the keys first when the view is this old (the refresh loop is late: a busy
# thread pool, a stalled event loop), so the bounds below hold even then: two refresh intervals.
MAX_VIEW_AGE = int(2 * REFRESH_SECONDS)
# A new key signs this long after it appeared in the store: every replica's view is at most
# MAX_VIEW_AGE (10 s) old when it signs or verifies, and its JWKS at most one refresh interval
# (5 s) when its loop keeps time, so 15 s leaves 5 s for clocks that disagree between replicas
# and a loop running late. The cost is only that a rotation takes effect 15 s later.
PUBLISH_DELAY = int(3 * REFRESH_SECONDS)
# A retired key stays published at least this long after retirement: a replica whose view is
# from before it may still sign with it for MAX_VIEW_AGE (plus clock disagreement), and writes
# the expiry of what it signed at its next refresh, up to MAX_VIEW_AGE later; 60 s is twice that.
# Publishing a public key a minute longer costs nothing.
PRUNE_GRACE = 60
# While the store is down, signing tries to re-read a stale view once a second, not once per
# request: the others fail at once (503) instead of queueing behind each database timeout.
RETRY_PAUSE = 1.0

Key = RSAKey | ECKey | OctKey | OKPKey


def _generate(alg: str) -> SigningKey:
    if alg == "RS256":
        return RSAKey.generate_key(RSA_BITS, private=True)
    if alg == "ES256":
        return ECKey.generate_key("P-256", private=True)
    raise ConfigError(f"key algorithm {alg!r} is not supported; use one of {', '.join(ALGORITHMS)}")


def open_key_ring(
    config: IssuerConfig, store: Store, clock: Callable[[], float] = time.time
) -> KeyRing:
    """The key ring as the configuration wants it: sealed in the store with PostgreSQL (a KEK is
    then required: ConfigError at start without one), `<kid>.pem` files with SQLite."""
    sealer = sealer_for_store(config) if store.dialect == "postgres" else None
    return KeyRing(config.key_dir, store, config.key_algorithm, clock, sealer=sealer)


class KeyRing:
    """One process's view of the signing keys: signs with the active key, publishes every key a
    replica may sign with. `sealer` given: new private keys are sealed into the store (shared
    by replicas); otherwise they are `<kid>.pem` files in `key_dir`."""

    def __init__(
        self,
        key_dir: Path,
        store: Store,
        alg: str = "RS256",
        clock: Callable[[], float] = time.time,
        *,
        sealer: Sealer | None = None,
    ) -> None:
        if alg not in ALGORITHMS:
            raise ConfigError(f"key algorithm {alg!r} is not supported; use one of {ALGORITHMS}")
        self._material = KeyMaterial(key_dir, sealer)
        self._store = store
        self._alg = alg
        self._clock = clock
        self._lock = threading.Lock()  # the view, swapped whole
        self._refreshing = threading.RLock()  # one refresh at a time (loop, SIGHUP, signing)
        self._loaded: dict[str, SigningKey] = {}
        self._records: list[KeyRecord] = []
        self._verification = KeySet([])
        self._viewed_at = float("-inf")  # when the current view was read
        self._signed: dict[str, int] = {}  # kid -> latest exp signed since the last flush
        self._failure: tuple[float, str] | None = None  # the last failed re-read before signing
        self.refresh()
        if self.active is None:
            self._first_key()

    # state ------------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Writes the signature batch, activates a due key, prunes keys no replica needs, and
        re-reads the view (another process may have rotated)."""
        with self._refreshing:
            started = self._clock()
            now = int(started)
            self.flush()
            records = self._store.key_records()
            if any(_due(r, now) for r in records):
                kid = self._store.activate_due(now)
                if kid is not None:
                    log.info("signing key %s is now active (published since its rotation)", kid)
                records = self._store.key_records()
            kept = []
            for record in records:
                if _prunable(record, now):
                    self._store.delete_key(record.kid)
                    self._material.discard(record.kid)
                else:
                    kept.append(record)
            self._install(kept)
            self._viewed_at = started

    def _install(self, records: list[KeyRecord]) -> None:
        loaded = {}
        for record in records:
            key = self._loaded.get(record.kid)
            if key is None:
                key = self._material.load(record.kid, record.alg, record.sealed_key)
            loaded[record.kid] = key
        # Built once per refresh: every exchange verifies against this set.
        public: list[Key] = [
            type(key).import_key(key.as_dict(private=False), {"kid": kid})
            for kid, key in loaded.items()
        ]
        with self._lock:
            self._records, self._loaded = records, loaded
            self._verification = KeySet(public)

    def flush(self) -> None:
        """Writes the latest expiry signed per key since the last flush (refresh and close do)."""
        with self._lock:
            batch, self._signed = self._signed, {}
        if not batch:
            return
        try:
            self._store.record_signatures(batch)
        except BaseException:
            with self._lock:  # kept for the next attempt, merged with what was signed since
                for kid, exp in batch.items():
                    self._signed[kid] = max(exp, self._signed.get(kid, 0))
            raise

    def close(self) -> None:
        """Writes the signatures not yet written; call before closing the store."""
        try:
            self.flush()
        except CredsidecarError as exc:
            log.error(
                "could not record the expiry of tokens signed since the last key refresh (%s); "
                "if their key is retired, it may be dropped from the JWKS before they expire",
                exc.message,
            )

    def _fresh(self) -> None:
        """Re-reads the view first when the refresh loop has not for MAX_VIEW_AGE. While the
        store is down, one attempt a RETRY_PAUSE: the requests queued behind it fail at once."""
        if self._clock() - self._viewed_at < MAX_VIEW_AGE:
            return
        with self._refreshing:
            now = self._clock()
            if now - self._viewed_at < MAX_VIEW_AGE:
                return
            if self._failure is not None and now - self._failure[0] < RETRY_PAUSE:
                raise Unavailable(self._failure[1])
            try:
                self.refresh()
            except CredsidecarError as exc:
                self._failure = (now, f"the signing keys could not be re-read: {exc.message}")
                raise Unavailable(self._failure[1]) from exc
            self._failure = None

    @property
    def records(self) -> list[KeyRecord]:
        return list(self._records)

    @property
    def active(self) -> KeyRecord | None:
        return next((r for r in self._records if r.state == "active"), None)

    def _new_key(self, now: int, state: str, activate_at: int | None) -> str:
        key = _generate(self._alg)
        kid = key.thumbprint()
        sealed = self._material.save(kid, key)  # the file exists before its row does
        self._store.add_key(kid, self._alg, state, now, sealed_key=sealed, activate_at=activate_at)
        return kid

    def _first_key(self) -> None:
        """No key is active anywhere (a new store): the first one signs at once, since no other
        replica signs either. Replicas starting together race; one transaction under the key
        lock (the one activations take) lets exactly one add it, and the others use it."""
        now = int(self._clock())
        with self._refreshing:
            key = _generate(self._alg)
            kid = key.thumbprint()
            sealed = self._material.save(kid, key)
            with self._store._transaction(KEYS_LOCK) as tx:
                won = not tx.query("SELECT kid FROM keys WHERE state = 'active'")
                if won:
                    tx.execute(
                        "INSERT INTO keys (kid, alg, state, created_at, sealed_key) "
                        "VALUES (?, ?, 'active', ?, ?)",
                        (kid, self._alg, now, sealed),
                    )
            if not won:
                self._material.discard(kid)
            self.refresh()
        if self.active is None:
            raise Unavailable("the issuer has no active signing key; run rotate-key")

    def rotate(self, stage: bool = False) -> str:
        """Publishes a new key (or takes the staged one) and returns its kid. It signs once every
        replica has published it: PUBLISH_DELAY after it appeared, at the first refresh after
        that. With `stage` it is only published, for clouds that cache the JWKS: a later plain
        rotation starts it (at once when it has been published PUBLISH_DELAY already)."""
        now = int(self._clock())
        pending = next((r for r in self._store.key_records() if r.state == "pending"), None)
        if pending is None:
            kid = self._new_key(now, "pending", None if stage else now + PUBLISH_DELAY)
        else:
            kid = pending.kid
            start = max(now, pending.created_at + PUBLISH_DELAY)
            if not stage and (pending.activate_at is None or pending.activate_at > start):
                self._store.execute(
                    "UPDATE keys SET activate_at = ? WHERE kid = ? AND state = 'pending'",
                    (start, kid),
                )
        self.refresh()  # activates it now if it is due already
        return kid

    # use ----------------------------------------------------------------------------------------

    def jwks(self) -> dict[str, list[dict[str, Any]]]:
        keys = []
        with self._lock:
            records, loaded = self._records, self._loaded
        for record in records:
            public = loaded[record.kid].as_dict(private=False)
            public.update({"kid": record.kid, "alg": record.alg, "use": "sig"})
            keys.append(public)
        return {"keys": keys}

    def verification_keys(self) -> KeySet:
        """Public keys of every published key (active, staged and retired-but-live)."""
        return self._verification

    def sign(self, claims: Mapping[str, Any]) -> tuple[str, str]:
        """Signs with the active key and returns (token, kid); refuses oversize tokens.
        Call from a worker thread: a stale view is re-read from the store first."""
        self._fresh()
        with self._lock:
            record = self.active
            if record is None:
                raise Unavailable("the issuer has no active signing key; run rotate-key")
            key = self._loaded[record.kid]
        header = {"alg": record.alg, "kid": record.kid, "typ": "JWT"}
        token = jwt.encode(header, dict(claims), key)
        # A token a cloud would refuse is dropped here, before it counts as issued.
        check_jwt_size(token)
        exp = int(claims["exp"])
        with self._lock:
            if exp > self._signed.get(record.kid, 0):
                self._signed[record.kid] = exp
        return token, record.kid


def _due(record: KeyRecord, now: int) -> bool:
    at = record.activate_at
    return record.state == "pending" and at is not None and at <= now


def _prunable(record: KeyRecord, now: int) -> bool:
    """Retired, its last token expired, and no replica can sign with it any more."""
    if record.state != "retired":
        return False
    retired_at = record.retired_at if record.retired_at is not None else record.created_at
    return now > record.last_exp and now >= retired_at + PRUNE_GRACE
