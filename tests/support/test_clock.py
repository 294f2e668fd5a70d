"""The hand-moved clock: time stands still until the test moves it, sleepers wake exactly then."""

from __future__ import annotations

import asyncio

from tests.support.clock import FakeClock


def test_time_moves_only_when_advanced_and_synchronous_callers_need_not_await() -> None:
    clock = FakeClock(start=100.0)
    assert (clock(), clock.wall(), clock.mono()) == (100.0, 100.0, 0.0)
    clock.advance(5)  # no event loop, result dropped: no "never awaited" warning
    assert (clock(), clock.wall(), clock.mono()) == (105.0, 105.0, 5.0)


async def test_a_sleeper_wakes_once_time_passes_its_end_and_not_before() -> None:
    clock = FakeClock()
    woke = asyncio.Event()

    async def sleeper() -> None:
        await clock.sleep(10)
        woke.set()

    task = asyncio.create_task(sleeper())
    await asyncio.sleep(0)  # it starts sleeping now
    await clock.advance(9.5)
    assert not woke.is_set()
    await clock.advance(0.5)
    assert woke.is_set()
    await task


async def test_an_awaited_advance_lets_the_woken_tasks_run_their_follow_up_work() -> None:
    clock, steps = FakeClock(), []

    async def renewer() -> None:
        await clock.sleep(1)
        for step in range(5):  # a renewal awaits several times before it is done
            await asyncio.sleep(0)
            steps.append(step)

    task = asyncio.create_task(renewer())
    await asyncio.sleep(0)
    await clock.advance(1)
    assert steps == [0, 1, 2, 3, 4]
    await task
