"""Coalescing: calls made while a call of the same group is in flight go together in the next.

A request alone goes at once (no waiting to fill a batch); under load, everything that
arrived during one round trip shares the next one. Each batch is handed to ``run`` whole,
and ``run`` answers each member in order, so a store that evaluates a batch member by
member, atomically, decides exactly as it would have decided the calls one by one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

G = TypeVar("G", bound=Hashable)
A = TypeVar("A")
R = TypeVar("R")


class Coalescer(Generic[G, A, R]):
    def __init__(
        self, run: Callable[[G, list[A]], Awaitable[list[R]]], max_batch: int = 256
    ) -> None:
        self._run = run
        self._max_batch = max_batch
        self._queued: dict[G, list[tuple[A, asyncio.Future[R]]]] = {}
        self._draining: dict[G, asyncio.Task[None]] = {}

    async def submit(self, group: G, member: A) -> R:
        """``member``'s answer, or the exception its batch failed with."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queued.setdefault(group, []).append((member, future))
        if group not in self._draining:
            self._draining[group] = asyncio.create_task(self._drain(group))
        return await future

    async def _drain(self, group: G) -> None:
        try:
            while queue := self._queued.get(group):
                batch, queue[:] = queue[: self._max_batch], queue[self._max_batch :]
                if not queue:
                    del self._queued[group]
                await self._answer(group, batch)
        finally:  # left early only if cancelled: whoever still waits is cancelled too
            del self._draining[group]
            for _, future in self._queued.pop(group, []):
                future.cancel()

    async def _answer(self, group: G, batch: list[tuple[A, asyncio.Future[R]]]) -> None:
        try:
            results = await self._run(group, [member for member, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"{len(batch)} calls answered with {len(results)} results")
        except Exception as exc:  # every caller gets the failure, none waits forever
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        except BaseException:  # cancelled (shutdown): the callers are cancelled with it
            for _, future in batch:
                future.cancel()
            raise
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)
