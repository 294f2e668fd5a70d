"""The refresh-ahead cache: readiness, single flight, renewal timing, failure and clock rules."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from credsidecar.cache import REFRESH_FRACTION, CredentialCache
from credsidecar.errors import Forbidden, Unavailable


@dataclass(frozen=True)
class Item:
    serial: int
    expires_at: float


class World:
    """Both clocks, a sleep that moves them, and an upstream that can be told to fail."""

    def __init__(self, lifetime: float = 100.0) -> None:
        self.wall = 1_000_000.0
        self.mono = 50.0
        self.lifetime = lifetime
        self.sleeps: list[float] = []
        self.fetch_times: list[float] = []
        self.failures: list[Exception] = []
        self.gate: asyncio.Event | None = None

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.wall += seconds
        self.mono += seconds
        await asyncio.sleep(0)

    async def fetch(self) -> Item:
        self.fetch_times.append(self.wall)
        if self.gate is not None:
            await self.gate.wait()
        if self.failures:
            raise self.failures.pop(0)
        return Item(len(self.fetch_times), self.wall + self.lifetime)

    def cache(self) -> CredentialCache[Item]:
        return CredentialCache(
            "test", self.fetch, wall=lambda: self.wall, mono=lambda: self.mono, sleep=self.sleep
        )


async def fetched(world: World, count: int) -> None:
    """Lets the renewal task run (the fake sleep only yields) until `count` fetches."""
    while len(world.fetch_times) < count:  # noqa: ASYNC110 - polling the loop is the point
        await asyncio.sleep(0)


async def test_first_value_is_fetched_before_ready() -> None:
    world = World()
    cache = world.cache()
    assert not cache.ready
    with pytest.raises(Unavailable, match="first credentials have not been obtained"):
        cache.current()
    await cache.start(give_up_after=10)
    assert cache.ready and cache.current().serial == 1
    await cache.close()


async def test_concurrent_refreshes_share_one_upstream_call() -> None:
    world = World()
    world.gate = asyncio.Event()
    cache = world.cache()
    calls = [asyncio.create_task(cache.refresh()) for _ in range(50)]
    await asyncio.sleep(0)
    world.gate.set()
    entries = await asyncio.gather(*calls)
    assert cache.fetches == 1
    assert {e.generation for e in entries} == {1}


async def test_background_renewal_happens_at_half_lifetime() -> None:
    world = World(lifetime=100)
    cache = world.cache()
    await cache.start(give_up_after=10)
    await fetched(world, 4)
    await cache.close()
    gaps = [b - a for a, b in zip(world.fetch_times, world.fetch_times[1:], strict=False)]
    assert gaps == [pytest.approx(100 * REFRESH_FRACTION)] * 3
    assert max(world.sleeps) <= 10  # wakes often enough to notice clock changes


async def test_failed_renewal_keeps_serving_then_refuses_after_expiry() -> None:
    world = World(lifetime=100)
    cache = world.cache()
    await cache.start(give_up_after=10)
    world.failures = [Unavailable("STS is down")] * 1000
    world.wall += 60
    world.mono += 60
    with pytest.raises(Unavailable):
        await cache.refresh()
    assert cache.current().serial == 1  # still valid: served through the outage
    world.wall += 36
    world.mono += 36  # 4 s left, inside the serving margin (5 s for a 100 s lifetime)
    with pytest.raises(Unavailable, match="no valid test credentials: STS is down") as info:
        cache.current()
    assert info.value.retry_after >= 1


async def test_renewal_retries_with_growing_jittered_backoff_before_expiry() -> None:
    world = World(lifetime=1000)
    cache = world.cache()
    await cache.start(give_up_after=10)
    world.failures = [Unavailable("down")] * 6
    await fetched(world, 8)
    await cache.close()
    # After the renewal at half-life: six failures, then success.
    retry_gaps = [b - a for a, b in zip(world.fetch_times[1:], world.fetch_times[2:], strict=False)]
    for attempt, gap in enumerate(retry_gaps[:6]):
        nominal = 2.0**attempt
        assert nominal / 2 <= gap <= nominal, (attempt, gap)
    assert cache.current().serial == 8


async def test_permanent_refusal_at_start_is_raised_at_once() -> None:
    world = World()
    world.failures = [Forbidden("run r1 was revoked")]
    cache = world.cache()
    with pytest.raises(Forbidden, match="revoked"):
        await cache.start(give_up_after=60)
    assert world.sleeps == []


async def test_transient_failures_at_start_are_retried() -> None:
    world = World()
    world.failures = [Unavailable("issuer starting")] * 3
    cache = world.cache()
    await cache.start(give_up_after=60)
    assert cache.current().serial == 4
    await cache.close()


async def test_start_gives_up_after_the_deadline() -> None:
    world = World()
    world.failures = [Unavailable("issuer down")] * 1000
    cache = world.cache()
    with pytest.raises(Unavailable, match="issuer down"):
        await cache.start(give_up_after=20)
    assert sum(world.sleeps) == pytest.approx(20)  # slept exactly up to the deadline


async def test_wall_clock_jumping_back_does_not_extend_the_lifetime() -> None:
    world = World(lifetime=100)
    cache = world.cache()
    await cache.refresh()
    world.wall -= 3600  # clock set back an hour: wall time says plenty left
    world.mono += 99
    with pytest.raises(Unavailable):
        cache.current()


async def test_suspended_host_does_not_extend_the_lifetime() -> None:
    world = World(lifetime=100)
    cache = world.cache()
    await cache.refresh()
    world.wall += 500  # suspended: the monotonic clock did not move
    with pytest.raises(Unavailable):
        cache.current()


async def test_already_expired_upstream_value_is_refused() -> None:
    world = World(lifetime=-1)
    cache = world.cache()
    with pytest.raises(Unavailable, match="already-expired"):
        await cache.refresh()
    assert not cache.ready
