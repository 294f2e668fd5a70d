"""The refresh-ahead cache: readiness, single flight, renewal timing, failure and clock rules."""

from __future__ import annotations

import asyncio
import logging
import math
import re
from dataclasses import dataclass

import pytest

from credsidecar.cache import (
    ATTEMPTS_BEFORE_MARGIN,
    CLIENT_RETRY_INTERVAL,
    REFRESH_FRACTION,
    CredentialCache,
)
from credsidecar.cache_family import MAX_PROBATION, MAX_PROTECTED, CacheFamily
from credsidecar.errors import CredsidecarError, Forbidden, Unavailable


@dataclass(frozen=True)
class Item:
    serial: int
    expires_at: float


class World:
    """Both clocks, a sleep that moves them, and an upstream that can be told to fail.

    By default a sleep moves both clocks at once. With `manual` set, a sleep lasts until the
    test moves the clocks past its end with `advance`, so a test can act between attempts."""

    def __init__(self, lifetime: float = 100.0) -> None:
        self.wall = 1_000_000.0
        self.mono = 50.0
        self.lifetime = lifetime
        self.fetch_seconds = 0.0  # how long a successful fetch takes
        self.manual = False
        self.sleeps: list[float] = []
        self.fetch_times: list[float] = []
        self.fetched_keys: list[str] = []
        self.failures: list[Exception] = []
        self.gate: asyncio.Event | None = None
        self._tick = asyncio.Event()

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if not self.manual:
            self.wall += seconds
            self.mono += seconds
            await asyncio.sleep(0)
            return
        end = self.mono + seconds
        while self.mono < end:
            await self._tick.wait()

    async def advance(self, seconds: float) -> None:
        """Moves both clocks, then lets every task run that can."""
        self.wall += seconds
        self.mono += seconds
        self._tick.set()
        self._tick = asyncio.Event()
        await settle()

    async def fetch(self) -> Item:
        started = self.wall
        self.fetch_times.append(started)
        if self.gate is not None:
            await self.gate.wait()
        if self.failures:
            raise self.failures.pop(0)
        self.wall += self.fetch_seconds
        self.mono += self.fetch_seconds
        return Item(len(self.fetch_times), started + self.lifetime)

    async def fetch_key(self, key: str) -> Item:
        self.fetched_keys.append(key)
        return await self.fetch()

    def cache(self) -> CredentialCache[Item]:
        return CredentialCache(
            "test", self.fetch, wall=lambda: self.wall, mono=lambda: self.mono, sleep=self.sleep
        )

    def family(self, pinned: tuple[str, ...] = ()) -> CacheFamily[str, Item]:
        return CacheFamily("test", self.fetch_key, 10, pinned=pinned, wall=lambda: self.wall,
                           mono=lambda: self.mono, sleep=self.sleep)  # fmt: skip


async def settle(turns: int = 200) -> None:
    """Lets every task run that can (a bounded number of event-loop turns)."""
    for _ in range(turns):
        await asyncio.sleep(0)


async def fetched(world: World, count: int, turns: int = 20_000) -> None:
    """Lets the renewal task run (the fake sleep only yields) until `count` fetches."""
    for _ in range(turns):
        if len(world.fetch_times) >= count:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{len(world.fetch_times)} fetches, expected {count}")


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


# after an outage ----------------------------------------------------------------------------------


async def expired_in_a_long_outage(world: World) -> CredentialCache[Item]:
    """A cache whose value expired in an outage long enough for the backoff to reach its cap,
    its renewal task asleep until the test moves the clocks."""
    world.manual = True
    cache = world.cache()
    await cache.start(give_up_after=10)
    world.failures = [Unavailable("STS is down")] * 1000
    for _ in range(10):  # each move lets one more attempt fail
        await world.advance(100)
    assert not cache.ready
    return cache


async def test_after_a_long_outage_a_client_request_brings_the_next_attempt_forward() -> None:
    world = World(lifetime=100)
    cache = await expired_in_a_long_outage(world)
    attempts = len(world.fetch_times)
    await world.advance(5)  # the upstream is back; the renewal task is still backing off
    world.failures = []
    assert len(world.fetch_times) == attempts
    with pytest.raises(Unavailable) as info:
        cache.current()  # answered at once, never held on the upstream
    assert info.value.retry_after == 1
    await fetched(world, attempts + 1)
    assert cache.current().serial == attempts + 1
    await cache.close()


