"""The hot cache in front of Redis: bounded, least recently used out, freshness kept."""

from __future__ import annotations

import asyncio
import random
import tracemalloc

import redis

from fake_nomic import png
from gateway import entries
from gateway.entries import Entry
from gateway.hot import ENTRY_OVERHEAD, HotCache
from tests.conftest import GatewayFactory, stored_keys
from tests.helpers import post_images


def test_least_recently_used_goes_first_within_the_byte_bound() -> None:
    entry = Entry(b"x" * 100, 1)
    size = 1 + 100 + ENTRY_OVERHEAD
    hot = HotCache(3 * size)
    for key in "abc":
        hot.put(key, entry)
    assert set(hot.get("a", 0)) == {"a"}  # a is now the most recently used
    hot.put("d", entry)
    assert set(hot.get("abcd", 0)) == {"a", "c", "d"}
    assert hot.used_bytes == 3 * size


def test_the_memory_it_holds_is_about_what_it_counts() -> None:
    """Filled past its bound with entries as the gateway makes them (decoded from the store,
    or built from Nomic's answer), what the cache keeps alive stays near ``max_bytes``: an
    entry's JSON must not sit in a buffer larger than itself (orjson's output did, 127 KiB
    behind 15 KB, and a 64 MiB cache grew a process past 450 MiB)."""
    rng = random.Random(5)
    vectors = [[rng.uniform(-1, 1) for _ in range(768)] for _ in range(8)]
    blobs = [entries.encode(vector, 10) for vector in vectors]
    bound = 2 * 1024 * 1024
    tracemalloc.start()
    try:
        hot = HotCache(bound)
        for n in range(400):  # about 30 MB of JSON in all
            json = entries.vector_json(vectors[n % 8])
            decoded = entries.decode(blobs[n % 8])
            hot.put(f"fetched {n}", Entry(json, 10))
            hot.put(f"decoded {n}", decoded)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert hot.used_bytes <= bound
    assert held < 1.25 * bound, f"{held / bound:.2f} times the bound"


def test_stale_entries_are_not_served() -> None:
    hot = HotCache(10_000)
    hot.put("url", Entry(b"[1]", 1, fresh_until=100))
    assert hot.get(["url"], 99.0) == {"url": Entry(b"[1]", 1, 100)}
    assert hot.get(["url"], 100.0) == {}
    assert len(hot) == 0


def test_off_when_sized_zero() -> None:
    hot = HotCache(0)
    hot.put("a", Entry(b"[1]", 1))
    assert hot.get(["a"], 0) == {}


async def test_hot_answers_need_no_redis(
    make_redis_gateway: GatewayFactory, redis_client: redis.Redis
) -> None:
    hot = await make_redis_gateway(redis_timeout_seconds=0.05)
    cold = await make_redis_gateway(redis_timeout_seconds=0.05, hot_cache_bytes=0)
    for gateway in (hot, cold):
        assert (await post_images(gateway, [png(1)])).headers["X-Cache"] == "MISS"
        stored = await stored_keys(redis_client, "ng:v2:emb:*", 1)
        redis_client.delete(*stored)  # the entry is gone from Redis
    await asyncio.sleep(1.2)  # past the linger of fetched answers (Redis timeout + 1 s)
    assert (await post_images(hot, [png(1)])).headers["X-Cache"] == "HIT"
    assert (await post_images(cold, [png(1)])).headers["X-Cache"] == "MISS"
