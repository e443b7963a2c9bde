"""The upstream shield through real HTTP: batching, pacing, retries, the breaker, coalescing
across replicas and serving stale, checked against the fake Nomic's own record of calls."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from typing import Any

from aiohttp.test_utils import TestClient

from fake_nomic import FakeNomic, png
from tests.conftest import GatewayFactory
from tests.helpers import post_images, post_urls

Client = TestClient[Any, Any]
# Nomic's real limit and the shield's defaults, which conftest relaxes for other tests.
DEFAULTS = {
    "upstream_rate_calls": 1200, "upstream_rate_period_seconds": 300.0, "upstream_rate_burst": 1,
    "upstream_max_attempts": 6, "breaker_failures": 5,
}  # fmt: skip


def ahead_of_rate(arrivals: list[float], interval: float) -> float:
    """How far, at most, the calls ran ahead of one call per ``interval`` (in seconds; 0 when
    they kept it): the largest ``(j - i) * interval - (t[j] - t[i])`` over calls i before j.

    This is the GCRA's own test, read from where the calls land, so it counts the delivery
    jitter too: the rate is granted on Redis's clock and each call leaves when its grant's
    wait is over, but the fake notes arrivals in the event loop it shares with the gateways
    and 64 clients, where the opening burst delays the first calls and a busy moment any one
    (by 0.1 s in CI, 0.24 s with a second test run on the machine) and brings it closer to
    the next. A delay never gains a call: a rate twice too fast is 0.5 s ahead by its fifth
    call, and two replicas pacing apart are twice too fast. (The grants' own spacing and
    bursts are tested exactly, on the coordinator: tests/test_breaker_and_pacing.py.)"""
    ahead, lowest = 0.0, float("inf")
    for k, at in enumerate(sorted(arrivals)):
        slack = k * interval - at  # grows by how far call k ran ahead of call 0's pace
        ahead = max(ahead, slack - lowest)
        lowest = min(lowest, slack)
    return ahead


JITTER = 0.35  # seconds of delivery jitter the rate tests allow; see ahead_of_rate


def calls_ahead_of_rate(fake: FakeNomic) -> float:
    """``ahead_of_rate`` of the image calls at Nomic's own rate, 1200 per 300 s."""
    return ahead_of_rate([call.at for call in fake.calls], 300 / 1200)


async def company_load(
    replicas: list[Client], requests: int, images: int, clients: int
) -> Counter[int]:
    """``clients`` concurrent clients, each sending single-image requests one at a time."""
    rng = random.Random(7)
    work = [png(100_000 + rng.randrange(images)) for _ in range(requests)]
    work[:images] = [png(100_000 + i) for i in range(images)]  # every image at least once
    statuses: Counter[int] = Counter()

    async def client(index: int) -> None:
        for n in range(index, requests, clients):
            replica = replicas[n % len(replicas)]
            response = await post_images(replica, [work[n]])
            statuses[response.status] += 1
            await response.read()

    await asyncio.gather(*(client(i) for i in range(clients)))
    return statuses


async def test_a_thousand_requests_from_64_clients_over_200_images(
    make_gateway: GatewayFactory, fake_nomic: FakeNomic
) -> None:
    gateway = await make_gateway(**DEFAULTS)
    statuses = await company_load([gateway], requests=1000, images=200, clients=64)
    assert statuses == {200: 1000}
    received = Counter(fake_nomic.items_received)
    assert len(received) == 200
    assert set(received.values()) == {1}
    assert len(fake_nomic.calls) <= 20
    assert calls_ahead_of_rate(fake_nomic) < JITTER  # 1200 per 300 s
    print(f"\n  upstream calls: {len(fake_nomic.calls)}, "
          f"images per call: {[len(c.items) for c in fake_nomic.calls]}")  # fmt: skip


async def test_two_replicas_sharing_redis_fetch_each_image_once_under_one_rate(
    make_redis_gateway: GatewayFactory, fake_nomic: FakeNomic
) -> None:
    replicas = [await make_redis_gateway(**DEFAULTS), await make_redis_gateway(**DEFAULTS)]
    statuses = await company_load(replicas, requests=1000, images=200, clients=64)
    assert statuses == {200: 1000}
    assert set(Counter(fake_nomic.items_received).values()) == {1}
    assert len(fake_nomic.items_received) == 200
    assert calls_ahead_of_rate(fake_nomic) < JITTER
    print(f"\n  upstream calls: {len(fake_nomic.calls)} for 2 replicas")


