"""The Redis coordinator: every replica paces, caps and coalesces its upstream calls through
the same Redis, so N replicas together stay under Nomic's limit and fetch an image once."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from typing import Any

from redis.asyncio import RedisCluster
from redis.crc import key_slot

from gateway.store.redis_backend import RedisBackend

# Keys one script reads together share a hash tag (one Redis Cluster slot).
PACE_KEY = "ng:v1:{upstream}:tat"
HOLD_KEY = "ng:v1:{upstream}:hold"
SLOTS_KEY = "ng:v1:{upstream}:slots"
FETCH_PREFIX = "ng:v1:fetching:"


class RedisCoordinator:
    def __init__(self, backend: RedisBackend) -> None:
        self._backend = backend
        self._redis = backend.client
        self._pace = backend.script("pace.lua")
        self._slot = backend.script("slot.lua")
        self._unclaim = backend.script("unclaim.lua")
        self._hold = backend.script("hold.lua")

    async def _call(self, what: str, awaitable: Awaitable[Any]) -> Any:
        return await self._backend.call(what, awaitable)

    async def pace(self, interval_ms: int, burst: int, max_wait_ms: int) -> int:
        args = [interval_ms, burst, max_wait_ms]
        return int(await self._call("pace", self._pace(keys=[PACE_KEY, HOLD_KEY], args=args)))

    async def hold(self, pause_ms: int) -> None:
        await self._call("hold", self._hold(keys=[HOLD_KEY], args=[pause_ms]))

    async def acquire_slot(self, holder: str, cap: int, lease_ms: int) -> bool:
        taken = await self._call("slot", self._slot(keys=[SLOTS_KEY], args=[holder, cap, lease_ms]))
        return bool(taken)

    async def release_slot(self, holder: str) -> None:
        await self._call("slot release", self._redis.zrem(SLOTS_KEY, holder))

    async def claim_fetches(self, keys: Sequence[str], holder: str, ttl_ms: int) -> list[bool]:
        claimed = await self._backend.pipelined("claim", lambda pipe: [
            pipe.set(FETCH_PREFIX + key, holder, nx=True, px=ttl_ms) for key in keys
        ])  # fmt: skip
        return [bool(value) for value in claimed]

    async def release_fetches(self, keys: Sequence[str], holder: str) -> None:
        # One script call for all the marks; on a cluster one per hash slot they live in.
        marks = [FETCH_PREFIX + key for key in keys]
        if isinstance(self._redis, RedisCluster):
            by_slot: dict[int, list[str]] = {}
            for mark in marks:
                by_slot.setdefault(key_slot(mark.encode()), []).append(mark)
            groups = list(by_slot.values())
        else:
            groups = [marks]
        unclaims = (self._unclaim(keys=group, args=[holder]) for group in groups)
        await self._call("unclaim", asyncio.gather(*unclaims))

    async def fetching(self, keys: Sequence[str]) -> list[bool]:
        marks = await self._backend.pipelined(
            "fetching", lambda pipe: [pipe.exists(FETCH_PREFIX + key) for key in keys]
        )
        return [bool(mark) for mark in marks]
