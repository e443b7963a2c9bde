"""Failing open: while the shared coordinator (Redis) fails, this process paces itself.

Nomic's rate and the concurrency cap are then held per process, so N replicas could reach N
times the rate until Redis is back; Nomic's own 429s are retried and pause this process.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from gateway import metrics
from gateway.store.base import Coordinator, Mark, StoreError
from gateway.store.memory_coordinator import MemoryCoordinator

log = logging.getLogger(__name__)


class FallbackCoordinator:
    def __init__(self, shared: Coordinator) -> None:
        self._shared = shared
        self._local = MemoryCoordinator()
        self._local_holders: set[str] = set()

    def _failed(self, what: str, exc: StoreError) -> None:
        metrics.STORE_ERRORS.labels(operation=what).inc()
        log.warning("pacing upstream calls in this process alone: %s", exc)

    async def pace(self, interval_ms: int, burst: int, max_wait_ms: int) -> int:
        try:
            return await self._shared.pace(interval_ms, burst, max_wait_ms)
        except StoreError as exc:
            self._failed("pace", exc)
            return await self._local.pace(interval_ms, burst, max_wait_ms)

    async def hold(self, pause_ms: int) -> None:
        await self._local.hold(pause_ms)
        try:
            await self._shared.hold(pause_ms)
        except StoreError as exc:
            self._failed("hold", exc)

    async def acquire_slot(self, holder: str, cap: int, lease_ms: int) -> bool:
        try:
            return await self._shared.acquire_slot(holder, cap, lease_ms)
        except StoreError as exc:
            self._failed("slot", exc)
        taken = await self._local.acquire_slot(holder, cap, lease_ms)
        if taken:
            self._local_holders.add(holder)
        return taken

    async def release_slot(self, holder: str) -> None:
        if holder in self._local_holders:
            self._local_holders.discard(holder)
            await self._local.release_slot(holder)
        else:
            await self._shared.release_slot(holder)

    async def claim_fetches(self, keys: Sequence[str], holder: str, lease_ms: int) -> list[Mark]:
        return await self._shared.claim_fetches(keys, holder, lease_ms)

    async def renew_fetches(self, keys: Sequence[str], holder: str, lease_ms: int) -> None:
        await self._shared.renew_fetches(keys, holder, lease_ms)

    async def release_fetches(self, keys: Sequence[str], holder: str) -> None:
        await self._shared.release_fetches(keys, holder)

    async def fetching(self, keys: Sequence[str]) -> list[Mark]:
        return await self._shared.fetching(keys)