async def test_rate_limiting_by_nomic_is_retried_honouring_retry_after(
    make_gateway: GatewayFactory, fake_nomic: FakeNomic
) -> None:
    gateway = await make_gateway(upstream_max_attempts=6, upstream_linger_seconds=0)
    fake_nomic.retry_after = 1
    fake_nomic.fail_when = lambda n: 429 if n % 2 == 0 and n < 8 else None
    for seed in range(4):
        response = await post_images(gateway, [png(seed)])
        assert response.status == 200
    calls = fake_nomic.calls
    assert [c.status for c in calls[:8]] == [429, 200] * 4
    for refused, retried in zip(calls[0:8:2], calls[1:8:2], strict=True):
        assert retried.at - refused.at >= 0.95  # Retry-After: 1


async def test_server_errors_and_dropped_connections_are_retried(
    make_gateway: GatewayFactory, fake_nomic: FakeNomic
) -> None:
    gateway = await make_gateway(upstream_max_attempts=4)
    fake_nomic.fail_next = [500, "drop", 503]
    response = await post_images(gateway, [png(1)])
    assert response.status == 200
    assert len(fake_nomic.calls) == 4


async def test_one_corrupt_image_in_a_batch_of_ten_requests_fails_only_its_request(
    make_gateway: GatewayFactory, fake_nomic: FakeNomic
) -> None:
    # A linger long enough for the ten to arrive on a loaded machine (0.3 s was not, once).
    gateway = await make_gateway(upstream_linger_seconds=2.0)
    corrupt = b"\x89PNG\r\n\x1a\n" + b"not a png at all"
    images = [png(i) for i in range(9)] + [corrupt]
    # A miss arriving when the lane is quiet goes at once; within the linger of it, the
    # next misses wait for each other.
    assert (await post_images(gateway, [png(100)])).status == 200
    responses = await asyncio.gather(*(post_images(gateway, [image]) for image in images))
    # one batch of all ten, refused for the corrupt one, then the nine again
    calls = [(len(c.items), c.status) for c in fake_nomic.calls]
    assert calls == [(1, 200), (10, 422), (9, 200)]
    assert [r.status for r in responses] == [200] * 9 + [422]
    detail = (await responses[-1].json())["detail"][0]
    assert detail["loc"] == ["body", "images", 0]


async def test_while_nomic_is_down_misses_fail_fast_hits_flow_and_it_recovers(
    make_gateway: GatewayFactory, fake_nomic: FakeNomic
) -> None:
    gateway = await make_gateway(breaker_failures=3, breaker_open_seconds=0.5)
    assert (await post_images(gateway, [png(0)])).status == 200  # cached before the outage
    fake_nomic.fail_when = lambda n: 503
    for seed in range(1, 4):
        assert (await post_images(gateway, [png(seed)])).status == 503
    calls = len(fake_nomic.calls)
    fast = await post_images(gateway, [png(9)])
    assert fast.status == 503
    assert 1 <= int(fast.headers["Retry-After"]) <= 1
    assert len(fake_nomic.calls) == calls  # the breaker answered, without calling Nomic
    assert (await post_images(gateway, [png(0)])).status == 200  # hits still served
    fake_nomic.fail_when = None
    await asyncio.sleep(0.6)
    assert (await post_images(gateway, [png(9)])).status == 200


async def test_a_url_past_its_ttl_is_served_stale_while_nomic_fails(
    make_gateway: GatewayFactory, fake_nomic: FakeNomic
) -> None:
    gateway = await make_gateway(url_ttl_seconds=1, stale_grace_seconds=60)
    url = ["https://example.com/cat.png"]
    fresh = await post_urls(gateway, url)
    assert fresh.status == 200
    await asyncio.sleep(2.1)  # past the TTL, rounded up to whole seconds
    fake_nomic.fail_next = [500]
    stale = await post_urls(gateway, url)
    assert stale.status == 200
    assert (stale.headers["X-Cache"], stale.headers["X-Cache-Stale"]) == ("STALE", "1")
    assert await stale.json() == await fresh.json()
    refreshed = await post_urls(gateway, url)
    assert refreshed.headers["X-Cache"] == "MISS"
    again = await post_urls(gateway, url)
    assert again.headers["X-Cache"] == "HIT"


async def test_a_full_queue_answers_503_at_once(
    make_gateway: GatewayFactory, fake_nomic: FakeNomic
) -> None:
    gateway = await make_gateway(upstream_queue_items=2)
    response = await post_images(gateway, [png(i) for i in range(3)])
    assert response.status == 503
    assert response.headers["Retry-After"] == "1"
    assert fake_nomic.calls == []