async def test_client_requests_bring_attempts_forward_at_most_every_client_retry_interval() -> None:
    world = World(lifetime=100)
    cache = await expired_in_a_long_outage(world)
    await world.advance(10)
    attempts = len(world.fetch_times)
    for _ in range(100):
        with pytest.raises(Unavailable):
            cache.current()
    await settle()
    assert len(world.fetch_times) == attempts + 1  # one attempt (failed) for a hundred requests
    with pytest.raises(Unavailable) as info:
        cache.current()
    assert info.value.retry_after == math.ceil(CLIENT_RETRY_INTERVAL)
    await world.advance(CLIENT_RETRY_INTERVAL - 0.5)
    assert len(world.fetch_times) == attempts + 1
    await world.advance(0.5)
    assert len(world.fetch_times) == attempts + 2
    await cache.close()


async def test_retry_after_is_the_time_to_the_next_attempt_the_log_names(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="credsidecar.cache")
    world = World(lifetime=100)
    cache = await expired_in_a_long_outage(world)
    logged = float(re.findall(r"next attempt in (\d+\.\d) s", caplog.text)[-1])
    assert logged > 10  # the backoff grew well beyond the client retry interval
    retry_after = cache.retry_after()
    assert math.ceil(logged - 0.05) <= retry_after <= math.ceil(logged + 0.05)
    attempts = len(world.fetch_times)
    await world.advance(retry_after - 1)
    assert len(world.fetch_times) == attempts
    await world.advance(1)
    assert len(world.fetch_times) == attempts + 1
    await cache.close()


async def test_a_refusal_is_reported_as_itself_once_nothing_valid_is_left() -> None:
    """A revoked run: valid credentials are served until they expire, then the refusal (403),
    not a retryable 503; client requests do not bring attempts forward."""
    world = World(lifetime=100)
    world.manual = True
    cache = world.cache()
    await cache.start(give_up_after=10)
    world.failures = [Forbidden("run 'r1' was revoked")] * 1000
    await world.advance(50)  # the renewal at half-life is refused
    assert len(world.fetch_times) == 2
    assert cache.current().serial == 1
    await world.advance(46)  # 4 s left: inside the serving margin (5 s)
    attempts = len(world.fetch_times)
    for _ in range(2):
        with pytest.raises(Forbidden, match="no valid test credentials: run 'r1' was") as info:
            cache.current()
        assert info.value.status == 403 and not info.value.retryable
    await settle()
    assert len(world.fetch_times) == attempts
    await cache.close()


async def test_a_short_lived_value_is_retried_early_enough_for_a_slow_upstream() -> None:
    """A 20 s credential from an upstream that takes 4 s to answer: after the renewal at
    half-life fails, several attempts still begin early enough to end before the margin."""
    world = World(lifetime=20)
    world.fetch_seconds = 4
    cache = world.cache()
    await cache.start(give_up_after=10)
    world.failures = [Unavailable("the issuer is restarting")] * 1000
    await fetched(world, 40)
    await cache.close()
    served_until = world.fetch_times[0] + 20 - 20 * 0.05  # expiry less the serving margin
    in_time = [t for t in world.fetch_times[1:] if t + world.fetch_seconds <= served_until]
    assert len(in_time) >= ATTEMPTS_BEFORE_MARGIN + 2, in_time


# families -----------------------------------------------------------------------------------------


async def test_a_flood_of_new_keys_evicts_only_keys_asked_for_once() -> None:
    world = World()
    world.manual = True
    family = world.family(pinned=("default",))
    await family.get("default")
    hot = [f"hot-{i}" for i in range(MAX_PROTECTED)]
    for key in hot:  # in steady use
        await family.get(key)
        await family.get(key)
    await family.get("asked-once")
    for i in range(10 * (MAX_PROTECTED + MAX_PROBATION)):
        await family.get(f"flood-{i}")
    assert all(key in family for key in ["default", *hot])
    assert "asked-once" not in family
    assert world.fetched_keys.count("hot-0") == 1  # never evicted, so never fetched again
    kept = {key for key in world.fetched_keys if key in family}
    assert len(kept) == 1 + MAX_PROTECTED + MAX_PROBATION
    await family.close()


