"""A family of credential caches, one per key (a GCP scope set or audience, an Azure resource),
kept as a segmented LRU so that a client asking for ever-new keys cannot grow the sidecar's
memory or renewals, nor evict the keys a job uses steadily.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection
from typing import Generic, TypeVar

from credsidecar.cache import Cached, CredentialCache, T
from credsidecar.errors import Unavailable

__all__ = ["MAX_PROBATION", "MAX_PROTECTED", "CacheFamily"]

log = logging.getLogger(__name__)

K = TypeVar("K")

# A family keeps this many caches (scope sets, audiences, resources) fresh, in two segments of a
# segmented LRU. A key asked for once enters the probationary segment; asked for again, it moves
# to the protected one. A client asking for ever-new keys evicts only probationary entries (the
# least recently used first), never the keys in steady use, and cannot make the sidecar hold or
# renew more than MAX_PROTECTED + MAX_PROBATION credentials.
MAX_PROTECTED = 32  # keys in steady use: a pipeline touching many storage accounts or services
MAX_PROBATION = 16  # keys asked for once so far; a flood of new keys churns only these


class CacheFamily(Generic[K, T]):
    """One `CredentialCache` per key (a scope set, an audience), started on first use.

    The first request for a new key waits for its first fetch (shared by every concurrent
    request for that key); after that it is answered from memory and renewed in the background.
    Keys beyond the segments' sizes evict the least recently used key (see MAX_PROTECTED); an
    evicted key's renewal stops, and asking for it again starts afresh. `pinned` keys (the one
    the sidecar's readiness rests on) are never evicted.
    """

    def __init__(
        self,
        name: str,
        fetch: Callable[[K], Awaitable[T]],
        give_up_after: float,
        on_new: Callable[[K, T], None] | None = None,
        pinned: Collection[K] = (),
        wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.name = name
        self._fetch = fetch
        self._give_up_after = give_up_after
        self._on_new = on_new
        self._pinned = frozenset(pinned)
        self._wall, self._mono, self._sleep = wall, mono, sleep
        self._caches: dict[K, CredentialCache[T]] = {}
        # Least recently used first; pinned keys are in neither segment.
        self._probation: OrderedDict[K, None] = OrderedDict()
        self._protected: OrderedDict[K, None] = OrderedDict()
        self._starting: dict[K, asyncio.Task[None]] = {}  # first fetches under way
        self.evictions = 0

    def _make(self, key: K) -> CredentialCache[T]:
        on_new = self._on_new
        return CredentialCache(
            f"{self.name} [{key}]",
            lambda: self._fetch(key),
            on_new=(lambda value: on_new(key, value)) if on_new is not None else None,
            wall=self._wall,
            mono=self._mono,
            sleep=self._sleep,
        )

    def _touch(self, key: K) -> None:
        """A repeated use: probation -> protected; the protected segment's least recently used
        key (when it is full) goes back to probation, where new keys may evict it."""
        if key in self._protected:
            self._protected.move_to_end(key)
        elif key in self._probation:
            del self._probation[key]
            self._protected[key] = None
            if len(self._protected) > MAX_PROTECTED:
                demoted, _ = self._protected.popitem(last=False)
                self._probation[demoted] = None

    def _admit(self, key: K) -> CredentialCache[T]:
        """A new key, making room in the probationary segment first."""
        if key not in self._pinned and len(self._probation) >= MAX_PROBATION:
            victim = next((k for k in self._probation if k not in self._starting), None)
            if victim is None:
                raise Unavailable(
                    f"{self.name}: {MAX_PROBATION} new scope sets, audiences or resources are "
                    "being fetched at once; retry in a moment",
                    retry_after=1,
                )
            self._evict(victim)
        cache = self._caches[key] = self._make(key)
        if key not in self._pinned:
            self._probation[key] = None
        starting = self._starting[key] = asyncio.create_task(cache.start(self._give_up_after))
        starting.add_done_callback(functools.partial(self._started, key, cache))
        return cache

    def _evict(self, key: K) -> None:
        cache = self._caches.pop(key)
        self._probation.pop(key, None)
        self._protected.pop(key, None)
        self.evictions += 1
        cache.stop()
        log.info("%s: stopped renewing %s, the least recently used of the keys kept fresh",
                 self.name, cache.name)  # fmt: skip

    def _started(self, key: K, cache: CredentialCache[T], task: asyncio.Task[None]) -> None:
        """A start ended: a failed one is forgotten, so the next request tries again."""
        if self._starting.get(key) is task:
            del self._starting[key]
        if (task.cancelled() or task.exception() is not None) and self._caches.get(key) is cache:
            del self._caches[key]
            self._probation.pop(key, None)
            self._protected.pop(key, None)

    async def get(self, key: K) -> Cached[T]:
        cache = self._caches.get(key)
        if cache is None:
            cache = self._admit(key)
        else:
            self._touch(key)
        starting = self._starting.get(key)
        if starting is not None:
            await asyncio.shield(starting)  # a failed start is forgotten: see _started
        return cache.current_entry()

    def get_now(self, key: K) -> Cached[T] | None:
        """`get` without awaiting, for the endpoints' hot path (a coroutine less per request):
        the entry, or the error saying why there is none, for a key already kept fresh; None
        when the key is new or its first fetch is under way: then await `get`."""
        cache = self._caches.get(key)
        if cache is None or key in self._starting:
            return None
        self._touch(key)
        return cache.current_entry()

    def current(self, key: K) -> Cached[T]:
        cache = self._caches.get(key)
        if cache is None:
            raise Unavailable(f"{self.name} [{key}]: not requested yet")
        return cache.current_entry()

    def __contains__(self, key: object) -> bool:
        """Whether `key` is kept fresh now."""
        return key in self._caches

    async def close(self) -> None:
        caches = list(self._caches.values())  # a cancelled start drops its cache from the dict
        starting = list(self._starting.values())
        for task in starting:
            task.cancel()
        await asyncio.gather(*starting, return_exceptions=True)
        for cache in caches:
            await cache.close()
