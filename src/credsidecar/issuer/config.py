"""Issuer configuration: one TOML file parsed once into a frozen dataclass.

Relative paths are resolved against the directory of the configuration file, so a config and
its policy can travel together.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from credsidecar.errors import ConfigError
from credsidecar.issuer.keys import ALGORITHMS
from credsidecar.issuer.toml_errors import line_of, syntax_error_line

__all__ = [
    "IssuerConfig",
    "PlatformKey",
    "RateLimit",
    "StoreConfig",
    "issuer_url_warning",
    "load_config",
    "new_api_key",
]

DEFAULT_LAUNCH_LIFETIME = 24 * 3600
DEFAULT_MAX_LAUNCH_LIFETIME = 72 * 3600
# Cloud-facing tokens only live long enough for one STS call; 10 minutes also covers clock skew.
DEFAULT_EXCHANGE_LIFETIME = 600
DEFAULT_SSH_CERTIFICATE_LIFETIME = 900  # 15 minutes: enough to log in and submit
DEFAULT_MAX_BODY = 64 * 1024
API_KEY_PREFIX = "csk_"
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
DEFAULT_POOL_SIZE = 10
DEFAULT_DB_TIMEOUT = 5.0  # seconds: connect, and waiting for a pooled connection
MAX_WORKERS = 64


@dataclass(frozen=True)
class StoreConfig:
    """`[store]`: where the issuer keeps its state. No `url` (the default): one SQLite file in
    `state_dir`, for one node and for `dev`. A `postgresql://` URL: a database shared by every
    worker and replica; its password comes from `password_env` (or a libpq PGPASSFILE), never
    from the URL or this file, so it reaches no process list or log."""

    url: str | None = None
    password_env: str | None = None
    pool_size: int = DEFAULT_POOL_SIZE
    timeout: float = DEFAULT_DB_TIMEOUT

    @property
    def postgres(self) -> bool:
        return self.url is not None


@dataclass(frozen=True)
class RateLimit:
    """A token bucket: `rate` requests a second on average, bursts of up to `burst`."""

    rate: float
    burst: int


# On by default (`= "off"` turns one off). Per platform key, on mint: a platform mints once per
# run, so 500 launches at once and 50 a second sustained are far above any platform's need,
# while a runaway mint loop is held to ~10% of a node's signing. Per run, on mint and exchange:
# a 10,000-task run starting on three clouds makes 30,000 exchanges at once, within the burst
# (with a third to spare for retries) however fast they arrive; renewing, it makes ~17 a second
# (each credential renewed every ~30 min), so 100 a second leaves room for a run 5x larger while
# holding one runaway run (or a job hammering with its launch token) to ~20% of a node.
DEFAULT_PLATFORM_KEY_RATE = RateLimit(rate=50.0, burst=500)
DEFAULT_RUN_RATE = RateLimit(rate=100.0, burst=40_000)


@dataclass(frozen=True)
class PlatformKey:
    name: str
    sha256: str  # hex digest of the key; the key itself is never stored

    def matches(self, presented: str) -> bool:
        digest = hashlib.sha256(presented.encode()).hexdigest()
        return hmac.compare_digest(digest, self.sha256)


@dataclass(frozen=True)
class IssuerConfig:
    issuer_url: str
    host: str
    port: int
    state_dir: Path
    policy_path: Path
    key_algorithm: str = "RS256"
    launch_lifetime: int = DEFAULT_LAUNCH_LIFETIME
    max_launch_lifetime: int = DEFAULT_MAX_LAUNCH_LIFETIME
    exchange_lifetime: int = DEFAULT_EXCHANGE_LIFETIME
    max_body_bytes: int = DEFAULT_MAX_BODY
    tls_cert: Path | None = None
    tls_key: Path | None = None
    audit_log: str | None = None
    platform_keys: tuple[PlatformKey, ...] = ()
    # HPC: SSH certificate lifetime, and the key-encryption key for stored SSH keys.
    ssh_certificate_lifetime: int = DEFAULT_SSH_CERTIFICATE_LIFETIME
    kek_file: Path | None = None
    kek_env: str | None = "CREDSIDECAR_HPC_KEK"
    store: StoreConfig = StoreConfig()
    # Worker processes sharing the listening socket (signing is CPU-bound); 0 = one per core.
    workers: int = 1
    # `[rate_limits]`: per platform key (mint) and per run (mint and exchange); None: off.
    platform_key_rate: RateLimit | None = DEFAULT_PLATFORM_KEY_RATE
    run_rate: RateLimit | None = DEFAULT_RUN_RATE

    @property
    def key_dir(self) -> Path:
        return self.state_dir / "keys"

    @property
    def database(self) -> Path:
        return self.state_dir / "issuer.db"


def new_api_key() -> tuple[str, str]:
    """A fresh platform API key and the hex SHA-256 digest to put in the config."""
    key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    return key, hashlib.sha256(key.encode()).hexdigest()


def issuer_url_warning(url: str) -> str | None:
    """AWS accepts only https:// issuers without a port; say so before a deployment finds out."""
    parts = urlsplit(url)
    if parts.scheme != "https" or parts.port is not None:
        return (
            f"issuer URL {url} is not https:// without a port: fine for the sandbox, but AWS, "
            "GCP and Azure will not trust it; publish discovery at an https:// URL "
            "(see `credsidecar issuer export-discovery`)"
        )
    return None


