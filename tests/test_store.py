"""The store contract, run on every implementation (the embedded store in memory and on
disk, Redis, Redis Cluster); then what only the embedded ones do."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from redis.exceptions import RedisClusterException

from gateway.store import MemoryStore, RedisBackend, RedisStore, Store, StoreError
from gateway.store.memory import ENTRY_OVERHEAD
from tests.conftest import (
    EMBEDDED,
    EVERY_STORE,
    STORES,
    chosen_store,
    data_dir,
    free_port,
    open_redis_backend,
)


@pytest.fixture(params=EVERY_STORE)
def store_url(request: pytest.FixtureRequest) -> str | None:
    return chosen_store(request)


@pytest.fixture
async def store(store_url: str | None) -> AsyncIterator[Store]:
    if store_url is None:
        yield MemoryStore(10_000_000)
        return
    if store_url.startswith(EMBEDDED):
        async with data_dir(store_url) as data:
            yield data.store
        return
    backend = open_redis_backend(store_url)
    yield RedisStore(backend)
    await backend.close()


async def test_get_many_answers_in_order_with_none_for_missing(store: Store) -> None:
    await store.set_many([("a", b"1"), ("c", b"3")], None)
    assert await store.get_many(["a", "b", "c", "a"]) == [b"1", None, b"3", b"1"]


async def test_set_overwrites(store: Store) -> None:
    await store.set_many([("a", b"1")], None)
    await store.set_many([("a", b"2")], 60)
    assert await store.get_many(["a"]) == [b"2"]


async def test_empty_writes_are_fine(store: Store) -> None:
    await store.set_many([], None)
    await store.ping()


async def test_binary_values_round_trip(store: Store) -> None:
    value = bytes(range(256)) * 20
    await store.set_many([("bin", value)], None)
    assert await store.get_many(["bin"]) == [value]


async def test_concurrent_reads_and_writes_each_see_the_writes_made_before_them(
    store: Store,
) -> None:
    await asyncio.gather(*(store.set_many([(f"k{i}", b"%d" % i)], None) for i in range(200)))
    found = await asyncio.gather(*(store.get_many([f"k{i}", "none"]) for i in range(200)))
    assert found == [[b"%d" % i, None] for i in range(200)]


async def test_memory_store_expires_entries_by_its_clock() -> None:
    now = [1000.0]
    store = MemoryStore(10_000, clock=lambda: now[0])
    await store.set_many([("url", b"v")], 60)
    await store.set_many([("image", b"v")], None)
    now[0] += 59.9
    assert await store.get_many(["url", "image"]) == [b"v", b"v"]
    now[0] += 0.2
    assert await store.get_many(["url", "image"]) == [None, b"v"]
    assert len(store) == 1


async def test_memory_store_evicts_least_recently_used_by_bytes() -> None:
    entry = 1 + 100 + ENTRY_OVERHEAD
    store = MemoryStore(3 * entry)
    await store.set_many([("a", b"x" * 100), ("b", b"x" * 100), ("c", b"x" * 100)], None)
    await store.get_many(["a"])  # a is now the most recently used
    await store.set_many([("d", b"x" * 100)], None)
    assert await store.get_many(["a", "b", "c", "d"]) == [b"x" * 100, None, b"x" * 100, b"x" * 100]
    assert store.used_bytes == 3 * entry


async def test_memory_store_skips_an_entry_larger_than_itself() -> None:
    store = MemoryStore(100)
    await store.set_many([("big", b"x" * 1000)], None)
    assert await store.get_many(["big"]) == [None]
    assert store.used_bytes == 0


async def test_redis_store_that_cannot_connect_raises_store_error() -> None:
    backend = RedisBackend(f"redis://127.0.0.1:{free_port()}/0", timeout_seconds=0.2)
    store = RedisStore(backend)
    with pytest.raises(StoreError, match="Redis get failed"):
        await store.get_many(["a"])
    with pytest.raises(StoreError):
        await store.ping()
    await backend.close()


@pytest.mark.parametrize("store_url", STORES, indirect=True)  # the stores with connections
async def test_more_concurrent_calls_than_connections_wait_their_turn(
    store_url: str | None,
) -> None:
    import asyncio

    backend = None if store_url is None else open_redis_backend(store_url, max_connections=4)
    store: Store = MemoryStore(10_000_000) if backend is None else RedisStore(backend)
    await store.set_many([("k", b"v")], None)
    results = await asyncio.gather(*(store.get_many(["k"]) for _ in range(300)))
    assert results == [[b"v"]] * 300
    if backend is not None:
        await backend.close()


async def test_an_unreachable_cluster_is_a_store_error_for_every_operation() -> None:
    """The cluster client's own errors are no RedisError, and entering a pipeline may already
    reach a node: both are StoreErrors, never a raw exception (a 500, a dead watcher task)."""
    from gateway.store.redis_coordinator import RedisCoordinator
    from gateway.store.redis_ledger import RedisLedger

    backend = RedisBackend(f"redis://127.0.0.1:{free_port()}/0", timeout_seconds=0.5,
                           max_connections=4, cluster=True)  # fmt: skip
    store = RedisStore(backend)
    ledger, coordinator = RedisLedger(backend), RedisCoordinator(backend)
    # Each operation is made only when it is awaited: a coroutine made but never awaited
    # (after an earlier one failed) would fail some later test under -W error.
    operations: dict[str, Callable[[], Awaitable[object]]] = {
        "get_many": lambda: store.get_many(["k"]),
        "set_many": lambda: store.set_many([("k", b"v")], None),
        "ping": store.ping,
        "get_key": lambda: ledger.get_key("a" * 64),
        "usage": lambda: ledger.usage("t", ["2026-11-26"]),
        "claim_fetches": lambda: coordinator.claim_fetches(["k"], "holder", 1000),
        "fetching": lambda: coordinator.fetching(["k"]),
    }
    try:
        for name, operation in operations.items():
            # redis-py names its cluster errors differently from one release to the next
            # (RedisClusterException, then RedisClusterUnreachableError, a subclass of it).
            with pytest.raises(StoreError, match=r"Redis .* failed: RedisCluster\w*") as caught:
                await operation()
            assert isinstance(caught.value.__cause__, RedisClusterException), name
    finally:
        await backend.close()
