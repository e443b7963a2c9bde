"""The ledger while Redis is down, on real redis-servers (one on a port nobody listens on, one
the test stops and starts again): limits hold in the process or requests are refused, and
once Redis is back every settle lands in it once, every reservation made there released."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis

from gateway import quota
from gateway.accounts import UsageBuffer
from gateway.quota import Demand
from gateway.store import RedisBackend, StoreError
from gateway.store.fallback import FallbackLedger
from gateway.store.redis_ledger import RedisLedger
from gateway.teams import Limits, Team
from tests.conftest import RestartableRedis, free_port, spawn_redis
from tests.helpers import metric_value

AT = quota.window(1_800_000_000.0)
MISS = {"requests": 1, "images": 1, "misses": 1}
HIT = {"requests": 1, "images": 1, "hits": 1, "saved_tokens": 10}


def team(**limits: int) -> Team:
    return Team("t1", "Team one", Limits(**limits))


def admit_errors() -> float:
    return metric_value("gateway_store_errors_total", operation="admit")


def ledgers(
    backend: RedisBackend, *, fail_open: bool
) -> tuple[RedisLedger, UsageBuffer, FallbackLedger]:
    """Redis's ledger, the usage buffer that writes to it, and the fallback over both."""
    shared = RedisLedger(backend)
    buffer = UsageBuffer(shared)
    return shared, buffer, FallbackLedger(shared, buffer.pending, fail_open=fail_open)


@pytest.fixture
async def unreachable() -> AsyncIterator[RedisBackend]:
    backend = RedisBackend(f"redis://127.0.0.1:{free_port()}/0", timeout_seconds=0.2)
    yield backend
    await backend.close()


@pytest.fixture
async def restartable(outage_redis: RestartableRedis) -> AsyncIterator[RedisBackend]:
    backend = RedisBackend(outage_redis.url, timeout_seconds=0.2)
    yield backend
    await backend.close()


async def test_while_redis_is_down_each_limit_holds_in_the_process(
    unreachable: RedisBackend,
) -> None:
    _, _, ledger = ledgers(unreachable, fail_open=True)
    errors_before = admit_errors()
    limited = team(requests_per_minute=2)
    decisions = [await ledger.admit(limited, Demand(1, 1, 0, 0), AT, {}, f"r{i}") for i in range(3)]
    assert [decision.allowed for decision in decisions] == [True, True, False]
    assert decisions[2].limit == "requests_per_minute"
    # The first admit failed in Redis; while it fails, the others are decided without it.
    assert admit_errors() == errors_before + 1
    await ledger.settle("t1", AT.day, AT.month, "r0", 0, MISS)  # kept for later, not raised


async def test_failing_closed_refuses_and_releases_what_an_admit_that_ran_reserved(
    outage_redis: RestartableRedis, restartable: RedisBackend
) -> None:
    shared, buffer, ledger = ledgers(restartable, fail_open=False)
    capped = team(tokens_per_day=100)
    # An admit that ran in Redis, but whose answer never came back: Redis went away.
    assert (await shared.admit(capped, Demand(1, 1, 0, 60), AT, {}, "lost")).allowed
    outage_redis.stop()
    with pytest.raises(StoreError):
        await ledger.admit(capped, Demand(1, 1, 0, 60), AT, {}, "lost")
    outage_redis.start()
    await buffer.flush()
    assert (await shared.admit(capped, Demand(1, 1, 0, 100), AT, {}, "all")).allowed  # released


async def test_failing_open_writes_every_settle_once_when_redis_is_back(
    outage_redis: RestartableRedis, restartable: RedisBackend
) -> None:
    shared, buffer, ledger = ledgers(restartable, fail_open=True)
    capped = team(tokens_per_day=1000)
    assert (await ledger.admit(capped, Demand(1, 1, 0, 50), AT, {}, "before")).allowed  # by Redis
    assert (await shared.admit(capped, Demand(1, 1, 0, 60), AT, {}, "ran")).allowed  # answer lost
    outage_redis.stop()
    assert (await ledger.admit(capped, Demand(1, 1, 0, 60), AT, {}, "ran")).allowed  # locally
    assert (await ledger.admit(capped, Demand(1, 1, 0, 0), AT, HIT, "hit")).allowed
    await ledger.settle("t1", AT.day, AT.month, "before", 40, MISS)
    await ledger.settle("t1", AT.day, AT.month, "ran", 45, MISS)
    outage_redis.start()
    await buffer.flush()
    await buffer.flush()  # nothing is left, nothing written twice
    [row] = await shared.usage("t1", [AT.day])
    assert (row["requests"], row["misses"], row["hits"], row["billed_tokens"]) == (3, 2, 1, 85)
    # Both reservations made in Redis were released: all that is left of the day is unbilled.
    assert (await shared.admit(capped, Demand(1, 1, 0, 1000 - 85), AT, {}, "rest")).allowed
    assert not (await shared.admit(capped, Demand(1, 1, 0, 1), AT, {}, "more")).allowed


@pytest.fixture
async def full(tmp_path: Path) -> AsyncIterator[tuple[redis.Redis, RedisBackend]]:
    """A Redis at its maxmemory (noeviction): every write refused with OOM, reads answered."""
    port = free_port()
    server = spawn_redis(port, str(tmp_path), "--maxmemory-policy", "noeviction")
    admin = redis.Redis(port=port)
    backend = RedisBackend(f"redis://127.0.0.1:{port}/0", timeout_seconds=1.0)
    yield admin, backend
    await backend.close()
    admin.close()
    server.terminate()
    server.wait(10)


async def test_while_redis_is_full_settles_are_kept_merged_and_land_once(
    full: tuple[redis.Redis, RedisBackend],
) -> None:
    """A thousand settles while Redis refuses writes: the process keeps one merged settle
    per team and day and the ids of the requests Redis had admitted (to release what they
    reserved), not a thousand; once Redis takes writes, the usage is exact."""
    admin, backend = full
    shared, buffer, ledger = ledgers(backend, fail_open=True)
    capped = team(tokens_per_day=10**6)
    for i in range(5):  # admitted by Redis, their settles come once it is full
        assert (await ledger.admit(capped, Demand(1, 1, 0, 50), AT, {}, f"early{i}")).allowed
    admin.config_set("maxmemory", 1)
    for i in range(5):
        await ledger.settle("t1", AT.day, AT.month, f"early{i}", 40, MISS)
    for i in range(1000):
        rid = f"late{i}"
        assert (await ledger.admit(capped, Demand(1, 1, 0, 50), AT, {}, rid)).allowed
        await ledger.settle("t1", AT.day, AT.month, rid, 40, MISS)
        assert (await ledger.admit(capped, Demand(1, 1, 0, 0), AT, HIT, f"hit{i}")).allowed
        buffer.add("t2", AT, 0, HIT)
    await buffer.flush()  # refused: kept
    assert len(buffer.pending) <= 2 + 5  # t1 and t2 merged, and the early ids to release
    admin.config_set("maxmemory", 0)
    await buffer.flush()
    await buffer.flush()
    assert len(buffer.pending) == 0
    [t1] = await shared.usage("t1", [AT.day])
    [t2] = await shared.usage("t2", [AT.day])
    assert (t1["requests"], t1["misses"], t1["hits"]) == (2005, 1005, 1000)
    assert t1["billed_tokens"] == 40 * 1005
    assert t2["requests"] == 1000
    # What the early requests reserved in Redis was released: the whole rest is free.
    rest = 10**6 - 40 * 1005
    assert (await shared.admit(capped, Demand(1, 1, 0, rest), AT, {}, "rest")).allowed
