"""Settles kept while the store refuses writes: merged, bounded, written once."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

import pytest

import gateway.store.pending as pending_module
from gateway import quota, tags
from gateway.store import StoreError
from gateway.store.base import Settlement, StoreFull
from gateway.store.memory_ledger import MemoryLedger
from gateway.store.pending import PendingSettles

AT = quota.window(1_800_000_000.0)
FULL = StoreFull("Redis is full")


class FullLedger(MemoryLedger):
    """Refuses every settle (``full``), or runs it and then times out (``timing_out``)."""

    def __init__(self) -> None:
        super().__init__()
        self.mode = "full"

    async def settle(
        self, team_id: str, day: str, month: str, request_id: str, billed: int,
        usage: Mapping[str, int], tag: str = tags.UNTAGGED,
    ) -> None:  # fmt: skip
        if self.mode == "full":
            raise FULL
        await super().settle(team_id, day, month, request_id, billed, usage, tag)
        if self.mode == "timing_out":
            raise StoreError("timeout")


def settle(request_id: str, billed: int = 10, team: str = "t") -> Settlement:
    return Settlement(team, AT.day, AT.month, request_id, billed, Counter(requests=1, misses=1))


async def used(ledger: MemoryLedger, team: str = "t") -> tuple[int, int]:
    [row] = await ledger.usage(team, [AT.day])
    return row["requests"], row["billed_tokens"]


async def test_refused_settles_are_merged_per_team_and_day_and_written_once() -> None:
    ledger, pending = FullLedger(), PendingSettles()
    for i in range(1000):
        pending.add(settle(f"r{i}"), failure=FULL)
        pending.add(settle(f"s{i}", team="u"), failure=FULL)
    await pending.write(ledger)
    assert (len(pending), pending.failing) == (2, True)
    ledger.mode = "ok"
    await pending.write(ledger)
    await pending.write(ledger)
    assert (len(pending), pending.failing) == (0, False)
    assert await used(ledger) == await used(ledger, "u") == (1000, 10_000)


async def test_refused_settles_are_merged_per_tag_and_past_so_many_under_other(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pending_module, "MOST_MERGED", 3)
    ledger, pending = FullLedger(), PendingSettles()
    for i in range(10):
        pending.add(settle(f"r{i}")._replace(tag=f"job-{i % 5}"), failure=FULL)
    assert len(pending) == 3 + 1  # job-0, job-1, job-2, and other for the rest
    ledger.mode = "ok"
    await pending.write(ledger)
    [by_tag] = await ledger.tag_usage("t", [AT.day])
    requests = {tag: counts["requests"] for tag, counts in by_tag.items()}
    assert requests == {"job-0": 2, "job-1": 2, "job-2": 2, tags.OTHER: 4}
    assert await used(ledger) == (10, 100)


async def test_ids_are_kept_only_to_release_reservations_and_at_most_so_many() -> None:
    ledger, pending = FullLedger(), PendingSettles(most_ids=3)
    for i in range(5):
        pending.add(settle(f"r{i}"), reserved=True, failure=FULL)
    assert len(pending) == 1 + 3  # the merged settle, the three latest ids
    ledger.mode = "ok"
    await pending.write(ledger)
    assert await used(ledger) == (5, 50)
    # The ids were settled (released) apart from the merged usage: settling one again adds
    # nothing, as a late retry of the request's own settle would.
    await ledger.settle("t", AT.day, AT.month, "r4", 10, {"requests": 1})
    assert await used(ledger) == (5, 50)


async def test_a_settle_that_may_have_run_is_kept_whole_under_its_id() -> None:
    ledger, pending = FullLedger(), PendingSettles()
    ledger.mode = "ok"
    await ledger.settle(*settle("ran"))  # it ran; its answer timed out
    pending.add(settle("ran"), failure=StoreError("timeout"))
    pending.add(settle("refused"), failure=FULL)
    assert len(pending) == 2
    await pending.write(ledger)
    assert await used(ledger) == (2, 20)  # "ran" once, not twice


async def test_a_merged_write_that_timed_out_is_not_merged_into_again() -> None:
    ledger, pending = FullLedger(), PendingSettles()
    pending.add(settle("a"), failure=FULL)
    ledger.mode = "timing_out"
    await pending.write(ledger)  # ran, but its answer was lost: kept whole
    pending.add(settle("b"), failure=FULL)  # merged into a settle of its own
    ledger.mode = "ok"
    await pending.write(ledger)
    assert await used(ledger) == (2, 20)
