"""The embedded coordinator: one process shares nothing, so this is local state only."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from gateway.store.base import Mark


class MemoryCoordinator:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tat_ms = 0.0
        self._held_until_ms = 0.0
        self._slots: dict[str, float] = {}
        self._team_calls: dict[str, tuple[int, int]] = {}  # team → its minute, calls counted

    def _now_ms(self) -> float:
        return self._clock() * 1000

    async def pace(self, interval_ms: int, burst: int, max_wait_ms: int) -> int:
        now = self._now_ms()
        tat = max(self._tat_ms, now)
        wait = max(0.0, tat - (burst - 1) * interval_ms - now, self._held_until_ms - now)
        if wait > max_wait_ms:
            return -max(1, round(wait))
        tat = max(tat, now + wait)
        self._tat_ms = tat + interval_ms
        return round(wait)

    async def hold(self, pause_ms: int) -> None:
        self._held_until_ms = max(self._held_until_ms, self._now_ms() + pause_ms)

    async def acquire_slot(self, holder: str, cap: int, lease_ms: int) -> bool:
        now = self._now_ms()
        self._slots = {h: end for h, end in self._slots.items() if end > now}
        if len(self._slots) >= cap:
            return False
        self._slots[holder] = now + lease_ms
        return True

    async def start_call(
        self, holder: str, cap: int, lease_ms: int, interval_ms: int, burst: int, max_wait_ms: int
    ) -> int | None:
        if not await self.acquire_slot(holder, cap, lease_ms):
            return None
        wait = await self.pace(interval_ms, burst, max_wait_ms)
        if wait < 0:
            await self.release_slot(holder)
        return wait

    async def take_team_call(self, team_id: str, minute: int, limit: int) -> bool:
        counted_in, used = self._team_calls.get(team_id, (minute, 0))
        if counted_in > minute:  # the clock went back: that minute is over
            return False
        if counted_in < minute:
            used = 0
        if used >= limit:  # the rule of lua/team_call.lua
            return False
        self._team_calls[team_id] = (minute, used + 1)
        return True

    async def give_back_team_call(self, team_id: str, minute: int) -> None:
        counted_in, used = self._team_calls.get(team_id, (minute, 0))
        if counted_in == minute and used > 0:
            self._team_calls[team_id] = (minute, used - 1)

    async def renew_slots(self, holders: Sequence[str], lease_ms: int) -> None:
        now = self._now_ms()
        for holder in holders:
            if self._slots.get(holder, 0) > now:
                self._slots[holder] = now + lease_ms

    async def release_slot(self, holder: str) -> None:
        self._slots.pop(holder, None)

    async def claim_fetches(self, keys: Sequence[str], holder: str, lease_ms: int) -> list[Mark]:
        return [Mark(True, None)] * len(keys)  # one process: the fetcher's futures coalesce

    async def renew_fetches(self, keys: Sequence[str], holder: str, lease_ms: int) -> None:
        return None

    async def release_fetches(self, keys: Sequence[str], holder: str) -> None:
        return None

    async def fetching(self, keys: Sequence[str]) -> list[Mark]:
        return [Mark(False, None)] * len(keys)
