"""Narrowing a key decides the same in Python and in Lua: the memory ledger and the Redis ledger
(``lua/narrow_key.lua``, and the record and state it reads back) are fed the same random
revocations, rotations' expiries and uses of keys, and must keep the same keys.

Each key is written once, as the admin API writes a new key, then only narrowed: set when it
was revoked (the first time only), its expiry brought forward (never back). Times are the
callers' arguments on both sides.
"""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.store.memory_ledger import MemoryLedger
from gateway.store.redis_ledger import RedisLedger
from gateway.teams import KeyRecord
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
