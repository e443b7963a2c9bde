"""The ledger on disk decides as the one in memory: the same random sequences of admissions
and settles (retried ones too) give the same decisions and the same usage on both, by day
and by tag (past the bound of tags too)."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import quota, tags
from gateway.quota import Demand
from gateway.store.data_dir import DataDir
from gateway.store.memory_ledger import MemoryLedger
from gateway.teams import Limits, Team

NOW = 1_800_000_000.0
SMALL = st.integers(0, 5)
LIMITS = st.builds(
    Limits,
    requests_per_minute=st.none() | st.integers(1, 6),
    images_per_minute=st.none() | st.integers(1, 10),
    texts_per_minute=st.none() | st.integers(1, 10),
    tokens_per_day=st.none() | st.integers(1, 120),
    tokens_per_month=st.none() | st.integers(1, 200),
)
TAGS_PER_DAY = 2  # so that sequences pass the bound
TAG = st.sampled_from(["a", "b", "c", "d", tags.UNTAGGED, tags.OTHER])
ADMIT = st.tuples(
    st.just("admit"),
    st.builds(Demand, st.just(1), SMALL, SMALL, st.integers(0, 40), st.integers(-1, 60)),
    st.integers(0, 1),  # which minute (and, the second, which day)
    st.dictionaries(st.sampled_from(["requests", "hits", "saved_tokens"]), st.integers(0, 5)),
    TAG,
)
SETTLE = st.tuples(
    st.just("settle"), st.integers(0, 30), st.integers(0, 50), st.integers(0, 1), TAG
)
STEPS = st.lists(st.one_of(ADMIT, SETTLE), max_size=30)


async def replay(ledger: Any, limits: Limits, steps: list[tuple[Any, ...]]) -> list[Any]:
    team = Team("t", "T", limits, True, NOW)
    windows = [quota.window(NOW), quota.window(NOW + 86400)]
    seen: list[Any] = []
    admitted: list[tuple[str, int]] = []
    for number, step in enumerate(steps):
        if step[0] == "admit":
            _, want, which, usage, tag = step
            request_id = f"r{number}"
            decision = await ledger.admit(team, want, windows[which], usage, request_id, tag)
            seen.append(decision)
            if decision.allowed:
                admitted.append((request_id, which))
        elif admitted:
            _, pick, billed, retried, tag = step
            request_id, which = admitted[pick % len(admitted)]
            at = windows[which]
            for _ in range(1 + retried):
                await ledger.settle("t", at.day, at.month, request_id, billed, {"misses": 1}, tag)
    days = [w.day for w in windows]
    seen += (await ledger.usage("t", days), await ledger.tag_usage("t", days))
    return seen


async def both(limits: Limits, steps: list[tuple[Any, ...]]) -> tuple[list[Any], list[Any]]:
    with tempfile.TemporaryDirectory() as directory:
        data = await DataDir.open(Path(directory), 1_000_000, TAGS_PER_DAY)
        try:
            on_disk = await replay(data.ledger, limits, steps)
        finally:
            await data.close()
    return await replay(MemoryLedger(TAGS_PER_DAY), limits, steps), on_disk


@settings(max_examples=60, deadline=None)
@given(LIMITS, STEPS)
def test_the_disk_ledger_decides_and_counts_as_the_memory_ledger(
    limits: Limits, steps: list[tuple[Any, ...]]
) -> None:
    in_memory, on_disk = asyncio.run(both(limits, steps))
    assert on_disk == in_memory
