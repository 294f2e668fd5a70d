"""Rate limits on mint and exchange, so that one runaway client cannot starve the others.

    per platform key   every mint by one platform key (`[rate_limits] per_platform_key`)
    per run            every mint and every exchange for one run (`[rate_limits] per_run`)

Each limit is a token bucket per key: `rate` requests a second on average, bursts of up to
`burst`. A request takes one token from each bucket that applies, or from none: a refusal
changes no bucket, signs nothing and records nothing but (at most once per key and window) a
`rate_limited` audit line. Exchanges are keyed on the run claim of a launch token that has
already been verified, so garbage naming a run cannot drain that run's bucket.

The buckets live in each worker process: `share` (the worker count) divides rate and burst so
that the node's total is what the config says. Replicas behind a load balancer each allow the
configured figures (two replicas: up to twice as much in all).

The launch token does not record which platform key minted it, so exchanges are limited per
run only: a platform's runaway mint loop is stopped at mint, and a per-platform limit on
exchange would have to allow the platform's whole fleet at once (every run's launch storm and
renewals), which protects nobody.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from credsidecar.audit import AuditLog
from credsidecar.errors import RateLimited, bounded
from credsidecar.issuer.config import IssuerConfig, RateLimit

__all__ = ["Bucket", "RateLimiter", "rate_limiter"]

# Buckets kept per table. Only buckets used within their refill time (at least the audit window)
# are kept (an idle bucket is full, the same as a new one), so this only has to cover the keys
# active at once: a platform's few keys, a few thousand concurrent runs. Evicting a live bucket
# when the table is full forgives that key its debt (a fresh, full bucket); it never refuses
# anyone. ~300 bytes a bucket: at most ~3 MB a table, however many keys an outsider makes up.
MAX_BUCKETS = 10_000
# A refused key gets one audit line per window, with the number of refusals since its last
# line; all keys together at most MAX_AUDIT_LINES per window, the rest counted into one
# `rate_limited.suppressed` line. ~250 bytes a line: at most ~18 MB a day in a flood.
AUDIT_WINDOW = 60.0
MAX_AUDIT_LINES = 50


class Bucket:
    """A token bucket: `capacity` tokens, refilled at `rate` a second, on a monotonic clock."""

    __slots__ = ("capacity", "logged_at", "rate", "stamp", "tokens", "unlogged")

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self.stamp = now
        self.logged_at = -math.inf  # when a refusal of this key was last audited
        self.unlogged = 0  # refusals since then

    def refill(self, now: float) -> None:
        # max(): a clock that steps back (it should not) must not take tokens away.
        self.tokens = min(self.capacity, self.tokens + max(0.0, now - self.stamp) * self.rate)
        self.stamp = max(self.stamp, now)

    def wait(self) -> float:
        """Seconds until the bucket holds a whole token (0 if it does); after `refill`."""
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.rate


class _Limit:
    """One limit's table of buckets: which config setting, and this process's share of it.

    The table is ordered by last use (every use refills a bucket, stamping it, and moves it to
    the end), so the buckets idle long enough to be full again, their audit window over, are at
    its front: each new key drops those, and the least recently used one if the table is full.
    (An OrderedDict: a cachetools TTLCache did the same at 4x the cost a check, ~12 us.)"""

    def __init__(
        self, setting: str, what: str, field: str, configured: RateLimit, share: int
    ) -> None:
        self.setting = setting  # "per_platform_key" | "per_run"
        self.what = what  # "platform key" | "run": how a refusal names the key
        self.field = field  # "platform_key" | "run": the audit field holding the key
        self.configured = configured
        self.rate = configured.rate / share
        self.capacity = max(1.0, configured.burst / share)
        self.idle = max(self.capacity / self.rate, AUDIT_WINDOW)
        self.buckets: OrderedDict[str, Bucket] = OrderedDict()

    def bucket(self, key: str, now: float) -> Bucket:
        found = self.buckets.get(key)
        if found is not None:
            self.buckets.move_to_end(key)
            found.refill(now)
            return found
        self.drop_idle(now)
        if len(self.buckets) >= MAX_BUCKETS:
            self.buckets.popitem(last=False)
        found = self.buckets[key] = Bucket(self.rate, self.capacity, now)
        return found

    def drop_idle(self, now: float) -> None:
        while self.buckets:
            oldest = next(iter(self.buckets.values()))
            if now - oldest.stamp < self.idle:
                return
            self.buckets.popitem(last=False)


@dataclass(frozen=True)
class _Refusal:
    limit: _Limit
    key: str
    bucket: Bucket
    wait: float


class RateLimiter:
    """The issuer's buckets; `mint` and `exchange` take a token or raise RateLimited.

    Thread-safe: the service calls it from worker threads. `share` (>= 1) divides rate and burst
    among that many worker processes; a share's burst is at least 1 request."""

    def __init__(
        self,
        config: IssuerConfig,
        share: int = 1,
        clock: Callable[[], float] = time.monotonic,
        audit: AuditLog | None = None,
    ) -> None:
        if share < 1:
            raise ValueError("share is the number of worker processes, at least 1")
        self._clock = clock
        self._audit = audit
        self._lock = threading.Lock()
        per_key, per_run = config.platform_key_rate, config.run_rate
        self._platform = (
            _Limit("per_platform_key", "platform key", "platform_key", per_key, share)
            if per_key is not None
            else None
        )
        self._run = _Limit("per_run", "run", "run", per_run, share) if per_run is not None else None
        self._window_start = -math.inf
        self._lines = 0
        self._suppressed = 0

    def mint(self, platform_key: str, run: str) -> None:
        """A mint by `platform_key` (its configured name) for `run` (named in the request)."""
        self._take((self._platform, platform_key), (self._run, run))

    def exchange(self, run: str) -> None:
        """An exchange for `run`: the run claim of an already verified launch token."""
        self._take((self._run, run))

    def __len__(self) -> int:
        """Buckets held, all tables together (memory stays bounded: MAX_BUCKETS a table)."""
        with self._lock:
            now, held = self._clock(), 0
            for limit in (self._platform, self._run):
                if limit is not None:
                    limit.drop_idle(now)
                    held += len(limit.buckets)
            return held

    def _take(self, *wanted: tuple[_Limit | None, str]) -> None:
        with self._lock:
            now = self._clock()
            held = [(limit, key, limit.bucket(key, now)) for limit, key in wanted if limit]
            refusals = [
                _Refusal(limit, key, bucket, bucket.wait())
                for limit, key, bucket in held
                if bucket.tokens < 1
            ]
            if not refusals:  # take from every bucket, or (refused) from none
                for _, _, bucket in held:
                    bucket.tokens -= 1
                return
            lines = self._audit_lines(refusals, now)
        if self._audit is not None:  # written outside the lock: other keys need not wait
            for event, fields in lines:
                self._audit.event(event, **fields)
        worst = max(refusals, key=lambda r: r.wait)
        raise RateLimited(_message(worst), retry_after=math.ceil(worst.wait))

    def _audit_lines(
        self, refusals: list[_Refusal], now: float
    ) -> list[tuple[str, dict[str, object]]]:
        """The audit lines these refusals earn (under the lock; written after it)."""
        lines: list[tuple[str, dict[str, object]]] = []
        if now - self._window_start >= AUDIT_WINDOW:
            if self._suppressed:
                lines.append(("rate_limited.suppressed",
                              {"count": self._suppressed, "window_s": AUDIT_WINDOW}))  # fmt: skip
            self._window_start, self._lines, self._suppressed = now, 0, 0
        for refusal in refusals:
            bucket = refusal.bucket
            if now - bucket.logged_at < AUDIT_WINDOW:
                bucket.unlogged += 1
                continue
            if self._lines >= MAX_AUDIT_LINES:
                self._suppressed += 1
                continue
            self._lines += 1
            limit = refusal.limit
            lines.append(("rate_limited", {
                "limit": limit.setting,
                limit.field: refusal.key,
                "rate": limit.configured.rate,
                "burst": limit.configured.burst,
                "refused_unlogged_before": bucket.unlogged or None,
            }))  # fmt: skip
            bucket.logged_at, bucket.unlogged = now, 0
        return lines


def _message(refusal: _Refusal) -> str:
    limit = refusal.limit
    rate = limit.configured
    return (
        f"{limit.what} {bounded(refusal.key, 128)!r} is over the issuer's {limit.setting} rate "
        f"limit (rate = {rate.rate:g} a second, burst = {rate.burst}); retry in "
        f"{math.ceil(refusal.wait)} s (Retry-After), and slow its clients down or raise "
        f"`[rate_limits] {limit.setting}` in the issuer config"
    )


def rate_limiter(
    config: IssuerConfig,
    share: int = 1,
    clock: Callable[[], float] = time.monotonic,
    audit: AuditLog | None = None,
) -> RateLimiter | None:
    """The limiter for `config`, or None when every limit is off (nothing in the path then)."""
    if config.platform_key_rate is None and config.run_rate is None:
        return None
    return RateLimiter(config, share=share, clock=clock, audit=audit)
