"""A clock a test holds: seconds that move only when the test moves them, and a sleep on
them. What takes its clock and sleep from outside (the shield, the Fetcher) runs on it with
no real waiting, so the times a test asserts are exact."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")
START = 1000.0


class FakeClock:
    """Seconds that move only when the test moves them, and a sleep on them: a sleeper
    wakes when :meth:`advance` passes its time."""

    def __init__(self, now: float = START) -> None:
        self.now = now
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        woken = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + seconds, next(self._order), woken))
        await woken

    async def advance(self, seconds: float) -> None:
        """Move ``seconds`` on, waking each sleeper at its time, in order."""
        until = self.now + seconds
        await settle()
        while self._sleepers and self._sleepers[0][0] <= until:
            at, _, woken = heapq.heappop(self._sleepers)
            self.now = max(self.now, at)
            if not woken.done():
                woken.set_result(None)
            await settle()
        self.now = until
        await settle()

    async def run(self, awaitable: Awaitable[T], most: float = 600.0) -> T:
        """Await ``awaitable``, moving the clock to each sleeper's time while nothing else
        can run (at most ``most`` seconds on)."""
        task = asyncio.ensure_future(awaitable)
        until = self.now + most
        await settle()
        while not task.done():
            live = [entry for entry in self._sleepers if not entry[2].done()]
            if not live or min(live)[0] > until:
                break
            await self.advance(min(live)[0] - self.now)
        assert task.done(), "the awaited never finished on the fake clock"
        return task.result()


async def settle() -> None:
    """Let every task that can run, run (no real I/O happens here: the store is in memory)."""
    for _ in range(50):
        await asyncio.sleep(0)
