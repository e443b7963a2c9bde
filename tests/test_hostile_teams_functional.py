"""What one team cannot do to another, through real HTTP, on the embedded store, a real Redis
and a real Redis Cluster: plant an embedding another team is answered, see another team's
cache, read /metrics without its token, crowd the process with bodies in flight."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import xxhash
from aiohttp.test_utils import TestClient

from gateway.keys import cache_key, content_digest
from tests.bench.harness import BOUNDARY, multipart
from tests.conftest import GatewayFactory, team_headers
from tests.fake_nomic import FakeNomic, png
from tests.helpers import image_form
from tests.test_cli import clean_env, run_cli
from tests.xxh3_collisions import colliding_jpegs

Client = TestClient[Any, Any]
MODEL = "nomic-embed-vision-v1.5"
OLD_KEY_INPUT = f"{MODEL}\0image\0".encode()  # what ng:v1 keys hashed before the content


async def embed(client: Client, image: bytes, headers: dict[str, str]) -> tuple[str, Any]:
    response = await client.post("/v1/embedding/image", data=image_form([image]), headers=headers)
    assert response.status == 200, await response.text()
    return response.headers["X-Cache"], (await response.json())["embeddings"][0]


async def test_an_image_built_to_collide_gets_its_own_embedding(
    gateway: Client, fake_nomic: FakeNomic
) -> None:
    planted, victim = colliding_jpegs(OLD_KEY_INPUT)
    assert planted != victim
    # The attack is real against the old key: the same xxh3_128, two different pictures.
    assert xxhash.xxh3_128(OLD_KEY_INPUT + planted).digest() == (
        xxhash.xxh3_128(OLD_KEY_INPUT + victim).digest()
    )
    assert cache_key(MODEL, "image", content_digest(planted)) != (
        cache_key(MODEL, "image", content_digest(victim))
    )
    attacker = await team_headers(gateway, "attacker")
    victims = await team_headers(gateway, "victims")
    assert await embed(gateway, planted, attacker) == ("MISS", fake_nomic.embedding(MODEL, planted))
    status, vector = await embed(gateway, victim, victims)
    assert status == "MISS"
    assert vector == fake_nomic.embedding(MODEL, victim)
    assert vector != fake_nomic.embedding(MODEL, planted)
    assert fake_nomic.items_received == [planted, victim]


async def test_a_private_cache_is_kept_apart_from_everyone_elses(
    gateway: Client, fake_nomic: FakeNomic
) -> None:
    private = await team_headers(gateway, "private", private_cache=True)
    shared, other = await team_headers(gateway, "shared"), await team_headers(gateway, "other")
    image = png(4242)
    expected = fake_nomic.embedding(MODEL, image)
    assert await embed(gateway, image, private) == ("MISS", expected)
    assert await embed(gateway, image, shared) == ("MISS", expected)  # not the private entry
    assert await embed(gateway, image, other) == ("HIT", expected)  # the shared one
    assert await embed(gateway, image, private) == ("HIT", expected)  # its own
    later = png(4243)
    assert await embed(gateway, later, shared) == ("MISS", fake_nomic.embedding(MODEL, later))
    assert (await embed(gateway, later, private))[0] == "MISS"  # no hit from other teams
    assert len(fake_nomic.items_received) == 4


async def test_a_team_is_switched_to_a_private_cache_through_the_admin_api(
    gateway: Client,
) -> None:
    from tests.conftest import ADMIN

    await team_headers(gateway, "switching")
    response = await gateway.patch(
        "/admin/teams/switching", json={"private_cache": True}, headers=ADMIN
    )
    assert response.status == 200
    assert (await response.json())["private_cache"] is True
    refused = await gateway.patch("/admin/teams/switching", json={"private_cache": "yes"},
                                  headers=ADMIN)  # fmt: skip
    assert refused.status == 422
    assert "private_cache must be true or false" in (await refused.json())["detail"][0]["msg"]


async def test_metrics_need_their_token_when_one_is_set(make_gateway: GatewayFactory) -> None:
    token = "metrics-token-for-tests-0123456789"
    gateway = await make_gateway(metrics_token=token)
    assert (await embed(gateway, png(7), {}))[0] == "MISS"
    for given in (None, "Bearer wrong-token-of-the-right-size-00", f"Basic {token}"):
        headers = {} if given is None else {"Authorization": given}
        refused = await gateway.get("/metrics", headers=headers)
        assert refused.status == 401
        body = await refused.text()
        assert "gateway_billed_tokens_total" not in body
        assert token not in body
    allowed = await gateway.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert allowed.status == 200
    assert 'gateway_team_items_total{outcome="miss",team="test"}' in await allowed.text()


@pytest.mark.parametrize("variable", ["GATEWAY_ADMIN_TOKEN", "GATEWAY_METRICS_TOKEN"])
def test_a_short_token_stops_startup_in_one_line(variable: str) -> None:
    result = run_cli("serve", env=clean_env(NOMIC_API_KEY="nk-x", **{variable: "x"}))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"nomic-gateway: {variable}=*** is not valid: must be at least 24 characters, "
        "e.g. from `openssl rand -hex 32`"
    ]


async def slow_body(data: bytes, pause: asyncio.Event) -> AsyncIterator[bytes]:
    yield data[: len(data) // 2]
    await pause.wait()
    yield data[len(data) // 2 :]


async def test_bodies_past_the_budget_in_flight_get_503_before_they_are_read(
    make_gateway: GatewayFactory, fake_nomic: FakeNomic
) -> None:
    gateway = await make_gateway(body_bytes_in_flight=300_000, max_body_bytes=200_000)
    body = multipart([png(1) + bytes(150_000)])  # a PNG with a tail: a valid upload
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
               "Content-Length": str(len(body))}  # fmt: skip
    release = asyncio.Event()
    held = asyncio.ensure_future(gateway.post("/v1/embedding/image", data=slow_body(body, release),
                                              headers=headers))  # fmt: skip
    await asyncio.sleep(0.3)  # the first body is half in, its whole length claimed
    refused = await gateway.post("/v1/embedding/image", data=body, headers=headers)
    assert refused.status == 503
    assert refused.headers["Retry-After"] == "2"
    assert (await refused.json())["detail"][0]["type"] == "gateway_overloaded"
    release.set()
    first = await held
    assert first.status == 200, await first.text()
    again = await gateway.post("/v1/embedding/image", data=body, headers=headers)
    assert (again.status, again.headers["X-Cache"]) == (200, "HIT")  # the budget was given back
    assert len(fake_nomic.items_received) == 1


def test_the_queue_drains_in_calls_counted_by_items_and_bytes() -> None:
    from gateway.shield import Policy, drain_seconds

    policy = Policy(batch_items=64, batch_bytes=32_000_000, rate_calls=1200,
                    rate_period_seconds=300, rate_burst=1, concurrency=8)  # fmt: skip
    assert drain_seconds(0, 0, policy, 2.0) == 0.0
    assert drain_seconds(64, 64_000, policy, 0.1) == pytest.approx(0.1)  # one call
    assert drain_seconds(65, 65_000, policy, 0.1) == pytest.approx(0.35)  # two: 0.25 s apart
    twenty_mb = drain_seconds(10, 200_000_000, policy, 2.0)  # one image a call
    assert twenty_mb == pytest.approx(max(9 * 0.25 + 2.0, 2 * 2.0))
    slow = drain_seconds(16 * 64, 16 * 64_000, policy, 10.0)  # 16 calls, 8 at once, 10 s each
    assert slow == pytest.approx(max(15 * 0.25 + 10.0, 2 * 10.0))


async def test_large_images_the_rate_cannot_take_by_the_deadline_get_503_at_once(
    make_gateway: GatewayFactory, fake_nomic: FakeNomic
) -> None:
    import time

    gateway = await make_gateway(
        upstream_rate_calls=1, upstream_rate_period_seconds=10, upstream_rate_burst=1,
        request_deadline_seconds=5, upstream_batch_bytes=1000,
    )  # fmt: skip
    images = [png(i) + bytes(900) for i in range(3)]  # one a call, by bytes: three calls
    started = time.monotonic()
    response = await gateway.post("/v1/embedding/image", data=image_form(images))
    assert response.status == 503
    assert time.monotonic() - started < 1
    assert int(response.headers["Retry-After"]) >= 20  # two more calls, 10 s apart
    assert fake_nomic.calls == []


@pytest.mark.parametrize("store_url", ["memory"], indirect=True)
async def test_a_full_queue_says_how_long_it_takes_to_drain(
    make_gateway: GatewayFactory, fake_nomic: FakeNomic
) -> None:
    gateway = await make_gateway(
        upstream_rate_calls=1, upstream_rate_period_seconds=3, upstream_rate_burst=1,
        upstream_queue_items=3, upstream_batch_bytes=1000, upstream_concurrency=1,
    )  # fmt: skip
    large = [png(i) + bytes(900) for i in range(5)]  # one a call, by bytes
    first = asyncio.ensure_future(gateway.post("/v1/embedding/image", data=image_form(large[:3])))
    while not fake_nomic.calls:
        await asyncio.sleep(0.01)
    full = await gateway.post("/v1/embedding/image", data=image_form(large[3:]))  # 2 + 2 > 3
    assert full.status == 503
    assert "queue is full" in (await full.json())["detail"][0]["msg"]
    assert int(full.headers["Retry-After"]) >= 3  # two calls queued, 3 s apart (was: 1)
    assert (await first).status == 200
