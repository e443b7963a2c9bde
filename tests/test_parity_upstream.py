"""Pacing, call slots and rates decide the same in Python and in Lua: the memory coordinator
and the Redis coordinator (``lua/upstream.lua`` with ``pace.lua``, ``slot.lua``,
``start_call.lua``, ``renew_slots.lua``, and ``hold.lua``), and a rate of reads (``rate.py``'s
``spend`` and ``lua/spend.lua``), are fed the same random sequences of calls at the same times
and must answer the same.

The Python side reads an injected clock; the Lua side reads the Redis server's (``TIME``), so
that every replica paces by one clock. To give both the same times exactly, the scripts run
here as the gateway loads them but for that one call, which reads the test's clock from a key
instead (:func:`on_test_clock`). Times are whole milliseconds, as ``upstream.lua`` counts them.

Redis forgets a key when its lifetime ends on the real clock, which these tests do not move:
after each call every upstream key's lifetime is checked to outlive what the key holds on the
test's clock (a time still to come), then the key is kept (PERSIST), so that a slow machine
cannot end a lifetime the test's clock has not reached.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from gateway.store import rate, redis_backend, redis_keys
from gateway.store.memory_coordinator import MemoryCoordinator
from gateway.store.redis_coordinator import RedisCoordinator
from gateway.store.redis_ledger import RedisLedger
from tests.conftest import flush, open_redis_backend

START_MS = 1_800_000_000_000  # whole ms whose seconds a float holds exactly
CLOCK = "parity:clock"  # the test's clock: seconds and microseconds, as TIME answers
SERVER_TIME = "redis.call('TIME')"
TEST_TIME = f"redis.call('HMGET', '{CLOCK}', 'seconds', 'microseconds')"
CLOCK_READERS = ("upstream.lua", "spend.lua")  # hold.lua runs after upstream.lua
SERVER_LUA = redis_backend._lua


def on_test_clock(name: str) -> str:
    """The script ``name`` as the gateway loads it, reading the test's clock for Redis's."""
    return SERVER_LUA(name).replace(SERVER_TIME, TEST_TIME)


@pytest.fixture(scope="module")
def test_clock_scripts() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(redis_backend, "_lua", on_test_clock)
        yield


def test_every_script_under_test_reads_the_clock_where_the_test_replaces_it() -> None:
    for name in CLOCK_READERS:
        assert SERVER_TIME in SERVER_LUA(name), name
        assert "TIME" not in on_test_clock(name).replace(CLOCK, ""), name


class Clock:
    """Whole milliseconds, given to the Python side as seconds and to Lua through Redis."""

    def __init__(self, client: Redis) -> None:
        self.ms = START_MS
        self._client = client

    def seconds(self) -> float:
        seconds = self.ms / 1000
        assert seconds * 1000 == self.ms  # the Python side computes the very same ms
        return seconds

    async def advance(self, ms: int) -> None:
        self.ms += ms
        await self._client.hset(CLOCK, mapping={"seconds": self.ms // 1000,
                                                "microseconds": self.ms % 1000 * 1000})  # fmt: skip


async def outlives(client: Redis, now_ms: int, key: str, holds_until: float) -> None:
    """Check that ``key``, which matters until ``holds_until`` (ms on the test's clock), lives
    that long; then keep it (see the module's docstring)."""
    lifetime = await client.pttl(key)
    if lifetime >= 0:  # -1: kept already, and untouched since
        assert lifetime >= holds_until - now_ms, (key, lifetime, holds_until - now_ms)
        await client.persist(key)


async def upstream_keys_outlive(client: Redis, now_ms: int) -> None:
    for key in (redis_keys.PACE, redis_keys.HOLD):
        value = await client.get(key)
        if value is not None:
            await outlives(client, now_ms, key, float(value))
    slots = await client.zrange(redis_keys.SLOTS, 0, -1, withscores=True)
    if slots:
        await outlives(client, now_ms, redis_keys.SLOTS, max(end for _, end in slots))


# Times mostly on a coarse grid, so that a clock often lands right on a lease's end or a
# call's turn, where a rule's < and <= part.
def ms(most: int) -> st.SearchStrategy[int]:
    grid = [0, 10, 50, 100, 250, 500, 1000, 2000]
    return st.sampled_from([m for m in grid if m <= most]) | st.integers(0, most)


HOLDERS = st.sampled_from(("h1", "h2", "h3"))
REPLICA = st.sampled_from((0, 0, 0, 1))  # whose lease a slot is taken or renewed with
WAIT = ms(2000)
# Each call comes after the clock moves on: by nothing, some ms, a lease or an interval.
ADVANCE = st.just(0) | ms(2000) | st.sampled_from(("lease", "interval"))
CALLS = st.one_of(
    st.tuples(st.just("pace"), WAIT),
    st.tuples(st.just("hold"), WAIT),
    st.tuples(st.just("slot"), HOLDERS, REPLICA),
    st.tuples(st.just("start"), HOLDERS, WAIT, REPLICA),
    st.tuples(st.just("renew"), st.lists(HOLDERS, max_size=3), REPLICA),
    st.tuples(st.just("release"), HOLDERS),
)
# The settings callers share (as replicas share theirs): interval ms, burst, cap, lease ms; and
# the lease of a replica whose settings differ (as during a rolling change of them).
INTERVAL = st.sampled_from((10, 50, 100, 250)) | st.integers(1, 400)
LEASE = st.sampled_from((100, 500, 1000)) | st.integers(100, 3000)
SETTINGS = st.tuples(INTERVAL, st.integers(1, 4), st.integers(1, 2), LEASE, LEASE)


async def call(coordinator: Any, step: tuple[Any, ...], setting: tuple[int, ...]) -> Any:
    interval, burst, cap, *leases = setting
    match step:
        case ("pace", max_wait):
            return await coordinator.pace(interval, burst, max_wait)
        case ("hold", pause):
            return await coordinator.hold(pause)
        case ("slot", holder, replica):
            return await coordinator.acquire_slot(holder, cap, leases[replica])
        case ("start", holder, max_wait, replica):
            lease = leases[replica]
            return await coordinator.start_call(holder, cap, lease, interval, burst, max_wait)
        case ("renew", holders, replica):
            return await coordinator.renew_slots(holders, leases[replica])
        case ("release", holder):
            return await coordinator.release_slot(holder)
    raise AssertionError(step)


async def coordinate_both(
    redis_url: str, setting: tuple[int, ...], steps: list[tuple[Any, ...]]
) -> tuple[list[Any], list[Any]]:
    backend = open_redis_backend(redis_url)
    try:
        client, clock = backend.client, Clock(backend.client)
        await clock.advance(0)
        embedded, shared = MemoryCoordinator(clock.seconds), RedisCoordinator(backend)
        in_memory, on_redis = [], []
        named = {"interval": setting[0], "lease": setting[3]}
        for advance, step in steps:
            await clock.advance(named.get(advance, advance))
            in_memory.append(await call(embedded, step, setting))
            on_redis.append(await call(shared, step, setting))
            await upstream_keys_outlive(client, clock.ms)
        return in_memory, on_redis
    finally:
        await backend.close()


@pytest.mark.usefixtures("test_clock_scripts")
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(SETTINGS, st.lists(st.tuples(ADVANCE, CALLS), max_size=30))
def test_redis_paces_and_holds_slots_as_the_memory_coordinator(
    redis_url: str, setting: tuple[int, ...], steps: list[tuple[Any, ...]]
) -> None:
    flush(redis_url)
    in_memory, on_redis = asyncio.run(coordinate_both(redis_url, setting, steps))
    assert on_redis == in_memory


RATE_KEYS = st.sampled_from(("a", "b"))
# Each spend comes after the clock moves on: a key's units.
SPENDS = st.tuples(st.just(0) | ms(3000), RATE_KEYS, st.integers(0, 8))
# Units a second and at once: those the gateway spends by (days read, sign-ins) and others.
RATES = st.tuples(st.sampled_from((1.0, 2.0, 0.5, 10 / 60, 3.0, 7.0)), st.integers(0, 8))


async def spend_both(
    redis_url: str, per_second: float, at_once: int, steps: list[tuple[Any, ...]]
) -> tuple[list[int], list[int]]:
    backend = open_redis_backend(redis_url)
    try:
        client, clock = backend.client, Clock(backend.client)
        await clock.advance(0)
        embedded, shared = rate.Rates(), RedisLedger(backend)
        in_memory, on_redis = [], []
        for advance, key, cost in steps:
            await clock.advance(advance)
            in_memory.append(embedded.spend(key, clock.ms, cost, per_second, at_once))
            on_redis.append(await shared.take_usage_reads(key, cost, per_second, at_once))
            tat = await client.get(redis_keys.usage_reads(key))
            if tat is not None:
                await outlives(client, clock.ms, redis_keys.usage_reads(key), float(tat))
        return in_memory, on_redis
    finally:
        await backend.close()


@pytest.mark.usefixtures("test_clock_scripts")
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(RATES, st.lists(SPENDS, max_size=30))
def test_redis_spends_a_rate_as_rate_py(
    redis_url: str, rate_: tuple[float, int], steps: list[tuple[Any, ...]]
) -> None:
    flush(redis_url)
    per_second, at_once = rate_
    in_memory, on_redis = asyncio.run(spend_both(redis_url, per_second, at_once, steps))
    assert on_redis == in_memory