async def test_a_deadline_the_rate_cannot_meet_answers_503_at_once(
    make_gateway: GatewayFactory, fake_nomic: FakeNomic
) -> None:
    gateway = await make_gateway(
        upstream_rate_calls=1, upstream_rate_period_seconds=10, upstream_rate_burst=1,
        request_deadline_seconds=2, upstream_batch_size=1,
    )  # fmt: skip
    started = time.monotonic()
    response = await post_images(gateway, [png(1), png(2), png(3)])
    assert response.status == 503
    assert time.monotonic() - started < 1
    assert int(response.headers["Retry-After"]) >= 10


async def test_a_crashed_replica_blocks_an_image_only_until_its_mark_expires(
    make_redis_gateway: GatewayFactory, fake_nomic: FakeNomic, redis_url: str
) -> None:
    from gateway.keys import cache_key, content_digest
    from gateway.models import Spec
    from gateway.store import RedisBackend
    from gateway.store.redis_coordinator import RedisCoordinator

    gateway = await make_redis_gateway()
    image = png(77)
    backend = RedisBackend(redis_url)
    crashed = RedisCoordinator(backend)
    key = cache_key(Spec("nomic-embed-vision-v1.5", "image"), content_digest(image))
    assert (await crashed.claim_fetches([key], "a-replica-that-died", 400))[0].held
    started = time.monotonic()
    response = await post_images(gateway, [image])
    assert response.status == 200
    assert 0.3 <= time.monotonic() - started < 3
    assert fake_nomic.items_received == [image]
    await backend.close()


async def test_the_shield_is_observable(
    make_gateway: GatewayFactory, fake_nomic: FakeNomic
) -> None:
    gateway = await make_gateway(upstream_max_attempts=2)
    fake_nomic.fail_next = [500]
    await asyncio.gather(*(post_images(gateway, [png(5)]) for _ in range(3)))
    text = await (await gateway.get("/metrics")).text()
    for name in (
        "gateway_upstream_queue_items",
        "gateway_upstream_items_per_call_bucket",
        'gateway_upstream_retries_total{reason="UpstreamServerError"}',
        "gateway_upstream_breaker_state",
        'gateway_items_total{model="nomic-embed-vision-v1.5",outcome="coalesced"}',
        "gateway_replica_coalesced_items_total",
        "gateway_upstream_paced_seconds_bucket",
        "gateway_stale_items_total",
    ):
        assert name in text, name


async def test_nomics_retry_after_pauses_every_replica(
    make_redis_gateway: GatewayFactory, fake_nomic: FakeNomic
) -> None:
    first, second = await make_redis_gateway(upstream_max_attempts=3), await make_redis_gateway()
    fake_nomic.retry_after = 1
    fake_nomic.fail_when = lambda n: 429 if n == 0 else None
    paused = asyncio.ensure_future(post_images(first, [png(1)]))
    while not fake_nomic.calls or fake_nomic.calls[0].status != 429:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)  # the 429 has reached the first replica
    other = await post_images(second, [png(2)])
    assert other.status == 200
    assert (await paused).status == 200
    refused_at = fake_nomic.calls[0].at
    assert all(call.at - refused_at >= 0.95 for call in fake_nomic.calls[1:])


async def test_a_replica_refreshing_a_stale_url_is_waited_for_not_undercut(
    make_redis_gateway: GatewayFactory, fake_nomic: FakeNomic
) -> None:
    first = await make_redis_gateway(url_ttl_seconds=2)
    second = await make_redis_gateway(url_ttl_seconds=2)
    url = ["https://example.com/changing.png"]
    assert (await post_urls(first, url)).status == 200
    await asyncio.sleep(3.1)  # past the TTL, rounded up to whole seconds
    fake_nomic.latency = 0.3
    refreshing = asyncio.ensure_future(post_urls(first, url))
    while len(fake_nomic.calls) < 2:  # the first replica marked the URL, then called Nomic
        await asyncio.sleep(0.01)
    waited = await post_urls(second, url)
    assert waited.status == 200
    assert waited.headers["X-Cache"] == "HIT"  # it waited for the refresh: not billed again
    assert waited.headers["X-Billed-Tokens"] == "0"
    assert (await refreshing).headers["X-Cache"] == "MISS"
    assert len(fake_nomic.calls) == 2


async def test_answers_do_not_linger_in_memory(
    make_redis_gateway: GatewayFactory, fake_nomic: FakeNomic
) -> None:
    from gateway.appkeys import PIPELINE

    replicas = [await make_redis_gateway(redis_timeout_seconds=0.1) for _ in range(2)]
    await company_load(replicas, requests=200, images=50, clients=16)
    await asyncio.sleep(1.3)  # the linger: Redis timeout + 1 s
    for replica in replicas:
        assert replica.server.app[PIPELINE].fetcher.in_flight == 0
