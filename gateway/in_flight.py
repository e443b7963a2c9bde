"""Single flight in the process: one future per input key being fetched.

The first request to miss a key owns its fetch, later ones join its future. An answered
future is remembered ``remember_seconds`` longer, for lookups that began before the entry
was stored: they find the answer here instead of fetching again. A failed one is forgotten
at once: the next request asks again.

Time is a parameter: the clock (entries' freshness is wall-clock), the monotonic clock and
the sleep that the remembering waits on are given, the real ones by default.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import NamedTuple

from gateway.entries import Entry
from gateway.errors import GatewayError


class Landed(NamedTuple):
    """What an in-flight future resolves with: the entry, and whether this process fetched it
    upstream (else another replica did, and paid)."""

    entry: Entry
    here: bool


class InFlight:
    def __init__(
        self,
        remember_seconds: float,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._remember_seconds = remember_seconds
        self._clock = clock
        self._monotonic = monotonic
        self._sleep = sleep
        self._futures: dict[str, asyncio.Future[Landed]] = {}
        self._due: deque[tuple[float, str, asyncio.Future[Landed]]] = deque()  # to forget
        self._forgetting: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        """Keys being fetched or remembered."""
        return len(self._futures)

    def join_or_own(
        self, keys: Iterable[str]
    ) -> tuple[dict[str, asyncio.Future[Landed]], set[str]]:
        """Each key's future: joined where one is in flight (or remembered, and still
        fresh), else new, and then the caller's to fetch (the keys it owns)."""
        loop = asyncio.get_running_loop()
        now = self._clock()
        futures: dict[str, asyncio.Future[Landed]] = {}
        owned: set[str] = set()
        for key in keys:
            future = self._futures.get(key)
            if future is not None and succeeded(future) and not future.result().entry.fresh(now):
                future = None  # a remembered answer that has since gone stale: fetch anew
            if future is None:
                future = self._futures[key] = loop.create_future()
                future.add_done_callback(_consume_exception)
                owned.add(key)
            futures[key] = future
        return futures, owned

    def land(self, key: str, entry: Entry, *, here: bool) -> None:
        """Answer the fetch of ``key``, if one is in flight, and remember it for a while."""
        future = self._futures.get(key)
        if future is None or future.done():
            return
        future.set_result(Landed(entry, here))
        self._due.append((self._monotonic() + self._remember_seconds, key, future))
        if self._forgetting is None:
            self._forgetting = asyncio.create_task(self._forget_when_due())

    def fail(self, keys: Iterable[str], error: GatewayError) -> None:
        """Fail these keys' fetches, and forget them at once: the next request asks again."""
        for key in keys:
            future = self._futures.get(key)
            if future is not None and not future.done():
                del self._futures[key]
                future.set_exception(error)

    async def _forget_when_due(self) -> None:
        try:
            while self._due:
                due, key, future = self._due[0]
                wait = due - self._monotonic()
                if wait > 0:
                    await self._sleep(wait)
                    continue
                self._due.popleft()
                if self._futures.get(key) is future:
                    del self._futures[key]
        finally:
            self._forgetting = None

    async def stop(self) -> None:
        """Stop remembering (at shutdown): what is remembered stays so."""
        task = self._forgetting
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def succeeded(future: asyncio.Future[Landed]) -> bool:
    return future.done() and not future.cancelled() and future.exception() is None


def _consume_exception(future: asyncio.Future[Landed]) -> None:
    """Mark a failed fetch's error as seen: a future no request waits on any more is fine."""
    if not future.cancelled():
        future.exception()
