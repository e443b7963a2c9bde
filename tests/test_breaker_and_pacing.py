"""The shield's pure parts and its shared coordination, on both stores."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import AsyncIterator, Awaitable

import pytest
import redis

from gateway.breaker import Breaker
from gateway.shield_policy import backoff
from gateway.store import RedisBackend, RedisStore
from gateway.store.base import Coordinator, Mark
from gateway.store.redis_coordinator import RedisCoordinator
from tests.helpers import policy as make_policy


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_failures_in_a_row_and_closes_on_success() -> None:
    clock = Clock()
    breaker = Breaker(failures_to_open=3, open_seconds=2, max_open_seconds=5, clock=clock)
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()  # a success in between: the count starts again
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state == "closed"
    breaker.record_failure()
    assert (breaker.state, breaker.retry_after()) == ("open", 2)
    clock.now += 2
    assert breaker.state == "half_open"
    breaker.record_failure()  # the probe failed: open again, for twice as long
    assert (breaker.state, breaker.retry_after()) == ("open", 4)
    clock.now += 4
    breaker.record_failure()
    assert breaker.retry_after() == 5  # capped
    clock.now += 5
    breaker.record_success()
    assert (breaker.state, breaker.retry_after()) == ("closed", 0)


def test_backoff_grows_with_jitter_and_honours_retry_after() -> None:
    policy = make_policy(backoff_base_seconds=0.25, backoff_max_seconds=8)
    rng = random.Random(1)
    for attempt, ceiling in [(0, 0.25), (1, 0.5), (2, 1), (5, 8), (9, 8)]:
        delays = [backoff(attempt, policy, None, rng) for _ in range(200)]
        assert ceiling / 2 <= min(delays)
        assert max(delays) <= ceiling
        assert max(delays) - min(delays) > ceiling / 4  # jittered
    assert backoff(0, policy, 7.0, rng) == 7.0


def test_the_rate_interval_keeps_nomics_limit() -> None:
    assert make_policy(rate_calls=1200, rate_period_seconds=300).interval_ms == 250


async def test_pacing_spaces_calls_by_the_interval(coordinator: Coordinator) -> None:
    waits = [await coordinator.pace(100, 1, 10_000) for _ in range(5)]
    assert waits[0] == 0
    for before, after in itertools.pairwise(waits):
        assert 90 <= after - before <= 110  # each reserved call 100 ms after the previous
    too_far = await coordinator.pace(100, 1, 50)  # nothing reserved; the wait it would take
    assert -510 <= too_far <= -480
    assert 480 <= await coordinator.pace(100, 1, 10_000) <= 510


async def test_a_burst_may_go_back_to_back(coordinator: Coordinator) -> None:
    waits = [await coordinator.pace(1000, 3, 10_000) for _ in range(4)]
    assert waits[:3] == [0, 0, 0]
    assert 900 <= waits[3] <= 1000


async def test_a_hold_pauses_the_shared_rate(coordinator: Coordinator) -> None:
    assert await coordinator.pace(10, 1, 10_000) == 0
    await coordinator.hold(1000)
    assert 950 <= await coordinator.pace(10, 1, 10_000) <= 1000
    await coordinator.hold(10)  # a shorter hold never shortens a longer one
    assert 950 <= await coordinator.pace(10, 1, 10_000) <= 1010


async def test_call_slots_are_capped_and_released(coordinator: Coordinator) -> None:
    assert await coordinator.acquire_slot("a", 2, 10_000)
    assert await coordinator.acquire_slot("b", 2, 10_000)
    assert not await coordinator.acquire_slot("c", 2, 10_000)
    await coordinator.release_slot("a")
    assert await coordinator.acquire_slot("c", 2, 10_000)


async def test_a_call_starts_with_its_slot_and_its_rate_in_one_step(
    coordinator: Coordinator,
) -> None:
    assert await coordinator.start_call("a", 2, 10_000, 1000, 1, 10_000) == 0
    second = await coordinator.start_call("b", 2, 10_000, 1000, 1, 10_000)
    assert second is not None
    assert 950 <= second <= 1000
    assert await coordinator.start_call("c", 2, 10_000, 1000, 1, 10_000) is None  # no slot
    await coordinator.release_slot("a")
    too_late = await coordinator.start_call("c", 2, 10_000, 1000, 1, 100)
    assert too_late is not None
    assert too_late < -100
    assert await coordinator.acquire_slot("d", 2, 10_000)


async def test_a_slot_lease_is_renewed_by_its_holder_only_while_it_holds_it(
    coordinator: Coordinator,
) -> None:
    assert await coordinator.acquire_slot("working", 2, 100)
    assert await coordinator.acquire_slot("dead", 2, 100)
    await coordinator.renew_slots(["working"], 400)
    await asyncio.sleep(0.2)  # "dead" was not renewed: its slot lapsed
    assert await coordinator.acquire_slot("next", 2, 10_000)
    assert not await coordinator.acquire_slot("one more", 2, 10_000)  # "working" still holds
    await coordinator.renew_slots(["dead"], 10_000)  # a lapsed slot is not taken back
    await coordinator.release_slot("working")
    assert await coordinator.acquire_slot("one more", 2, 10_000)


async def test_a_slot_lease_ends_by_itself(coordinator: Coordinator) -> None:
    assert await coordinator.acquire_slot("crashed", 1, 50)
    assert not await coordinator.acquire_slot("next", 1, 10_000)
    await asyncio.sleep(0.08)
    assert await coordinator.acquire_slot("next", 1, 10_000)


@pytest.fixture
async def on_redis(redis_client: redis.Redis, redis_url: str) -> AsyncIterator[RedisBackend]:
    """A backend on the test Redis (flushed by ``redis_client``), closed after the test."""
    backend = RedisBackend(redis_url)
    yield backend
    await backend.close()


async def test_fetch_marks_on_redis(on_redis: RedisBackend) -> None:
    coordinator = RedisCoordinator(on_redis)

    async def held(claims: Awaitable[list[Mark]]) -> list[bool]:
        return [mark.held for mark in await claims]

    assert await held(coordinator.claim_fetches(["k1", "k2"], "me", 10_000)) == [True, True]
    assert await held(coordinator.claim_fetches(["k2", "k3"], "other", 10_000)) == [False, True]
    assert await held(coordinator.fetching(["k1", "k2", "k3", "k4"])) == [True, True, True, False]
    await coordinator.release_fetches(["k1", "k2", "k3"], "me")  # k3 is not mine
    assert await held(coordinator.fetching(["k1", "k2", "k3"])) == [False, False, True]
    assert await held(coordinator.claim_fetches(["short"], "me", 30)) == [True]
    await asyncio.sleep(0.06)
    assert await held(coordinator.fetching(["short"])) == [False]


async def test_a_fetch_mark_is_a_lease_its_holder_alone_renews(on_redis: RedisBackend) -> None:
    coordinator = RedisCoordinator(on_redis)
    await coordinator.claim_fetches(["mine", "theirs"], "me", 200)
    await coordinator.claim_fetches(["other"], "someone", 200)
    await coordinator.renew_fetches(["mine", "other"], "me", 10_000)  # "other" is not mine
    await asyncio.sleep(0.3)
    assert [m.held for m in await coordinator.fetching(["mine", "theirs", "other"])] == [
        True, False, False
    ]  # fmt: skip


async def test_a_claim_reads_the_entry_in_the_same_trip(on_redis: RedisBackend) -> None:
    coordinator = RedisCoordinator(on_redis)
    await RedisStore(on_redis).set_many([("stored", b"entry")], None)
    assert await coordinator.claim_fetches(["stored", "new"], "me", 1000) == [
        Mark(True, b"entry"), Mark(True, None)
    ]  # fmt: skip
    assert await coordinator.fetching(["stored", "new", "none"]) == [
        Mark(True, b"entry"), Mark(True, None), Mark(False, None)
    ]  # fmt: skip
