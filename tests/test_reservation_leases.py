"""Reservations on Redis are leased: a replica that dies before it settles leaves no tokens
held for good. The team's next admission releases what the dead replica reserved (its lease
lapsed), in the same script, and counts it to the ``unattributed`` account; a request that
settles in time leaves nothing behind. On a real Redis and a real Redis Cluster."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gateway import quota, unattributed
from gateway.quota import Demand
from gateway.store import redis_keys
from gateway.store.redis_ledger import LAPSED_AT_ONCE, RedisLedger
from gateway.teams import Limits, Team
from tests.conftest import chosen_store, open_redis_backend, sync_client
from tests.helpers import metric_value

NOW = 1_800_000_000.0
AT = quota.window(NOW)
LEASE = 1  # seconds: the shortest lease, so a test waits little for one to lapse
CAPPED = Team("t1", "Team one", Limits(tokens_per_day=100), True, NOW)


@pytest.fixture(params=("redis", "cluster"))
def shared_url(request: pytest.FixtureRequest) -> str:
    url = chosen_store(request)
    assert url is not None
    return url


@pytest.fixture
async def leased(shared_url: str) -> AsyncIterator[RedisLedger]:
    backend = open_redis_backend(shared_url)
    yield RedisLedger(backend, lease_seconds=LEASE)
    await backend.close()


def reserved_tokens(url: str, team_id: str = "t1") -> tuple[int, int]:
    """The tokens the team's requests under way hold, by the day and month hashes."""
    client = sync_client(url)
    day = client.hget(redis_keys.usage_day(team_id, AT.day), "reserved_tokens")
    month = client.hget(redis_keys.usage_month(team_id, AT.month), "reserved_tokens")
    client.close()
    return int(day or 0), int(month or 0)


def leases(url: str) -> int:
    client = sync_client(url)
    count = int(client.zcard(redis_keys.leases("t1")))
    client.close()
    return count


def killed_tokens() -> float:
    return metric_value("gateway_unattributed_tokens_total", reason="killed")


async def lapse() -> None:
    await asyncio.sleep(LEASE + 0.2)


async def test_a_dead_replicas_reservation_is_released_once_its_lease_lapses(
    leased: RedisLedger, shared_url: str
) -> None:
    assert (await leased.admit(CAPPED, Demand(1, 1, 0, 60), AT, {}, "dead")).allowed
    # The replica that made "dead" is gone: it never settles. Its 60 tokens stay held ...
    refused = await leased.admit(CAPPED, Demand(1, 1, 0, 60), AT, {}, "refused")
    assert (refused.allowed, refused.remaining) == (False, 40)
    before = killed_tokens()
    await lapse()
    # ... until its lease lapses: the next admission releases them before it decides.
    assert (await leased.admit(CAPPED, Demand(1, 1, 0, 60), AT, {}, "after")).allowed
    assert reserved_tokens(shared_url) == (60, 60)  # "after"'s alone
    assert leases(shared_url) == 1
    [charged] = await leased.usage(unattributed.TEAM_ID, [AT.day])
    assert (charged["billed_tokens"], charged["upstream_errors"]) == (60, 1)
    assert killed_tokens() - before == 60


async def test_a_request_settled_in_time_leaves_no_lease(
    leased: RedisLedger, shared_url: str
) -> None:
    assert (await leased.admit(CAPPED, Demand(1, 1, 0, 60), AT, {}, "r")).allowed
    assert leases(shared_url) == 1
    await leased.settle("t1", AT.day, AT.month, "r", 55, {"misses": 1})
    assert leases(shared_url) == 0
    assert reserved_tokens(shared_url) == (0, 0)
    await lapse()
    assert (await leased.admit(CAPPED, Demand(1, 1, 0, 45), AT, {}, "next")).allowed
    [charged] = await leased.usage(unattributed.TEAM_ID, [AT.day])
    assert charged["billed_tokens"] == 0  # nothing lapsed: nothing charged to no team


async def test_a_settle_after_its_lease_lapsed_releases_nothing_twice(
    leased: RedisLedger, shared_url: str
) -> None:
    """A settle held in its replica through an outage longer than the lease comes after the
    release: it bills the team, and releases nothing again (held tokens never go below 0)."""
    assert (await leased.admit(CAPPED, Demand(1, 1, 0, 30), AT, {}, "slow")).allowed
    await lapse()
    assert (await leased.admit(CAPPED, Demand(1, 1, 0, 20), AT, {}, "other")).allowed
    await leased.settle("t1", AT.day, AT.month, "slow", 25, {"misses": 1})
    assert reserved_tokens(shared_url) == (20, 20)  # "other"'s: "slow"'s is not released again
    [row] = await leased.usage("t1", [AT.day])
    assert row["billed_tokens"] == 25


async def test_one_admission_releases_a_bounded_number_of_lapsed_leases(
    leased: RedisLedger, shared_url: str
) -> None:
    free = Team("t1", "Team one", Limits(), True, NOW)
    for n in range(LAPSED_AT_ONCE + 6):
        assert (await leased.admit(free, Demand(1, 1, 0, 1), AT, {}, f"dead-{n}")).allowed
    await lapse()
    assert (await leased.admit(free, Demand(1, 1, 0, 0), AT, {}, "first")).allowed
    assert leases(shared_url) == 6
    assert reserved_tokens(shared_url) == (6, 6)
    assert (await leased.admit(free, Demand(1, 1, 0, 0), AT, {}, "second")).allowed
    assert leases(shared_url) == 0
    assert reserved_tokens(shared_url) == (0, 0)
    [charged] = await leased.usage(unattributed.TEAM_ID, [AT.day])
    assert (charged["billed_tokens"], charged["upstream_errors"]) == (LAPSED_AT_ONCE + 6,) * 2
