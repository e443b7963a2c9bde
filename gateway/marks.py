"""This process's in-flight marks in the shared store: which replica fetches which input.

A mark is a lease (:class:`gateway.leases.Heartbeat`): taken where no other replica holds one,
renewed every third of ``lease_seconds`` while this process fetches, released once the entry
is stored; one a dead holder (or one that lost the store) left behind lapses by itself. The
:class:`~gateway.fetch.Fetcher` decides what to do with the marks it reads; this does the I/O.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable

from gateway.leases import Heartbeat
from gateway.store import StoreError
from gateway.store.base import Coordinator, Mark

log = logging.getLogger(__name__)


class Marks:
    """In-flight marks on ``coordinator``; with ``shared`` off (one process, no shared store)
    there are none to release."""

    def __init__(
        self,
        coordinator: Coordinator,
        lease_seconds: float,
        *,
        shared: bool,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.shared = shared
        self._coordinator = coordinator
        self._holder = uuid.uuid4().hex
        self._held = Heartbeat(self._renew, lease_seconds, "in-flight marks", sleep=sleep)

    async def claim(self, keys: list[str]) -> list[Mark]:
        """Take the marks of ``keys`` where no other replica holds one (each read with its
        entry, if stored); those taken are renewed from now on. Raises StoreError."""
        marks = await self._coordinator.claim_fetches(keys, self._holder, self._held.lease_ms)
        self._held.hold(key for key, mark in zip(keys, marks, strict=True) if mark.held)
        return marks

    async def read(self, keys: list[str]) -> list[Mark]:
        """Whether another replica still holds each of ``keys``, and its entry if stored.
        Raises StoreError."""
        return await self._coordinator.fetching(keys)

    async def release(self, keys: list[str]) -> None:
        if not self.shared:
            return
        self._held.drop(keys)  # not renewed: one left behind soon lapses
        try:
            await self._coordinator.release_fetches(keys, self._holder)
        except StoreError as exc:
            log.warning("in-flight marks left to lapse: %s", exc)

    async def stop(self) -> None:
        await self._held.stop()

    async def _renew(self, keys: list[str], lease_ms: int) -> None:
        await self._coordinator.renew_fetches(keys, self._holder, lease_ms)
