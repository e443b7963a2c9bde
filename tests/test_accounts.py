"""The usage buffer: nothing lost when the store fails or a flush is cut short, nothing twice."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import pytest

from gateway import quota
from gateway.accounts import UsageBuffer
from gateway.store import StoreError
from gateway.store.memory_ledger import MemoryLedger

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
