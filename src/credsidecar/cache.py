"""Refresh-ahead, single-flight credential cache. Knows lifetimes, nothing about clouds.

- `start()` fetches the first value before the sidecar reports ready.
- A background task renews at `REFRESH_FRACTION` of the lifetime, detached from any client.
- On failure the still-valid value keeps being served, retried with exponential backoff and
  jitter, early enough that several attempts fit before it runs out; an expired value is never
  served: `current()` raises `Unavailable` with the cause and a `retry_after` equal to the time
  to the next attempt, which a client's request brings forward (rate-limited), or, after a
  refusal retrying will not change (a revoked run), an error of that refusal's kind (403).
- Expiry is held on the wall clock and cross-checked with the monotonic clock, so neither a
  suspended host (monotonic stalls) nor a clock jump (wall moves) extends a lifetime.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from credsidecar.errors import CredsidecarError, Unavailable

__all__ = ["Cached", "CredentialCache", "Expiring", "T"]

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
# While a value is still served, a retry waits at most 1/ATTEMPTS_BEFORE_MARGIN of the time left
# before its serving margin (less the duration of the last successful fetch), so at least that
# many more attempts fit even for a 20 s credential on a slow machine; but never less than
# RETRY_MIN, so a value at the edge of its margin does not make the loop spin.
ATTEMPTS_BEFORE_MARGIN = 3
RETRY_MIN = 0.5
# Once nothing valid is left, a client request brings the next attempt forward (the request
# itself is answered 503 at once, never held on the upstream): at most one such attempt this
# often, so a recovered upstream is noticed within seconds instead of at the end of a backoff
# that grew to BACKOFF_MAX during a long outage, and clients in a loop cannot hammer it.
CLIENT_RETRY_INTERVAL = 2.0
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
    # The instants, on each clock, after which it is no longer served: computed once, so the
    # request path compares two clock readings and does no arithmetic.
    wall_serve_until: float = field(init=False)
    mono_serve_until: float = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "wall_serve_until", self.wall_expiry - self.margin)
        object.__setattr__(self, "mono_serve_until", self.mono_expiry - self.margin)

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
        # The schedule, on the monotonic clock: when the next attempt after a failure is due
        # (None: at the refresh point, or now if there is nothing valid), when the last began,
        # and how long the last successful fetch took (a slow upstream needs an earlier retry).
        self._retry_at: float | None = None
        self._last_attempt: float | None = None
        self._fetch_took = 0.0
        self._wake = asyncio.Event()  # a client brought the next attempt forward

    # reading ------------------------------------------------------------------------------------

    def remaining(self, entry: Cached[T]) -> float:
        """Seconds left by the more pessimistic of the two clocks."""
        return min(entry.wall_expiry - self._wall(), entry.mono_expiry - self._mono())

    def _valid(self) -> Cached[T] | None:
        """The entry if both clocks say more than its margin is left (`remaining` > `margin`)."""
        entry = self._entry
        if (
            entry is not None
            and self._wall() < entry.wall_serve_until
            and self._mono() < entry.mono_serve_until
        ):
            return entry
        return None

    def current_entry(self) -> Cached[T]:
        """The value to serve now, or the error saying why there is none.

        After a refusal retrying will not change (a revoked run) that error is of the refusal's
        own kind (`Forbidden`...); otherwise it is `Unavailable`, whose `retry_after` is the
        time to the next attempt, which this call brings forward (see CLIENT_RETRY_INTERVAL).
        """
        entry = self._valid()
        if entry is not None:
            return entry
        error = self.last_error
        if error is not None:
            cause = error.message
        elif self._entry is not None:
            cause = "the credentials expired and renewal has not succeeded yet"
        else:
            cause = "the first credentials have not been obtained yet"
        message = f"no valid {self.name} credentials: {cause}"
        if error is not None and not error.retryable:
            raise error.restated(message)
        self._hurry()
        raise Unavailable(message, retry_after=self.retry_after())

    def current(self) -> T:
        return self.current_entry().value

    @property
    def ready(self) -> bool:
        return self._valid() is not None

    def retry_after(self) -> int:
        """Whole seconds until the next attempt (at least 1): a 503's `Retry-After`."""
        if self._retry_at is None:  # an attempt is due now or under way
            return 1
        return max(1, math.ceil(self._retry_at - self._mono()))

    # fetching -----------------------------------------------------------------------------------

    async def refresh(self) -> Cached[T]:
        """Fetches a new value; concurrent callers share one upstream call (single flight)."""
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.create_task(self._do_fetch())
        return await asyncio.shield(self._inflight)

    async def _do_fetch(self) -> Cached[T]:
        # Clocks are read before the call, so the computed expiry errs early, never late.
        wall0, mono0 = self._wall(), self._mono()
        self._last_attempt = mono0
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
        self._retry_at, self._fetch_took = None, max(0.0, self._mono() - mono0)
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
                self._retry_at = self._mono() + delay
                log.warning("%s: %s; retrying in %.1f s", self.name, exc.message, delay)
                await self._sleep(delay)
        self._task = asyncio.create_task(self._renew_forever(), name=f"renew {self.name}")

    def stop(self) -> None:
        """Ends renewal at once (the tasks finish cancelling in the background)."""
        for task in (self._task, self._inflight):
            if task is not None and not task.done():
                task.cancel()

    async def close(self) -> None:
        self.stop()
        tasks = [task for task in (self._task, self._inflight) if task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)

    def _backoff(self, permanent: bool) -> float:
        cap = BACKOFF_MAX_PERMANENT if permanent else BACKOFF_MAX
        delay = min(cap, BACKOFF_FIRST * 2.0 ** max(0, self._failures - 1))
        return delay / 2 + random.uniform(0, delay / 2)  # noqa: S311 - jitter, not crypto

    def _refresh_due_in(self, entry: Cached[T]) -> float:
        return self.remaining(entry) - entry.lifetime * (1 - REFRESH_FRACTION)

    def _attempt_due_in(self) -> float:
        if self._retry_at is not None:
            return self._retry_at - self._mono()
        entry = self._entry
        return self._refresh_due_in(entry) if entry is not None else 0.0

    def _hurry(self) -> None:
        """A client found nothing valid: bring the next attempt forward to now, or to
        CLIENT_RETRY_INTERVAL after the last one began. The request itself never waits."""
        if self._task is None or self._task.done():
            return  # not renewing yet (start retries on its own) or closed
        if self._inflight is not None and not self._inflight.done():
            return  # an attempt is under way
        now = self._mono()
        earliest = now
        if self._last_attempt is not None:
            earliest = max(now, self._last_attempt + CLIENT_RETRY_INTERVAL)
        if self._retry_at is None or earliest < self._retry_at:
            self._retry_at = earliest
            self._wake.set()

    async def _pause(self, seconds: float) -> None:
        """Sleeps `seconds`, or less when a client brings the next attempt forward."""
        self._wake.clear()
        sleeping = asyncio.ensure_future(self._sleep(seconds))
        woken = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait((sleeping, woken), return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeping.cancel()
            woken.cancel()
            await asyncio.gather(sleeping, woken, return_exceptions=True)

    def _retry_delay(self, exc: CredsidecarError) -> float:
        delay = self._backoff(permanent=not exc.retryable)
        asked = getattr(exc, "upstream_retry_after", None)
        if asked is not None:  # the upstream's Retry-After (the issuer's rate limits)
            delay = max(delay, float(asked))
        entry = self._valid()
        if entry is not None:
            # Try again before the value we still serve runs out, leaving room for
            # ATTEMPTS_BEFORE_MARGIN more attempts, each as slow as the last successful fetch.
            left = self.remaining(entry) - entry.margin - self._fetch_took
            delay = min(delay, max(RETRY_MIN, left / ATTEMPTS_BEFORE_MARGIN))
        return delay

    async def _renew_forever(self) -> None:
        while True:
            wait = self._attempt_due_in()
            if wait > 0:
                await self._pause(min(wait, MAX_SLEEP))
                continue
            self._retry_at = None  # under way: a 503 meanwhile says "retry in 1 s"
            try:
                await self.refresh()
            except CredsidecarError as exc:
                now = self._mono()
                delay = self._retry_delay(exc)
                if self._retry_at is not None:  # a client brought it forward as this one ended
                    delay = min(delay, max(0.0, self._retry_at - now))
                self._retry_at = now + delay
                if self.ready:
                    state = "still serving valid credentials"
                elif exc.retryable:
                    state = (
                        "nothing valid to serve (a client request brings the attempt forward, "
                        f"at most every {CLIENT_RETRY_INTERVAL:g} s)"
                    )
                else:
                    state = "nothing valid to serve"
                log.error(
                    "renewing %s failed: %s; %s; next attempt in %.1f s",
                    self.name,
                    exc.message,
                    state,
                    delay,
                )
            except Exception:  # a bug must not end renewals for good
                log.exception("unexpected error renewing %s", self.name)
                self._retry_at = self._mono() + BACKOFF_MAX
