"""The one clock tests move by hand: wall and monotonic time, and a sleep that lasts until the
test moves time past its end.

Hand `clock` (or `clock.wall`) where a wall clock is taken, and `clock.mono`/`clock.sleep` to a
`CacheFamily`: renewal then happens exactly when the test moves time past a refresh point, and
no test sleeps real seconds.

`advance` moves time at once. Synchronous code calls it and carries on; async code awaits what
it returns, which also lets every task that can run (a woken sleeper, the renewal it starts)
run before the test looks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Generator
from typing import Any

__all__ = ["FakeClock"]

# A fixed start, far from 0 so expiries computed from it look like real timestamps.
START = 1_800_000_000.0
# Event-loop turns an awaited `advance` yields: enough for a woken sleeper to renew through a
# few awaits (fetch, store, log); bounded, so a busy loop cannot hang the test.
SETTLE_TURNS = 200


class Settling:
    """What `FakeClock.advance` returns: awaiting it yields `turns` event-loop turns; dropping
    it (a synchronous caller) is fine, unlike an unawaited coroutine."""

    def __init__(self, turns: int) -> None:
        self.turns = turns

    def __await__(self) -> Generator[Any, None, None]:
        for _ in range(self.turns):
            yield from asyncio.sleep(0).__await__()


class FakeClock:
    """Wall and monotonic time that move only when the test calls `advance`."""

    def __init__(self, start: float = START) -> None:
        self.now = start
        self.elapsed = 0.0
        self._tick: asyncio.Event | None = None

    def __call__(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.now

    def mono(self) -> float:
        return self.elapsed

    async def sleep(self, seconds: float) -> None:
        end = self.elapsed + seconds
        while self.elapsed < end:
            if self._tick is None:
                self._tick = asyncio.Event()
            await self._tick.wait()

    def advance(self, seconds: float, turns: int = SETTLE_TURNS) -> Settling:
        """Moves both clocks by `seconds` and wakes every sleeper; await the result to let them
        run (up to `turns` event-loop turns)."""
        self.now += seconds
        self.elapsed += seconds
        if self._tick is not None:
            self._tick.set()
            self._tick = None
        return Settling(turns)
