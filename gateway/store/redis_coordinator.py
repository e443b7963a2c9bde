"""The Redis coordinator: every replica paces, caps and coalesces its upstream calls through
the same Redis, so N replicas together stay under Nomic's limit and fetch an image once.

An input's in-flight mark is named after its cache key, which is the mark's hash tag: mark and
entry live in one Redis Cluster slot, so one pipeline sets or reads the mark and then reads
the entry in that order on the node that holds both. A mark is a lease: its owner renews it
while it fetches, so the mark of an owner that died (or could not remove it) lapses within
the lease.

A team's upstream calls of a UTC minute (``upstream_calls_per_minute``) are counted under the
team's hash tag, beside its other counters (:mod:`gateway.store.redis_keys` names them all).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from typing import Any

from redis.asyncio import RedisCluster
from redis.crc import key_slot

from gateway.store import redis_keys
from gateway.store.base import Mark
from gateway.store.redis_backend import RedisBackend
from gateway.store.redis_ledger import MINUTE_TTL


class RedisCoordinator:
    def __init__(self, backend: RedisBackend) -> None:
        self._backend = backend
        self._redis = backend.client
        self._pace = backend.script("pace.lua", prelude="upstream.lua")
        self._slot = backend.script("slot.lua", prelude="upstream.lua")
        self._start_call = backend.script("start_call.lua", prelude="upstream.lua")
        self._renew_slots = backend.script("renew_slots.lua", prelude="upstream.lua")
        self._unclaim = backend.script("unclaim.lua")
        self._renew = backend.script("renew.lua")
        self._hold = backend.script("hold.lua", prelude="upstream.lua")
        self._team_call = backend.script("team_call.lua")
        self._untake_team_call = backend.script("untake_team_call.lua")

    async def _call(self, what: str, awaitable: Awaitable[Any]) -> Any:
        return await self._backend.call(what, awaitable)

    async def pace(self, interval_ms: int, burst: int, max_wait_ms: int) -> int:
        keys, args = [redis_keys.PACE, redis_keys.HOLD], [interval_ms, burst, max_wait_ms]
        return int(await self._call("pace", self._pace(keys=keys, args=args)))

    async def hold(self, pause_ms: int) -> None:
        await self._call("hold", self._hold(keys=[redis_keys.HOLD], args=[pause_ms]))

    async def acquire_slot(self, holder: str, cap: int, lease_ms: int) -> bool:
        taken = self._slot(keys=[redis_keys.SLOTS], args=[holder, cap, lease_ms])
        return bool(await self._call("slot", taken))

    async def start_call(
        self, holder: str, cap: int, lease_ms: int, interval_ms: int, burst: int, max_wait_ms: int
    ) -> int | None:
        keys = [redis_keys.SLOTS, redis_keys.PACE, redis_keys.HOLD]
        args = [holder, cap, lease_ms, interval_ms, burst, max_wait_ms]
        wait = await self._call("start call", self._start_call(keys=keys, args=args))
        return None if wait is None else int(wait)

    async def take_team_call(self, team_id: str, minute: int, limit: int) -> bool:
        counted = self._team_call(
            keys=[redis_keys.calls_in_minute(team_id, minute)], args=[limit, MINUTE_TTL]
        )
        return bool(await self._call("team call", counted))

    async def give_back_team_call(self, team_id: str, minute: int) -> None:
        uncounted = self._untake_team_call(
            keys=[redis_keys.calls_in_minute(team_id, minute)], args=[]
        )
        await self._call("team call", uncounted)

    async def renew_slots(self, holders: Sequence[str], lease_ms: int) -> None:
        renewal = self._renew_slots(keys=[redis_keys.SLOTS], args=[lease_ms, *holders])
        await self._call("slot renew", renewal)

    async def release_slot(self, holder: str) -> None:
        await self._call("slot release", self._redis.zrem(redis_keys.SLOTS, holder))

    async def claim_fetches(self, keys: Sequence[str], holder: str, lease_ms: int) -> list[Mark]:
        def queue(pipe: Any) -> None:
            for key in keys:
                pipe.set(redis_keys.fetch_mark(key), holder, nx=True, px=lease_ms)
                pipe.get(key)

        replies = await self._backend.pipelined("claim", queue)
        return _marks(replies)

    async def renew_fetches(self, keys: Sequence[str], holder: str, lease_ms: int) -> None:
        renewals = (
            self._renew(keys=group, args=[holder, lease_ms]) for group in self._by_slot(keys)
        )
        await self._call("renew", asyncio.gather(*renewals))

    async def release_fetches(self, keys: Sequence[str], holder: str) -> None:
        unclaims = (self._unclaim(keys=group, args=[holder]) for group in self._by_slot(keys))
        await self._call("unclaim", asyncio.gather(*unclaims))

    async def fetching(self, keys: Sequence[str]) -> list[Mark]:
        def queue(pipe: Any) -> None:
            for key in keys:
                pipe.exists(redis_keys.fetch_mark(key))
                pipe.get(key)

        replies = await self._backend.pipelined("fetching", queue)
        return _marks(replies)

    def _by_slot(self, keys: Sequence[str]) -> list[list[str]]:
        """The marks of ``keys`` for one script call each: all together, or on a cluster one
        group per hash slot."""
        marks = [redis_keys.fetch_mark(key) for key in keys]
        if not isinstance(self._redis, RedisCluster):
            return [marks]
        by_slot: dict[int, list[str]] = {}
        for mark, key in zip(marks, keys, strict=True):
            by_slot.setdefault(key_slot(key.encode()), []).append(mark)
        return list(by_slot.values())


def _marks(replies: list[Any]) -> list[Mark]:
    """Marks from a pipeline's replies, two a key: the mark's, then the entry's."""
    return [Mark(bool(held), stored) for held, stored in zip(*[iter(replies)] * 2, strict=True)]
