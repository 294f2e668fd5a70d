"""Wall and monotonic clocks a test moves by hand, with a sleep that lasts until it does.

Hand `wall`, `mono` and `sleep` to a `CacheFamily` (and `wall` to the endpoints): renewal then
happens exactly when the test moves time past a refresh point, and no test sleeps real seconds.
"""

from __future__ import annotations

import asyncio
import time

__all__ = ["ManualClock"]


class ManualClock:
    def __init__(self, wall: float | None = None) -> None:
        self.now = time.time() if wall is None else wall
        self.elapsed = 0.0
        self._tick = asyncio.Event()

    def wall(self) -> float:
        return self.now

    def mono(self) -> float:
        return self.elapsed

    async def sleep(self, seconds: float) -> None:
        end = self.elapsed + seconds
        while self.elapsed < end:
            await self._tick.wait()

    async def advance(self, seconds: float, turns: int = 200) -> None:
        """Moves both clocks, then lets every task run that can (a bounded number of turns)."""
        self.now += seconds
        self.elapsed += seconds
        self._tick.set()
        self._tick = asyncio.Event()
        for _ in range(turns):
            await asyncio.sleep(0)
