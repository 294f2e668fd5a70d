"""Refresh-ahead, single-flight credential cache. Knows lifetimes, nothing about clouds.

- `start()` fetches the first value before the sidecar reports ready.
- A background task renews at `REFRESH_FRACTION` of the lifetime, detached from any client.
- On failure the still-valid value keeps being served, retried with exponential backoff and
  jitter; an expired value is never served: `current()` raises `Unavailable` with the cause.
- Expiry is held on the wall clock and cross-checked with the monotonic clock, so neither a
  suspended host (monotonic stalls) nor a clock jump (wall moves) extends a lifetime.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from credsidecar.errors import CredsidecarError, Unavailable

__all__ = ["Cached", "CredentialCache", "Expiring"]

log = logging.getLogger(__name__)

# Renew at half the lifetime: a 1 h AWS credential is renewed with 30 min left, above the
# 20 min botocore needs to stay out of its own refresh window, and an outage of up to half the
# lifetime goes unnoticed by clients.
REFRESH_FRACTION = 0.5
# Stop serving a value this close to its expiry (at most SERVE_MARGIN_MAX seconds), so a client
# never receives credentials that die in flight.
SERVE_MARGIN_FRACTION = 0.05
SERVE_MARGIN_MAX = 60.0
# Backoff after a failed renewal: 1 s doubling to 60 s (5 min for answers that will not change
# by retrying, such as a revoked run), each with "equal jitter" (half fixed, half random).
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 60.0
BACKOFF_MAX_PERMANENT = 300.0
# The refresher wakes at least this often to re-read both clocks.
MAX_SLEEP = 10.0


class Expiring(Protocol):
    @property
    def expires_at(self) -> float: ...


T = TypeVar("T", bound=Expiring)


@dataclass(frozen=True)
class Cached(Generic[T]):
    value: T
    wall_expiry: float
    mono_expiry: float  # the same instant on the monotonic clock, measured at fetch time
    lifetime: float
    generation: int

    @property
    def margin(self) -> float:
        return min(SERVE_MARGIN_MAX, self.lifetime * SERVE_MARGIN_FRACTION)


class CredentialCache(Generic[T]):
    def __init__(
        self,
        name: str,
        fetch: Callable[[], Awaitable[T]],
        on_new: Callable[[T], None] | None = None,
        wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.name = name
        self._fetch = fetch
        self._on_new = on_new
        self._wall, self._mono, self._sleep = wall, mono, sleep
        self._entry: Cached[T] | None = None
        self._inflight: asyncio.Task[Cached[T]] | None = None
        self._task: asyncio.Task[None] | None = None
        self.last_error: CredsidecarError | None = None
        self.fetches = 0
        self._failures = 0

    # reading ------------------------------------------------------------------------------------

    def remaining(self, entry: Cached[T]) -> float:
        """Seconds left by the more pessimistic of the two clocks."""
        return min(entry.wall_expiry - self._wall(), entry.mono_expiry - self._mono())

    def current_entry(self) -> Cached[T]:
        """The value to serve now, or `Unavailable` saying why there is none."""
        entry = self._entry
        if entry is not None and self.remaining(entry) > entry.margin:
            return entry
        if self.last_error is not None:
            cause = self.last_error.message
        elif entry is not None:
            cause = "the credentials expired and renewal has not succeeded yet"
        else:
            cause = "the first credentials have not been obtained yet"
        raise Unavailable(
            f"no valid {self.name} credentials: {cause}", retry_after=self.retry_after()
        )

    def current(self) -> T:
        return self.current_entry().value

    @property
    def ready(self) -> bool:
        try:
            self.current_entry()
        except Unavailable:
            return False
        return True

    def retry_after(self) -> int:
        return max(1, min(30, int(BACKOFF_FIRST * 2**self._failures)))

    # fetching -----------------------------------------------------------------------------------

    async def refresh(self) -> Cached[T]:
        """Fetches a new value; concurrent callers share one upstream call (single flight)."""
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.create_task(self._do_fetch())
        return await asyncio.shield(self._inflight)

    async def _do_fetch(self) -> Cached[T]:
        # Clocks are read before the call, so the computed expiry errs early, never late.
        wall0, mono0 = self._wall(), self._mono()
        self.fetches += 1
        try:
            value = await self._fetch()
        except CredsidecarError as exc:
            self.last_error = exc
            self._failures += 1
            raise
        lifetime = value.expires_at - wall0
        if lifetime <= 0:
            error = Unavailable(f"upstream returned already-expired {self.name} credentials")
            self.last_error = error
            self._failures += 1
            raise error
        generation = self._entry.generation + 1 if self._entry else 1
        entry = Cached(value, value.expires_at, mono0 + lifetime, lifetime, generation)
        self._entry, self.last_error, self._failures = entry, None, 0
        if self._on_new is not None:
            self._on_new(value)
        return entry

    async def start(self, give_up_after: float) -> None:
        """Obtains the first value, retrying transient failures for up to `give_up_after` s;
        a permanent refusal (revoked run, trust policy) is raised at once."""
        deadline = self._mono() + give_up_after
        while True:
            try:
                await self.refresh()
                break
            except CredsidecarError as exc:
                left = deadline - self._mono()
                if not exc.retryable or left <= 0:
                    raise
                delay = min(left, self._backoff(permanent=False))
                log.warning("%s: %s; retrying in %.1f s", self.name, exc.message, delay)
                await self._sleep(delay)
        self._task = asyncio.create_task(self._renew_forever(), name=f"renew {self.name}")

    async def close(self) -> None:
        for task in (self._task, self._inflight):
            if task is not None and not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    def _backoff(self, permanent: bool) -> float:
        cap = BACKOFF_MAX_PERMANENT if permanent else BACKOFF_MAX
        delay = min(cap, BACKOFF_FIRST * 2.0 ** max(0, self._failures - 1))
        return delay / 2 + random.uniform(0, delay / 2)  # noqa: S311 - jitter, not crypto

    def _refresh_due_in(self, entry: Cached[T]) -> float:
        return self.remaining(entry) - entry.lifetime * (1 - REFRESH_FRACTION)

    async def _renew_forever(self) -> None:
        while True:
            entry = self._entry
            wait = self._refresh_due_in(entry) if entry is not None else 0.0
            if wait > 0:
                await self._sleep(min(wait, MAX_SLEEP))
                continue
            try:
                await self.refresh()
            except CredsidecarError as exc:
                delay = self._backoff(permanent=not exc.retryable)
                if entry is not None and self.remaining(entry) > entry.margin:
                    # Try again before the value we still serve runs out.
                    delay = max(0.5, min(delay, (self.remaining(entry) - entry.margin) / 2))
                log.error(
                    "renewing %s failed: %s; %s; next attempt in %.1f s",
                    self.name,
                    exc.message,
                    "still serving valid credentials" if self.ready else "nothing valid to serve",
                    delay,
                )
                await self._sleep(delay)
            except Exception:  # a bug must not end renewals for good
                log.exception("unexpected error renewing %s", self.name)
                await self._sleep(BACKOFF_MAX)


K = TypeVar("K")

# A family holds at most this many caches (scope sets, audiences): a client asking for
# ever-new keys cannot make the sidecar hold or renew unbounded credentials.
MAX_FAMILY = 32


class CacheFamily(Generic[K, T]):
    """One `CredentialCache` per key (a scope set, an audience), started on first use.

    The first request for a new key waits for its first fetch (shared by every concurrent
    request for that key); after that it is answered from memory and renewed in the background.
    """

    def __init__(
        self,
        name: str,
        fetch: Callable[[K], Awaitable[T]],
        give_up_after: float,
        on_new: Callable[[K, T], None] | None = None,
    ) -> None:
        self.name = name
        self._fetch = fetch
        self._give_up_after = give_up_after
        self._on_new = on_new
        self._caches: dict[K, CredentialCache[T]] = {}
        self._starting: dict[K, asyncio.Task[None]] = {}

    def _make(self, key: K) -> CredentialCache[T]:
        on_new = self._on_new
        return CredentialCache(
            f"{self.name} [{key}]",
            lambda: self._fetch(key),
            on_new=(lambda value: on_new(key, value)) if on_new is not None else None,
        )

    async def get(self, key: K) -> Cached[T]:
        cache = self._caches.get(key)
        if cache is None:
            if len(self._caches) >= MAX_FAMILY:
                raise Unavailable(
                    f"{self.name}: more than {MAX_FAMILY} distinct requests are being kept "
                    "fresh; reuse scope sets or audiences"
                )
            cache = self._caches[key] = self._make(key)
            self._starting[key] = asyncio.create_task(cache.start(self._give_up_after))
        starting = self._starting.get(key)
        if starting is not None:
            try:
                await asyncio.shield(starting)
            except CredsidecarError:
                # A failed start is forgotten, so the next request tries again.
                self._caches.pop(key, None)
                raise
            finally:
                if starting.done():
                    self._starting.pop(key, None)
        return cache.current_entry()

    def current(self, key: K) -> Cached[T]:
        cache = self._caches.get(key)
        if cache is None:
            raise Unavailable(f"{self.name} [{key}]: not requested yet")
        return cache.current_entry()

    async def close(self) -> None:
        for task in self._starting.values():
            task.cancel()
        for cache in self._caches.values():
            await cache.close()
