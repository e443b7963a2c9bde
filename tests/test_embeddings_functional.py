"""The image endpoint through real HTTP, on the embedded store and on a real Redis."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from fake_nomic import FakeNomic, png
from gateway.app import create_app
from tests.conftest import EMBEDDED, EVERY_STORE, GatewayFactory, stored_keys, sync_client
from tests.helpers import image_form, post_images, post_urls

Client = TestClient[Any, Any]


@pytest.mark.parametrize("store_url", EVERY_STORE, indirect=True)
async def test_miss_then_hit_answers_exactly_what_nomic_answered(
    gateway: Client, fake_nomic: FakeNomic
) -> None:
    images = [png(1), png(2)]
    first = await post_images(gateway, images)
    assert first.status == 200
    body = await first.json()
    expected = [FakeNomic.embedding("nomic-embed-vision-v1.5", image) for image in images]
    assert body["embeddings"] == expected
    assert body["model"] == "nomic-embed-vision-v1.5"
    assert body["usage"] == {"prompt_tokens": 20, "total_tokens": 20}
    assert first.headers["X-Cache"] == "MISS"
    assert first.headers["X-Billed-Tokens"] == "20"

    second = await post_images(gateway, images)
    assert second.status == 200
    assert await second.json() == body
    assert second.headers["X-Cache"] == "HIT"
    assert second.headers["X-Cache-Hits"] == "2"
    assert second.headers["X-Billed-Tokens"] == "0"
    assert len(fake_nomic.calls) == 1


@pytest.mark.parametrize("store_url", EVERY_STORE, indirect=True)
async def test_partial_hit_sends_only_the_misses_and_keeps_input_order(
    gateway: Client, fake_nomic: FakeNomic
) -> None:
    images = [png(seed) for seed in range(10)]
    cached = [images[i] for i in (0, 2, 3, 5, 6, 8, 9)]
    assert (await post_images(gateway, cached)).status == 200
    fake_nomic.calls.clear()

    response = await post_images(gateway, images)
    assert response.status == 200
    assert fake_nomic.items_received == [images[1], images[4], images[7]]
    assert response.headers["X-Cache"] == "PARTIAL"
    assert response.headers["X-Cache-Hits"] == "7"
    assert response.headers["X-Cache-Misses"] == "3"
    assert response.headers["X-Billed-Tokens"] == "30"
    body = await response.json()
    assert body["embeddings"] == [FakeNomic.embedding(body["model"], image) for image in images]
    assert body["usage"]["total_tokens"] == 100


async def test_same_image_five_times_goes_upstream_once(
    gateway: Client, fake_nomic: FakeNomic
) -> None:
    image = png(7)
    response = await post_images(gateway, [image] * 5)
    assert response.status == 200
    assert fake_nomic.items_received == [image]
    body = await response.json()
    assert len(body["embeddings"]) == 5
    assert all(vector == body["embeddings"][0] for vector in body["embeddings"])
    assert body["usage"]["total_tokens"] == 50
    assert response.headers["X-Billed-Tokens"] == "10"


@pytest.mark.parametrize("store_url", EVERY_STORE, indirect=True)
async def test_concurrent_requests_for_one_new_image_share_one_upstream_call(
    gateway: Client, fake_nomic: FakeNomic
) -> None:
    fake_nomic.latency = 0.2
    image = png(99)
    responses = await asyncio.gather(*(post_images(gateway, [image]) for _ in range(20)))
    assert [r.status for r in responses] == [200] * 20
    assert fake_nomic.items_received == [image]
    billed = sorted(int(r.headers["X-Billed-Tokens"]) for r in responses)
    assert billed == [0] * 19 + [10]
    bodies = [await r.json() for r in responses]
    assert all(body == bodies[0] for body in bodies)


async def test_models_are_cached_apart(gateway: Client, fake_nomic: FakeNomic) -> None:
    image = png(3)
    v1 = await (await post_images(gateway, [image], model="nomic-embed-vision-v1")).json()
    v15 = await (await post_images(gateway, [image], model="nomic-embed-vision-v1.5")).json()
    assert v1["model"] == "nomic-embed-vision-v1"
    assert v1["embeddings"] != v15["embeddings"]
    assert len(fake_nomic.calls) == 2


async def test_upstream_batches_are_at_most_the_configured_size(
    make_gateway: GatewayFactory, fake_nomic: FakeNomic
) -> None:
    gateway = await make_gateway(upstream_batch_size=4)
    images = [png(seed) for seed in range(10)]
    response = await post_images(gateway, images)
    assert response.status == 200
    assert sorted(len(call.items) for call in fake_nomic.calls) == [2, 4, 4]
    body = await response.json()
    assert body["embeddings"] == [FakeNomic.embedding(body["model"], image) for image in images]


@pytest.mark.parametrize("store_url", EVERY_STORE, indirect=True)
async def test_urls_are_cached_with_their_ttl(
    make_gateway: GatewayFactory, fake_nomic: FakeNomic, store_url: str | None
) -> None:
    gateway = await make_gateway(url_ttl_seconds=3600, stale_grace_seconds=600)
    urls = ["https://example.com/a.png", "http://example.com/b.jpg"]
    first = await post_urls(gateway, urls)
    assert first.status == 200, await first.text()
    body = await first.json()
    assert body["embeddings"] == [FakeNomic.embedding(body["model"], u.encode()) for u in urls]
    second = await post_urls(gateway, urls)
    assert second.headers["X-Cache"] == "HIT"
    assert fake_nomic.items_received == [url.encode() for url in urls]
    if store_url is not None and not store_url.startswith(EMBEDDED):
        client = sync_client(store_url)
        ttls = [client.ttl(key) for key in await stored_keys(client, "ng:v2:emb:*", 2)]
        client.close()
        assert len(ttls) == 2
        assert all(4100 < ttl <= 4200 for ttl in ttls)  # kept a grace period past the TTL


async def test_image_entries_do_not_expire_on_redis(gateway: Client, store_url: str | None) -> None:
    assert (await post_images(gateway, [png(1)])).status == 200
    if store_url is not None:
        client = sync_client(store_url)
        assert [client.ttl(key) for key in await stored_keys(client, "ng:v2:emb:*", 1)] == [-1]
        client.close()


async def test_answer_is_valid_json_with_nomic_fields_only(gateway: Client) -> None:
    response = await post_images(gateway, [png(5)])
    assert response.content_type == "application/json"
    body = orjson.loads(await response.read())
    assert set(body) == {"embeddings", "usage", "model"}
    assert len(body["embeddings"][0]) == 768
    assert response.headers["X-Request-Id"]


async def test_client_request_id_is_echoed(gateway: Client) -> None:
    response = await gateway.get("/v1/user", headers={"X-Request-Id": "abc-123"})
    assert response.headers["X-Request-Id"] == "abc-123"
    odd = await gateway.get("/v1/user", headers={"X-Request-Id": "no spaces <allowed>"})
    assert odd.headers["X-Request-Id"] != "no spaces <allowed>"


async def test_user_endpoint_answers_with_and_without_slash(gateway: Client) -> None:
    for path in ("/v1/user", "/v1/user/"):
        response = await gateway.get(path)
        assert response.status == 200
        assert "id" in await response.json()


async def test_health_and_readiness(gateway: Client) -> None:
    assert (await gateway.get("/healthz")).status == 200
    ready = await gateway.get("/readyz")
    assert ready.status == 200
    assert (await ready.json())["store"] == "ok"


async def test_metrics_count_hits_and_misses(gateway: Client) -> None:
    await post_images(gateway, [png(1), png(2)])
    await post_images(gateway, [png(1)])
    text = await (await gateway.get("/metrics")).text()
    assert 'gateway_items_total{model="nomic-embed-vision-v1.5",outcome="hit"}' in text
    assert "gateway_upstream_calls_total" in text
    assert gateway.team_key not in text  # type: ignore[attr-defined]
    assert not re.search(r"nk-[\w-]{20}", text)  # no key of any team (a team id may hold "nk-")


async def test_unknown_path_is_a_nomic_shaped_404(gateway: Client) -> None:
    response = await gateway.get("/v1/nothing")
    assert response.status == 404
    assert (await response.json())["detail"][0]["type"] == "http_404"


async def test_redis_outage_answers_503_with_retry_after_then_recovers_by_itself(
    fake_nomic: FakeNomic, tmp_path: Path
) -> None:
    from tests.conftest import ADMIN_TOKEN, free_port, gateway_settings, make_team, spawn_redis

    port = free_port()
    redis_process = spawn_redis(port, str(tmp_path))
    settings = gateway_settings(
        fake_nomic, f"redis://127.0.0.1:{port}/0", admin_token=ADMIN_TOKEN,
        redis_timeout_seconds=0.2, key_cache_seconds=0.01,
    )  # fmt: skip
    client: Client = TestClient(TestServer(create_app(settings), host="127.0.0.1"))
    await client.start_server()
    try:
        key = await make_team(client.session, str(client.make_url("")).rstrip("/"))
        auth = {"Authorization": f"Bearer {key}"}
        redis_process.terminate()
        redis_process.wait(10)
        down = await client.post("/v1/embedding/image", data=image_form([png(1)]), headers=auth)
        assert down.status == 503
        assert down.headers["Retry-After"] == "1"
        assert (await client.get("/readyz")).status == 503
        assert (await client.get("/healthz")).status == 200

        redis_process = spawn_redis(port, str(tmp_path))  # empty: the team is gone with it
        assert (await client.get("/readyz")).status == 200
        key = await make_team(client.session, str(client.make_url("")).rstrip("/"))
        auth = {"Authorization": f"Bearer {key}"}
        up = await client.post("/v1/embedding/image", data=image_form([png(1)]), headers=auth)
        assert up.status == 200
    finally:
        await client.close()
        redis_process.terminate()
        redis_process.wait(10)


async def test_a_client_too_slow_to_send_its_body_gets_a_408(
    make_gateway: GatewayFactory, fake_nomic: FakeNomic
) -> None:
    gateway = await make_gateway(body_timeout_seconds=0.3)
    reader, writer = await asyncio.open_connection(gateway.host, gateway.port)
    auth = f"Authorization: Bearer {gateway.team_key}\r\n".encode()  # type: ignore[attr-defined]
    writer.write(
        b"POST /v1/embedding/image HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
        + auth
        + b"Content-Type: application/x-www-form-urlencoded\r\n\r\nurls=http"
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.read(4096), 5)
    writer.close()
    assert head.startswith(b"HTTP/1.1 408")
    assert b"request body not received within 0.3 seconds" in head
    assert fake_nomic.calls == []


async def test_wrong_method_is_a_405_with_allow(gateway: Client) -> None:
    response = await gateway.get("/v1/embedding/image")
    assert response.status == 405
    assert response.headers["Allow"] == "POST"


async def test_readiness_reports_the_last_upstream_outcome(
    gateway: Client, fake_nomic: FakeNomic
) -> None:
    assert (await (await gateway.get("/readyz")).json())["upstream_last_call"] == "no call yet"
    fake_nomic.fail_next = [500]
    await post_images(gateway, [png(1)])
    ready = await gateway.get("/readyz")
    assert ready.status == 200
    assert (await ready.json())["upstream_last_call"] == "500"
