"""Admission decides the same in Python and in Lua: the memory ledger (``gateway.quota``'s
rules) and the Redis ledger (``lua/admit.lua``, ``lua/settle.lua``) are fed the same random
sequences of admissions and settles, one at a time and in concurrent groups (which the
Redis ledger sends as one script call per team), at the same times, and must give the same
decisions and the same usage, by day and by tag (past the bound of tags a day too).

Both take their time from the caller (the window of minute, day and month), so both are driven
with the same times exactly. Times only go forward, as a clock does: the memory ledger keeps a
team's latest minute only.
"""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway import quota, tags
from gateway.quota import Demand
from gateway.store.memory_ledger import MemoryLedger
from gateway.store.redis_ledger import RedisLedger
from gateway.teams import Limits, Team
from tests.conftest import flush, open_redis_backend

NOW = 1_800_000_000.0  # 2027-01-15 08:00 UTC
# The times a sequence moves through, in order: the same minute, the next, the next day, the
# next month.
TIMES = (NOW, NOW + 30, NOW + 60, NOW + 86_400, NOW + 31 * 86_400)
TEAMS = ("a", "b")

LIMITS = st.builds(
    Limits,
    requests_per_minute=st.none() | st.integers(0, 6),
    images_per_minute=st.none() | st.integers(0, 10),
    texts_per_minute=st.none() | st.integers(0, 10),
    tokens_per_day=st.none() | st.integers(0, 120),
    tokens_per_month=st.none() | st.integers(0, 200),
)
# Usage counts what a request was: what it was billed is a settle's own argument, never usage.
COUNTED = [field for field in quota.USAGE_FIELDS if field != "billed_tokens"]
USAGE = st.dictionaries(st.sampled_from(COUNTED), st.integers(0, 5), max_size=3)
DEMAND = st.builds(
    Demand, st.integers(0, 1), st.integers(0, 5), st.integers(0, 5), st.integers(0, 40),
    st.integers(-1, 60),
)  # fmt: skip
TAGS_PER_DAY = 2  # so that sequences pass the bound
TAG = st.sampled_from(["j1", "j2", "j3", "j4", tags.UNTAGGED, tags.OTHER])
ADMIT = st.tuples(st.just("admit"), st.sampled_from(TEAMS), DEMAND, USAGE, TAG)
# Settles name a request by its number among those admitted so far (any: refused, unknown
# to the store, settled already), and may be retried.
SETTLE = st.tuples(
    st.just("settle"), st.integers(0, 40), st.integers(0, 50), USAGE, st.booleans(), TAG
)
# A group of admissions or of settles made at once (an admission and a settle racing have no
# order to agree on), then how many of TIMES to move forward.
AT_ONCE = st.lists(ADMIT, min_size=1, max_size=4) | st.lists(SETTLE, min_size=1, max_size=4)
GROUP = st.tuples(AT_ONCE, st.integers(0, 1))
SEQUENCES = st.lists(GROUP, max_size=12)


class Replay:
    """One ledger fed a sequence: what it answered, in order."""

    def __init__(self, ledger: Any, limits: dict[str, Limits]) -> None:
        self.ledger = ledger
        self.teams = {team: Team(team, team.upper(), limits[team], True, NOW) for team in TEAMS}
        self.admitted: list[tuple[str, str, quota.Window]] = []  # request id, team, window
        self.days: set[tuple[str, str]] = set()

    async def run(self, sequence: list[Any]) -> list[Any]:
        seen: list[Any] = []
        at = 0
        for steps, forward in sequence:
            window = quota.window(TIMES[at])
            calls = [self.step(number, step, window) for number, step in enumerate(steps)]
            seen += await asyncio.gather(*calls)
            at = min(at + forward, len(TIMES) - 1)
        for team, day in sorted(self.days):
            seen.append((team, day, await self.ledger.usage(team, [day])))
            seen.append((team, day, await self.ledger.tag_usage(team, [day])))
        return seen

    async def step(self, number: int, step: tuple[Any, ...], window: quota.Window) -> Any:
        if step[0] == "admit":
            _, team, want, usage, tag = step
            request_id = f"r{len(self.admitted)}-{number}"
            self.admitted.append((request_id, team, window))
            self.days.add((team, window.day))
            return await self.ledger.admit(self.teams[team], want, window, usage, request_id, tag)
        _, pick, billed, usage, retried, tag = step
        if not self.admitted:
            return None
        request_id, team, at = self.admitted[pick % len(self.admitted)]
        for _ in range(1 + retried):
            await self.ledger.settle(team, at.day, at.month, request_id, billed, usage, tag)
        return request_id


async def on_redis(redis_url: str, limits: dict[str, Limits], sequence: list[Any]) -> list[Any]:
    backend = open_redis_backend(redis_url)
    try:
        ledger = RedisLedger(backend, tags_per_day=TAGS_PER_DAY)
        return await Replay(ledger, limits).run(sequence)
    finally:
        await backend.close()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.fixed_dictionaries({team: LIMITS for team in TEAMS}), SEQUENCES)
@example(  # an admission that adds no usage leaves its request to be settled
    dict.fromkeys(TEAMS, Limits()),
    [([("admit", "a", Demand(1, 1, 0, 0), {"hits": 0}, "j1")], 0),
     ([("settle", 0, 7, {"misses": 1}, False, "j1")], 0)],
)  # fmt: skip
def test_redis_admits_and_settles_as_the_memory_ledger(
    redis_url: str, limits: dict[str, Limits], sequence: list[Any]
) -> None:
    flush(redis_url)
    in_memory = asyncio.run(Replay(MemoryLedger(TAGS_PER_DAY), limits).run(sequence))
    on_redis_ = asyncio.run(on_redis(redis_url, limits, sequence))
    assert on_redis_ == in_memory
