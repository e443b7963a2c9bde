"""Leases kept alive: what a process holds in the shared store (an input's in-flight mark, an
upstream call slot) lapses by itself unless the holder renews it.

So a holder that dies, or loses the store and cannot give back what it held, blocks the
other replicas for one lease at most, not for as long as its work might have taken. One
task renews everything held, a third of a lease apart (on the sleep it is given), while
anything is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable

from gateway.store import StoreError

log = logging.getLogger(__name__)


class Heartbeat:
    def __init__(
        self, renew: Callable[[list[str], int], Awaitable[None]], lease_seconds: float, what: str,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:  # fmt: skip
        self._renew = renew
        self._sleep = sleep
        self.lease_ms = round(lease_seconds * 1000)
        self._what = what
        self._held: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    def hold(self, names: Iterable[str]) -> None:
        """Keep ``names`` alive from now on (they were just taken, for a lease)."""
        self._held.update(names)
        if self._held and self._task is None:
            self._task = asyncio.create_task(self._beat())

    def drop(self, names: Iterable[str]) -> None:
        """Stop renewing ``names``: given back, or left to lapse."""
        self._held.difference_update(names)

    async def _beat(self) -> None:
        try:
            while self._held:
                await self._sleep(self.lease_ms / 3000)
                if not self._held:
                    break
                try:
                    await self._renew(list(self._held), self.lease_ms)
                except StoreError as exc:
                    log.warning("%s not renewed (they may lapse): %s", self._what, exc)
        finally:
            self._task = None

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
