"""The usage buffer: nothing lost when the store fails or a flush is cut short, nothing twice;
the refusals decided before a body is read; and the turn to learn what an item costs."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping

import pytest

from gateway import quota
from gateway.accounts import Accounts, UsageBuffer
from gateway.entries import Entry
from gateway.errors import QuotaExceeded
from gateway.forms import ParsedRequest
from gateway.pipeline import Answer, Lookup
from gateway.quota import TokenEstimator
from gateway.store import StoreError
from gateway.store.memory_ledger import MemoryLedger
from gateway.teams import Limits, Team

AT = quota.window(1_800_000_000.0)


class FlakyLedger(MemoryLedger):
    """Fails, runs-then-times-out, or stalls settles on demand."""

    def __init__(self) -> None:
        super().__init__()
        self.mode = "ok"
        self.stall = asyncio.Event()

    async def settle(
        self, team_id: str, day: str, month: str, request_id: str, billed: int,
        usage: Mapping[str, int],
    ) -> None:  # fmt: skip
        if self.mode == "down":
            raise StoreError("down")
        if self.mode == "stall":
            await self.stall.wait()
        await super().settle(team_id, day, month, request_id, billed, usage)
        if self.mode == "ran-then-timed-out":
            raise StoreError("timeout")


async def requests_of(ledger: MemoryLedger, team: str) -> int:
    [row] = await ledger.usage(team, [AT.day])
    return row["requests"]


async def test_usage_is_kept_while_the_store_is_down_and_written_once_after() -> None:
    ledger = FlakyLedger()
    buffer = UsageBuffer(ledger)
    buffer.add("a", AT, 10, {"requests": 1})
    ledger.mode = "ran-then-timed-out"
    await buffer.flush()  # it ran, but the gateway could not know
    buffer.add("a", AT, 10, {"requests": 1})
    ledger.mode = "down"
    await buffer.flush()
    ledger.mode = "ok"
    await buffer.flush()
    await buffer.flush()
    assert await requests_of(ledger, "a") == 2


async def test_a_flush_cut_short_loses_nothing() -> None:
    ledger = FlakyLedger()
    buffer = UsageBuffer(ledger)
    for team in ("a", "b", "c"):
        buffer.add(team, AT, 0, {"requests": 1})
    ledger.mode = "stall"
    flush = asyncio.create_task(buffer.flush())
    await asyncio.sleep(0.01)
    flush.cancel()
    with pytest.raises(asyncio.CancelledError):
        await flush
    ledger.mode = "ok"
    await buffer.flush()
    assert [await requests_of(ledger, team) for team in ("a", "b", "c")] == [1, 1, 1]


async def test_concurrent_flushes_write_each_record_once() -> None:
    ledger = MemoryLedger()
    buffer = UsageBuffer(ledger)
    for team in ("a", "b"):
        buffer.add(team, AT, 0, {"requests": 1})
    await asyncio.gather(buffer.flush(), buffer.flush(), buffer.flush())
    assert [await requests_of(ledger, team) for team in ("a", "b")] == [1, 1]


# ---- refused before the body: a per-minute limit seen used up ---------------------------------


MODEL = "nomic-embed-vision-v1.5"


def one_image(hit: bool) -> tuple[Lookup, Answer | None]:
    request = ParsedRequest.of(MODEL, "image", [b"\x89PNG\r\n\x1a\n"])
    found = {"k": Entry(b"[0.5]", 10)} if hit else {}
    lookup = Lookup(request, ["k"], {"k": request.items[0]}, found, [] if hit else ["k"], {})
    answer = Answer(b"{}", hits=1, misses=0, billed_tokens=0, usage_tokens=10)
    return lookup, answer if hit else None


async def used_up(team: Team, clock: list[float], hit: bool = True) -> Accounts:
    """Accounts whose store refused ``team`` this minute (for a hit, or for a miss)."""
    estimator = TokenEstimator(1)
    estimator.observe(MODEL, 10, 1)  # a miss's cost is known: no request waits to learn it
    ledger = MemoryLedger()
    accounts = Accounts(ledger, UsageBuffer(ledger), estimator, clock=lambda: clock[0])
    lookup, answer = one_image(hit)
    with pytest.raises(QuotaExceeded):  # admitted until refused
        for _ in range(10):
            if answer is None:
                await accounts.reserve(team, lookup)
            else:
                await accounts.admit_answered(team, lookup, answer)
    return accounts


async def test_a_used_up_per_minute_limit_refuses_before_the_body_until_the_minute_ends() -> None:
    clock = [1_800_000_000.0]  # the start of a minute
    team = Team("t", "T", Limits(requests_per_minute=2))
    accounts = await used_up(team, clock)
    with pytest.raises(QuotaExceeded) as refused:
        accounts.refuse_early(team)
    assert refused.value.loc == ("limits", "requests_per_minute")
    assert refused.value.headers["X-RateLimit-Remaining"] == "0"
    clock[0] += 59.9
    with pytest.raises(QuotaExceeded):
        accounts.refuse_early(team)
    clock[0] += 0.1  # the next minute
    accounts.refuse_early(team)


async def test_a_raised_limit_or_hits_that_do_not_count_are_never_refused_early() -> None:
    clock = [1_800_000_000.0]
    team = Team("t", "T", Limits(requests_per_minute=2))
    accounts = await used_up(team, clock)
    accounts.refuse_early(dataclasses.replace(team, limits=Limits(requests_per_minute=5)))
    hits_free = Team("h", "H", Limits(requests_per_minute=1), count_hits=False)
    accounts = await used_up(hits_free, clock, hit=False)
    accounts.refuse_early(hits_free)  # an all-hits request of it would still pass
    budget = Team("b", "B", Limits(tokens_per_day=15))
    accounts = await used_up(budget, clock, hit=False)
    accounts.refuse_early(budget)  # hits cost no tokens: they still pass


# ---- learning what an item costs -----------------------------------------------------------


class StallingLedger(MemoryLedger):
    """Its first admit never answers, as a store that hangs until the request is cancelled."""

    def __init__(self) -> None:
        super().__init__()
        self.stalled = False

    async def admit(
        self, team: Team, want: quota.Demand, at: quota.Window, usage: Mapping[str, int],
        request_id: str,
    ) -> quota.Decision:  # fmt: skip
        if not self.stalled:
            self.stalled = True
            await asyncio.Event().wait()
        return await super().admit(team, want, at, usage, request_id)


async def test_a_learner_cancelled_while_admitted_hands_its_turn_to_the_next_request() -> None:
    ledger = StallingLedger()
    accounts = Accounts(ledger, UsageBuffer(ledger), TokenEstimator(1))  # no item cost known
    budget = Team("b", "B", Limits(tokens_per_day=1000))
    lookup, _ = one_image(hit=False)
    first = asyncio.create_task(accounts.reserve(budget, lookup))
    await asyncio.sleep(0.01)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    async with asyncio.timeout(1):  # not waiting for a lesson that will never come
        second = await accounts.reserve(budget, lookup)
    assert second.learner
