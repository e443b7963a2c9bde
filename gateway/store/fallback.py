"""While the shared store (Redis) fails: what this process does alone.

:class:`FallbackCoordinator` paces upstream calls in the process: Nomic's rate and the
concurrency cap are then held per process, so N replicas could reach N times the rate until
Redis is back; Nomic's own 429s are retried and pause this process. A team's upstream calls
a minute are counted in the process too (N replicas: N times its limit, beside what the store
had counted).

:class:`FallbackLedger` decides admissions in the process (fail open), or refuses them
(closed), and keeps every settle the store could not take to be made later, merged
(:mod:`gateway.store.pending`): nothing lost, nothing counted twice, no reservation left
behind, and memory that does not grow with the outage.
"""

from __future__ import annotations

import logging
import secrets
from collections import Counter
from collections.abc import Mapping, Sequence

from gateway import metrics, tags
from gateway.quota import Decision, Demand, Window
from gateway.store.base import Coordinator, Mark, QuotaLedger, Settlement, StoreError
from gateway.store.memory_coordinator import MemoryCoordinator
from gateway.store.memory_ledger import MemoryLedger
from gateway.store.pending import PendingSettles
from gateway.teams import Team

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

    async def start_call(
        self, holder: str, cap: int, lease_ms: int, interval_ms: int, burst: int, max_wait_ms: int
    ) -> int | None:
        try:
            return await self._shared.start_call(
                holder, cap, lease_ms, interval_ms, burst, max_wait_ms
            )
        except StoreError as exc:
            self._failed("slot", exc)
        wait = await self._local.start_call(holder, cap, lease_ms, interval_ms, burst, max_wait_ms)
        if wait is not None and wait >= 0:
            self._local_holders.add(holder)
        return wait

    async def take_team_call(self, team_id: str, minute: int, limit: int) -> bool:
        try:
            return await self._shared.take_team_call(team_id, minute, limit)
        except StoreError as exc:
            self._failed("team call", exc)
        return await self._local.take_team_call(team_id, minute, limit)

    async def give_back_team_call(self, team_id: str, minute: int) -> None:
        try:
            await self._shared.give_back_team_call(team_id, minute)
        except StoreError as exc:
            self._failed("team call", exc)
            await self._local.give_back_team_call(team_id, minute)

    async def renew_slots(self, holders: Sequence[str], lease_ms: int) -> None:
        await self._local.renew_slots([h for h in holders if h in self._local_holders], lease_ms)
        shared = [holder for holder in holders if holder not in self._local_holders]
        if shared:
            await self._shared.renew_slots(shared, lease_ms)

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


class FallbackLedger:
    """The request path's ledger over the ``shared`` one, whose failures it answers.

    A settle the store fails goes to ``pending`` (:class:`PendingSettles`), and so does
    every settle while the store fails: :meth:`settle` never raises. An admit the store
    fails is decided, with ``fail_open``, by a :class:`MemoryLedger` of this process, which
    holds each limit per process until the store takes writes again (and while it fails,
    admits go there without asking it); without, the :class:`StoreError` is raised (the
    request is refused). An admit that may have run all the same (it timed out after) has
    its id handed to ``pending``, so that what it reserved is released.
    """

    def __init__(self, shared: QuotaLedger, pending: PendingSettles, *, fail_open: bool) -> None:
        self._shared = shared
        self._pending = pending
        self._local = MemoryLedger() if fail_open else None
        self._decided_here: set[str] = set()  # admitted by the local ledger, to settle there

    async def admit(
        self, team: Team, want: Demand, at: Window, usage: Mapping[str, int], request_id: str,
        tag: str = tags.UNTAGGED,
    ) -> Decision:  # fmt: skip
        failure: StoreError | None = None
        if self._local is None or not self._pending.failing:
            try:
                return await self._shared.admit(team, want, at, usage, request_id, tag)
            except StoreError as exc:
                metrics.STORE_ERRORS.labels(operation="admit").inc()
                failure = exc
        if self._local is None:
            assert failure is not None
            self._pending.add(self._release(team, at, request_id), reserved=False, failure=failure)
            raise failure
        decision = await self._local.admit(team, want, at, usage, request_id, tag)
        if decision.allowed and not usage:
            self._decided_here.add(request_id)
        kept = Settlement(team.id, at.day, at.month, request_id, 0, Counter(usage), tag)
        if not decision.allowed:
            kept = self._release(team, at, request_id)
        self._pending.add(kept, failure=failure)
        return decision

    @staticmethod
    def _release(team: Team, at: Window, request_id: str) -> Settlement:
        """The settle that releases what an admit that ran reserved, and adds nothing."""
        return Settlement(team.id, at.day, at.month, request_id, 0, Counter())

    async def settle(
        self, team_id: str, day: str, month: str, request_id: str, billed: int,
        usage: Mapping[str, int], tag: str = tags.UNTAGGED,
    ) -> None:  # fmt: skip
        settlement = Settlement(team_id, day, month, request_id, billed, Counter(usage), tag)
        reserved = True  # admitted in the store: it may hold a reservation there
        if self._local is not None and request_id in self._decided_here:
            self._decided_here.discard(request_id)
            await self._local.settle(*settlement)  # the local counts, for the local limits
            # What an admit of this id that ran in the store reserved is pending already:
            # this one goes under an id of its own, with what the request actually did.
            settlement = settlement._replace(request_id=secrets.token_hex(16))
            reserved = False
        if self._pending.failing:
            self._pending.add(settlement, reserved=reserved)
            return
        try:
            await self._shared.settle(*settlement)
        except StoreError as exc:
            log.warning("settle of a request of team %s will be retried: %s", team_id, exc)
            self._pending.add(settlement, reserved=reserved, failure=exc)

    async def item_cost(self, model: str) -> int | None:
        return await self._shared.item_cost(model)

    async def record_item_cost(self, model: str, tokens: int) -> None:
        await self._shared.record_item_cost(model, tokens)
