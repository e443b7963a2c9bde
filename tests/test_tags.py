"""Tags: what a tag may be, and the bound on a team's tags a day, the same in Python (the
embedded ledgers) and in Lua (Redis): fed the same sequences, both keep the same tags."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import quota, tags
from gateway.quota import Demand
from gateway.store.memory_ledger import MemoryLedger
from gateway.store.redis_ledger import RedisLedger
from gateway.teams import Limits, Team
from tests.conftest import open_redis_backend

NOW = 1_800_000_000.0
AT = quota.window(NOW)
TAGS_PER_DAY = 3


@pytest.mark.parametrize(
    "value", ["nightly-reindex", "a", "user@example.com", "job:42+retry", "A.b_c", "x" * 64]
)
def test_a_well_formed_tag_is_itself(value: str) -> None:
    assert tags.check(value) == value


@pytest.mark.parametrize("value", [None, ""])
def test_no_tag_is_untagged(value: str | None) -> None:
    assert tags.check(value) == tags.UNTAGGED


@pytest.mark.parametrize(
    "value", ["-starts-with-dash", "=1+1", "has space", "comma,", "x" * 65, "é", "a|b", "a/b"]
)
def test_a_malformed_tag_is_refused_with_the_rule(value: str) -> None:
    with pytest.raises(tags.InvalidTag, match="1 to 64 letters"):
        tags.check(value)


def test_kept_admits_tags_up_to_the_bound_then_other() -> None:
    known = {"a", tags.UNTAGGED, tags.OTHER}
    assert tags.kept("b", known, 2) == "b"  # untagged and other do not count
    assert tags.kept("c", {"a", "b"}, 2) == tags.OTHER
    assert tags.kept("a", {"a", "b"}, 2) == "a"
    assert tags.kept(tags.UNTAGGED, {"a", "b"}, 2) == tags.UNTAGGED


STEP = st.tuples(
    st.sampled_from(["admit", "reject", "settle"]),
    st.sampled_from(["a", "b", "c", "d", "e", tags.UNTAGGED, tags.OTHER]),
    st.integers(0, 1),  # which day
    st.integers(0, 9),  # tokens billed
)


async def replay(ledger: Any, team_id: str, steps: list[tuple[str, str, int, int]]) -> Any:
    team = Team(team_id, "T", Limits(), True, NOW)
    refusing = Team(team_id, "T", Limits(requests_per_minute=0), True, NOW)
    windows = [AT, quota.window(NOW + 86400)]
    for number, (what, tag, which, billed) in enumerate(steps):
        at = windows[which]
        usage = {"requests": 1, "hits": billed}
        if what == "settle":
            await ledger.settle(team_id, at.day, at.month, f"s{number}", billed, usage, tag)
        else:
            chosen = team if what == "admit" else refusing
            await ledger.admit(chosen, Demand(1, 1, 0, 0), at, usage, f"a{number}", tag)
    return await ledger.tag_usage(team_id, [w.day for w in windows])


def test_redis_keeps_the_same_tags_as_the_embedded_ledger(
    redis_client: redis.Redis, redis_url: str
) -> None:
    teams = itertools.count()

    @settings(max_examples=40, deadline=None)
    @given(st.lists(STEP, max_size=25))
    def check(steps: list[tuple[str, str, int, int]]) -> None:
        team_id = f"parity{next(teams)}"  # a team of its own per example (flushed at first)

        async def both() -> tuple[Any, Any]:
            backend = open_redis_backend(redis_url)
            try:
                shared = await replay(
                    RedisLedger(backend, tags_per_day=TAGS_PER_DAY), team_id, steps
                )
            finally:
                await backend.close()
            return await replay(MemoryLedger(TAGS_PER_DAY), team_id, steps), shared

        in_memory, in_redis = asyncio.run(both())
        assert in_redis == in_memory

    check()