def _int(data: Mapping[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = data.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ConfigError(f"{key} must be an integer between {low} and {high}", path=(key,))
    return value


def _table(data: Mapping[str, Any], name: str, keys: tuple[str, ...]) -> Mapping[str, Any]:
    table = data.get(name, {})
    if not isinstance(table, dict):
        raise ConfigError(f"[{name}] must be a table", path=(name,))
    for key in table:
        if key not in keys:
            raise ConfigError(
                f"{key!r} is not a known [{name}] setting (known: {', '.join(keys)})",
                path=(name, key),
            )
    return table


def _store(data: Mapping[str, Any]) -> StoreConfig:
    table = _table(data, "store", ("url", "password_env", "pool_size", "timeout"))
    url = table.get("url")
    if url is not None:
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("postgresql", "postgres"):
            raise ConfigError(
                "[store] url must be a postgresql:// URL (leave it out for the SQLite file "
                "in state_dir)",
                path=("store", "url"),
            )
        if parts.password:
            raise ConfigError(
                "[store] url must not hold a password: put it in the variable named by "
                "password_env (or a PGPASSFILE), so it never reaches a file or process list",
                path=("store", "url"),
            )
    password_env = table.get("password_env")
    if password_env is not None and (not isinstance(password_env, str) or not password_env):
        raise ConfigError("[store] password_env must be a variable name", path=("store",))
    timeout = table.get("timeout", DEFAULT_DB_TIMEOUT)
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not 0.1 <= timeout <= 60
    ):
        raise ConfigError("[store] timeout must be 0.1-60 seconds", path=("store", "timeout"))
    return StoreConfig(
        url=url,
        password_env=password_env,
        pool_size=_int(table, "pool_size", DEFAULT_POOL_SIZE, 1, 200),
        timeout=float(timeout),
    )


def _workers(data: Mapping[str, Any]) -> int:
    """`workers = N`, or "auto" (0): one per core."""
    if data.get("workers") == "auto":
        return 0
    return _int(data, "workers", 1, 1, MAX_WORKERS)


def _rate(table: Mapping[str, Any], key: str, default: RateLimit) -> RateLimit | None:
    """`per_run = { rate = 20, burst = 60 }`; absent: `default`; "off": no limit."""
    spec = table.get(key)
    if spec is None:
        return default
    if spec == "off":
        return None
    if not isinstance(spec, dict) or set(spec) - {"rate", "burst"} or "rate" not in spec:
        raise ConfigError(
            f'[rate_limits] {key} must be {{ rate = REQUESTS_PER_SECOND, burst = N }} or "off"',
            path=("rate_limits", key),
        )
    rate = spec["rate"]
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 < rate <= 1_000_000:
        raise ConfigError(
            f"[rate_limits] {key} rate must be a positive number of requests a second",
            path=("rate_limits", key),
        )
    burst = _int(spec, "burst", max(1, int(rate)), 1, 10_000_000)
    return RateLimit(rate=float(rate), burst=burst)


def _parse(data: Mapping[str, Any], base: Path) -> IssuerConfig:
    known = {
        "issuer_url",
        "listen",
        "state_dir",
        "policy",
        "key_algorithm",
        "launch_token_lifetime",
        "max_launch_token_lifetime",
        "exchange_token_lifetime",
        "max_body_bytes",
        "tls",
        "audit_log",
        "platform_keys",
        "hpc",
        "store",
        "workers",
        "rate_limits",
    }
    for key in data:
        if key not in known:
            raise ConfigError(f"{key!r} is not a known issuer setting", path=(key,))
    url = data.get("issuer_url")
    if not isinstance(url, str):
        raise ConfigError("issuer_url must be an http(s) URL", path=("issuer_url",))
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError("issuer_url must be an http(s) URL", path=("issuer_url",))
    if parts.query or parts.fragment or url.endswith("/"):
        raise ConfigError(
            "issuer_url must have no query, fragment or trailing slash", path=("issuer_url",)
        )
    host, _, port_text = str(data.get("listen", "127.0.0.1:8400")).rpartition(":")
    if not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError("listen must be HOST:PORT, e.g. 127.0.0.1:8400", path=("listen",))
    alg = data.get("key_algorithm", "RS256")
    if alg not in ALGORITHMS:
        raise ConfigError(f"key_algorithm must be one of {ALGORITHMS}", path=("key_algorithm",))

    def path(key: str, value: Any) -> Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{key} must be a path", path=(key,))
        return (base / value).resolve()

    tls = data.get("tls", {})
    tls_cert = path("tls", tls["cert"]) if "cert" in tls else None
    tls_key = path("tls", tls["key"]) if "key" in tls else None
    if (tls_cert is None) != (tls_key is None):
        raise ConfigError("[tls] needs both cert and key", path=("tls",))
    max_launch = _int(
        data, "max_launch_token_lifetime", DEFAULT_MAX_LAUNCH_LIFETIME, 300, 30 * 86400
    )
    platform_keys = []
    for i, row in enumerate(data.get("platform_keys", [])):
        name, digest = row.get("name"), str(row.get("sha256", "")).lower()
        if not name or not _SHA256_HEX.fullmatch(digest):
            raise ConfigError(
                "each [[platform_keys]] needs a name and the key's sha256 hex digest "
                "(`credsidecar issuer new-api-key` prints both)",
                path=("platform_keys", i),
            )
        platform_keys.append(PlatformKey(name=name, sha256=digest))
    audit = data.get("audit_log")
    hpc = data.get("hpc", {})
    if not isinstance(hpc, dict):
        raise ConfigError("[hpc] must be a table", path=("hpc",))
    for key in hpc:
        if key not in ("certificate_lifetime", "key_encryption_key_file", "key_encryption_key_env"):
            raise ConfigError(f"{key!r} is not a known [hpc] setting", path=("hpc", key))
    kek_env = hpc.get("key_encryption_key_env", "CREDSIDECAR_HPC_KEK")
    if not isinstance(kek_env, str):
        raise ConfigError("key_encryption_key_env must be a variable name", path=("hpc",))
    rates = _table(data, "rate_limits", ("per_platform_key", "per_run"))
    return IssuerConfig(
        store=_store(data),
        workers=_workers(data),
        platform_key_rate=_rate(rates, "per_platform_key", DEFAULT_PLATFORM_KEY_RATE),
        run_rate=_rate(rates, "per_run", DEFAULT_RUN_RATE),
        issuer_url=url,
        host=host.strip("[]"),
        port=int(port_text),
        state_dir=path("state_dir", data.get("state_dir", "state")),
        policy_path=path("policy", data.get("policy", "policy.toml")),
        key_algorithm=alg,
        launch_lifetime=_int(
            data, "launch_token_lifetime", DEFAULT_LAUNCH_LIFETIME, 60, max_launch
        ),
        max_launch_lifetime=max_launch,
        exchange_lifetime=_int(
            data, "exchange_token_lifetime", DEFAULT_EXCHANGE_LIFETIME, 60, 3600
        ),
        max_body_bytes=_int(data, "max_body_bytes", DEFAULT_MAX_BODY, 1024, 1024 * 1024),
        tls_cert=tls_cert,
        tls_key=tls_key,
        audit_log=audit if audit in (None, "-") else str(path("audit_log", audit)),
        platform_keys=tuple(platform_keys),
        ssh_certificate_lifetime=_int(
            hpc, "certificate_lifetime", DEFAULT_SSH_CERTIFICATE_LIFETIME, 60, 86400
        ),
        kek_file=path("key_encryption_key_file", hpc["key_encryption_key_file"])
        if "key_encryption_key_file" in hpc
        else None,
        kek_env=kek_env or None,
    )


def load_config(path: Path) -> IssuerConfig:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read issuer config {path}: {exc.strerror}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}:{syntax_error_line(str(exc)) or '?'}: {exc}") from exc
    try:
        return _parse(data, path.parent.resolve())
    except ConfigError as exc:
        line = line_of(text, exc.path) if exc.path else None
        raise ConfigError(f"{path}:{line or '?'}: {exc.message}", path=exc.path) from exc
