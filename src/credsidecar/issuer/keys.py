"""Signing keys: generated on first start, rotated on request, published until safe to drop.

Private keys live as `<kid>.pem` files (mode 0600) in a key directory (mode 0700); which key is
pending, active or retired lives in the store, so admin commands and the running issuer agree.
A retired key stays in the JWKS until the last token it signed has expired, then it is pruned.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, OctKey, OKPKey, RSAKey

from credsidecar.errors import ConfigError, Unavailable
from credsidecar.issuer.limits import check_jwt_size
from credsidecar.issuer.store import KeyRecord, Store

__all__ = ["ALGORITHMS", "KeyRing"]

ALGORITHMS = ("RS256", "ES256")
RSA_BITS = 2048  # accepted by every cloud; 2048 keeps signing fast on the exchange path

SigningKey = RSAKey | ECKey
Key = RSAKey | ECKey | OctKey | OKPKey


def _generate(alg: str) -> SigningKey:
    if alg == "RS256":
        return RSAKey.generate_key(RSA_BITS, private=True)
    if alg == "ES256":
        return ECKey.generate_key("P-256", private=True)
    raise ConfigError(f"key algorithm {alg!r} is not supported; use one of {', '.join(ALGORITHMS)}")


def _load(path: Path, alg: str) -> SigningKey:
    data = path.read_bytes()
    return RSAKey.import_key(data) if alg == "RS256" else ECKey.import_key(data)


def _write_private(path: Path, pem: bytes) -> None:
    # O_EXCL + mode 0600 at creation: the key is never readable by others, not even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)


class KeyRing:
    def __init__(
        self,
        key_dir: Path,
        store: Store,
        alg: str = "RS256",
        clock: Callable[[], float] = time.time,
    ) -> None:
        if alg not in ALGORITHMS:
            raise ConfigError(f"key algorithm {alg!r} is not supported; use one of {ALGORITHMS}")
        self._dir = key_dir
        self._store = store
        self._alg = alg
        self._clock = clock
        self._lock = threading.Lock()
        self._loaded: dict[str, SigningKey] = {}
        self._records: list[KeyRecord] = []
        self._verification = KeySet([])
        key_dir.mkdir(parents=True, exist_ok=True)
        key_dir.chmod(0o700)
        self.refresh()
        if self.active is None:
            self.rotate()

    # state ------------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Re-reads key states (another process may have rotated) and prunes expired keys."""
        now = int(self._clock())
        for record in self._store.key_records():
            if record.state == "retired" and record.last_exp < now:
                self._store.delete_key(record.kid)
                (self._dir / f"{record.kid}.pem").unlink(missing_ok=True)
        records = self._store.key_records()
        loaded = {}
        for record in records:
            key = self._loaded.get(record.kid)
            if key is None:
                path = self._dir / f"{record.kid}.pem"
                try:
                    key = _load(path, record.alg)
                except OSError as exc:
                    raise ConfigError(
                        f"key {record.kid} is listed in the issuer database but {path} cannot be "
                        f"read ({exc.strerror}); restore the key directory or rotate-key"
                    ) from exc
            loaded[record.kid] = key
        # Built once per refresh: every exchange verifies against this set.
        public: list[Key] = [
            type(key).import_key(key.as_dict(private=False), {"kid": kid})
            for kid, key in loaded.items()
        ]
        with self._lock:
            self._records, self._loaded = records, loaded
            self._verification = KeySet(public)

    @property
    def records(self) -> list[KeyRecord]:
        return list(self._records)

    @property
    def active(self) -> KeyRecord | None:
        return next((r for r in self._records if r.state == "active"), None)

    def rotate(self, stage: bool = False) -> str:
        """Activates a new key (or the staged one) and returns its kid.

        With `stage`, the new key is only published: clouds that cache the JWKS can fetch it
        before the next plain rotation starts signing with it.
        """
        now = int(self._clock())
        pending = next((r for r in self._store.key_records() if r.state == "pending"), None)
        if stage and pending is not None:
            return pending.kid
        if pending is None:
            key = _generate(self._alg)
            kid = key.thumbprint()
            _write_private(self._dir / f"{kid}.pem", key.as_pem(private=True))
            self._store.add_key(kid, self._alg, "pending", now)
        else:
            kid = pending.kid
        if not stage:
            self._store.activate_key(kid, now)
        self.refresh()
        return kid

    # use ----------------------------------------------------------------------------------------

    def jwks(self) -> dict[str, list[dict[str, Any]]]:
        keys = []
        for record in self._records:
            public = self._loaded[record.kid].as_dict(private=False)
            public.update({"kid": record.kid, "alg": record.alg, "use": "sig"})
            keys.append(public)
        return {"keys": keys}

    def verification_keys(self) -> KeySet:
        """Public keys of every published key (active, staged and retired-but-live)."""
        return self._verification

    def sign(self, claims: Mapping[str, Any]) -> tuple[str, str]:
        """Signs with the active key and returns (token, kid); refuses oversize tokens."""
        with self._lock:
            record = self.active
            if record is None:
                raise Unavailable("the issuer has no active signing key; run rotate-key")
            key = self._loaded[record.kid]
        header = {"alg": record.alg, "kid": record.kid, "typ": "JWT"}
        token = jwt.encode(header, dict(claims), key)
        # A token a cloud would refuse is dropped here, before it counts as issued.
        check_jwt_size(token)
        self._store.record_signature(record.kid, int(claims["exp"]))
        return token, record.kid
