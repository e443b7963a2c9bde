"""Teams and keys are kept the same in Python and in Lua: the memory ledger and the Redis ledger
are fed the same random writes and must read back the same.

Keys: ``lua/narrow_key.lua`` and the record and state it reads back. Each key is written once,
as the admin API writes a new key, then only narrowed: set when it was revoked (the first time
only), its expiry brought forward (never back). Times are the callers' arguments on both sides.

Teams: ``lua/swap_team.lua``, the compare-and-set under every change of a team (changes,
updates, deletions and creations of teams that may exist already, or no longer).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.store.memory_ledger import MemoryLedger
from gateway.store.redis_ledger import RedisLedger
from gateway.teams import KeyRecord, Limits, Team
from tests.conftest import flush, open_redis_backend

NOW = 1_800_000_000.0
SHAS = ("a" * 64, "b" * 64, "c" * 64)
MOMENT = st.none() | st.floats(NOW - 1000, NOW + 1000, allow_nan=False)
RECORDS = st.tuples(*(st.tuples(MOMENT, MOMENT) for _ in SHAS))  # each key's expires, revoked
KEY = st.sampled_from(range(len(SHAS)))
STEPS = st.lists(
    st.tuples(st.just("narrow"), KEY, MOMENT, MOMENT)
    | st.tuples(st.just("touch"), KEY, st.floats(NOW, NOW + 1000))
    | st.tuples(st.just("get"), KEY),
    max_size=20,
)


async def replay(ledger: Any, records: Any, steps: list[tuple[Any, ...]]) -> list[Any]:
    written = [
        KeyRecord(f"k{i}", "t", sha, "nk-abc", NOW - 10, expires, revoked)
        for i, (sha, (expires, revoked)) in enumerate(zip(SHAS, records, strict=True))
    ]
    for record in written:
        await ledger.put_key(record)
    seen = []
    for step in steps:
        record = written[step[1]]
        if step[0] == "narrow":
            await ledger.narrow_key(record, revoked=step[2], expires=step[3])
        elif step[0] == "touch":
            await ledger.touch_key(record, step[2])
        else:
            seen.append(await ledger.get_key(record.sha256))
    return [*seen, await ledger.list_keys("t")]


async def on_redis(redis_url: str, records: Any, steps: list[tuple[Any, ...]]) -> list[Any]:
    backend = open_redis_backend(redis_url)
    try:
        return await replay(RedisLedger(backend), records, steps)
    finally:
        await backend.close()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(RECORDS, STEPS)
def test_redis_narrows_keys_as_the_memory_ledger(
    redis_url: str, records: Any, steps: list[tuple[Any, ...]]
) -> None:
    flush(redis_url)
    in_memory = asyncio.run(replay(MemoryLedger(), records, steps))
    assert asyncio.run(on_redis(redis_url, records, steps)) == in_memory


TEAM_IDS = st.sampled_from(("a", "b", "c"))
RPM = st.none() | st.integers(1, 100)
TEAM_STEPS = st.lists(
    st.tuples(st.just("create"), TEAM_IDS, RPM)
    | st.tuples(st.just("update"), TEAM_IDS, RPM)
    | st.tuples(st.just("change"), TEAM_IDS, st.booleans())
    | st.tuples(st.just("delete"), TEAM_IDS)
    | st.tuples(st.just("get"), TEAM_IDS),
    max_size=20,
)


def changed(count_hits: bool) -> Callable[[Team], Team]:
    """A change of a team as the admin API's PATCH makes one: from the team as it is."""
    return lambda team: dataclasses.replace(team, name=team.name + "!", count_hits=count_hits)


async def keep_teams(ledger: Any, steps: list[tuple[Any, ...]]) -> list[Any]:
    seen: list[Any] = []
    for step in steps:
        team_id = step[1]
        match step:
            case ("create", _, rpm):
                seen.append(await ledger.create_team(Team(team_id, "T", Limits(rpm), True, NOW)))
            case ("update", _, rpm):
                seen.append(await ledger.update_team(Team(team_id, "U", Limits(rpm), False, NOW)))
            case ("change", _, count_hits):
                seen.append(await ledger.change_team(team_id, changed(count_hits)))
            case ("delete", _):
                seen.append(await ledger.delete_team(team_id))
            case _:
                seen.append(await ledger.get_team(team_id))
    return [*seen, await ledger.list_teams()]


async def teams_on_redis(redis_url: str, steps: list[tuple[Any, ...]]) -> list[Any]:
    backend = open_redis_backend(redis_url)
    try:
        return await keep_teams(RedisLedger(backend), steps)
    finally:
        await backend.close()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(TEAM_STEPS)
def test_redis_keeps_teams_as_the_memory_ledger(
    redis_url: str, steps: list[tuple[Any, ...]]
) -> None:
    flush(redis_url)
    in_memory = asyncio.run(keep_teams(MemoryLedger(), steps))
    assert asyncio.run(teams_on_redis(redis_url, steps)) == in_memory
