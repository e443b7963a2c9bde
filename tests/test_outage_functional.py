"""Redis stopping and coming back under the gateway: answers keep flowing (or fail cleanly,
as configured), nothing hangs, and the usage counted during the outage lands afterwards."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from fake_nomic import FakeNomic, png
from tests.conftest import RestartableRedis, admin_get, start_gateway, team_headers
from tests.helpers import image_form

Client = TestClient[Any, Any]


async def embed(client: Client, seed: int, headers: dict[str, str]) -> Any:
    return await client.post("/v1/embedding/image", data=image_form([png(seed)]), headers=headers)


@pytest.mark.parametrize("limits", [{}, {"requests_per_minute": 1000, "tokens_per_day": 10**6}])
async def test_failing_open_keeps_answering_and_writes_usage_back(
    fake_nomic: FakeNomic, outage_redis: RestartableRedis, limits: dict[str, int]
) -> None:
    gateway = await start_gateway(fake_nomic, outage_redis.url, redis_timeout_seconds=0.2)
    try:
        team = await team_headers(gateway, "steady", limits=limits)
        for seed in range(3):
            assert (await embed(gateway, seed, team)).status == 200  # cached, key known
        outage_redis.stop()
        during = [await embed(gateway, seed, team) for seed in (0, 1, 10, 11)]
        assert [r.status for r in during] == [200] * 4
        # hot answers are served from the process without Redis; the rest go upstream
        assert [r.headers["X-Cache"] for r in during] == ["HIT", "HIT", "BYPASS", "BYPASS"]
        assert (await gateway.get("/readyz")).status == 503
        outage_redis.start()
        await asyncio.sleep(1.2)  # a usage flush
        assert (await gateway.get("/readyz")).status == 200
        # what was cached before the outage is still there (AOF); what was fetched during it
        # could not be stored, and is fetched again when asked
        assert (await embed(gateway, 0, team)).headers["X-Cache"] == "HIT"
        [usage] = (await admin_get(gateway, "/admin/usage?team=steady"))["usage"]
        assert (usage["requests"], usage["images"]) == (8, 8)
        assert usage["billed_tokens"] == 10 * len(fake_nomic.items_received)
    finally:
        await gateway.close()


async def test_failing_closed_answers_503_then_recovers(
    fake_nomic: FakeNomic, outage_redis: RestartableRedis
) -> None:
    gateway = await start_gateway(
        fake_nomic, outage_redis.url, redis_timeout_seconds=0.2, on_store_failure="closed"
    )
    try:
        team = await team_headers(gateway, "careful", limits={"tokens_per_day": 10**6})
        assert (await embed(gateway, 1, team)).status == 200
        outage_redis.stop()
        refused = await embed(gateway, 2, team)
        assert (refused.status, refused.headers["Retry-After"]) == (503, "1")
        outage_redis.start()
        assert (await embed(gateway, 2, team)).status == 200
    finally:
        await gateway.close()