async def test_the_pinned_key_is_never_evicted_even_by_keys_in_steady_use() -> None:
    world = World()
    world.manual = True
    family = world.family(pinned=("default",))
    await family.get("default")
    await family.get("not-pinned")
    for i in range(3 * (MAX_PROTECTED + MAX_PROBATION)):
        await family.get(f"key-{i}")
        await family.get(f"key-{i}")
    assert "default" in family and "not-pinned" not in family
    assert world.fetched_keys.count("default") == 1
    await family.close()


async def test_an_evicted_key_stops_renewing_and_starts_afresh_when_asked_again() -> None:
    world = World(lifetime=100)
    world.manual = True
    family = world.family()
    keys = [f"key-{i}" for i in range(MAX_PROBATION + 5)]
    for key in keys:
        await family.get(key)
    assert [key for key in keys if key not in family] == keys[:5]  # least recently used
    world.fetched_keys.clear()
    await world.advance(60)  # past every key's refresh point
    assert sorted(world.fetched_keys) == sorted(keys[5:])  # no renewal for an evicted key
    entry = await family.get("key-0")
    assert world.fetched_keys[-1] == "key-0" and entry.generation == 1
    await family.close()


async def test_more_new_keys_at_once_than_probation_holds_are_refused_for_a_moment() -> None:
    world = World()
    world.manual = True
    world.gate = asyncio.Event()  # every first fetch is still under way
    family = world.family()
    starting = [asyncio.create_task(family.get(f"key-{i}")) for i in range(MAX_PROBATION)]
    await settle()
    with pytest.raises(Unavailable, match="being fetched at once") as info:
        await family.get("one-more")
    assert info.value.retry_after == 1
    world.gate.set()
    assert len(await asyncio.gather(*starting)) == MAX_PROBATION
    await family.get("one-more")  # the first fetches done, the least recently used goes
    assert "key-0" not in family
    await family.close()


async def test_a_failed_first_fetch_is_forgotten_so_the_next_request_tries_again() -> None:
    world = World()
    world.manual = True
    family = world.family()
    world.failures = [Forbidden("not granted")]
    with pytest.raises(CredsidecarError, match="not granted"):
        await family.get("key")
    assert "key" not in family
    assert (await family.get("key")).value.serial == 2
    await family.close()


async def test_get_now_answers_without_waiting_only_once_a_key_is_kept_fresh() -> None:
    world = World()
    world.manual = True
    world.gate = asyncio.Event()
    family = world.family()
    assert family.get_now("key") is None  # new: nothing started, nothing fetched
    assert world.fetched_keys == []
    first = asyncio.create_task(family.get("key"))
    await settle()
    assert family.get_now("key") is None  # first fetch under way: `get` awaits it
    world.gate.set()
    entry = await first
    now = family.get_now("key")
    assert now is not None and now.generation == entry.generation
    assert world.fetched_keys == ["key"]  # get_now fetched nothing itself
    await family.close()


async def test_get_now_raises_the_same_error_as_get_once_nothing_valid_is_left() -> None:
    world = World(lifetime=100)
    world.manual = True
    family = world.family()
    await family.get("key")
    world.failures = [Forbidden("run revoked")] * 50
    await world.advance(150)  # renewal refused and the value expired
    with pytest.raises(Forbidden, match="run revoked"):
        family.get_now("key")
    with pytest.raises(Forbidden, match="run revoked"):
        await family.get("key")
    await family.close()


async def test_a_renewal_waits_as_long_as_the_upstream_asked_but_not_past_the_margin() -> None:
    world = World(lifetime=1000)
    cache = world.cache()
    await cache.start(give_up_after=10)
    # The issuer's rate limit: 429 with Retry-After: 60, twice (backoff alone: 1 s, then 2 s).
    world.failures = [Unavailable("rate limited", upstream_retry_after=60)] * 2
    await fetched(world, 4)
    gaps = [b - a for a, b in zip(world.fetch_times[1:], world.fetch_times[2:], strict=False)]
    assert [round(gap) for gap in gaps] == [60, 60]
    # Asked for longer than the value we serve has left: retried before it runs out instead.
    world.failures = [Unavailable("rate limited", upstream_retry_after=10_000)] * 2
    before = len(world.fetch_times)
    await fetched(world, before + 3)
    retry = world.fetch_times[before + 1] - world.fetch_times[before]
    assert retry < 500  # well inside the value's remaining half-life, not 10,000 s
    assert cache.current().serial == before + 3
    await cache.close()
