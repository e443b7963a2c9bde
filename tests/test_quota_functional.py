"""Team limits and usage through real HTTP: exact under concurrency, on both stores and
across two gateways sharing one Redis."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections import Counter
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from fake_nomic import FakeNomic, png
from tests.conftest import ADMIN_TOKEN, EVERY_STORE, GatewayFactory, admin_get, team_headers
from tests.helpers import image_form

Client = TestClient[Any, Any]
TOKENS = 10  # what the fake bills per image


async def post(
    client: Client, images: list[bytes], headers: dict[str, str]
) -> aiohttp.ClientResponse:
    return await client.post("/v1/embedding/image", data=image_form(images), headers=headers)


async def post_texts(
    client: Client, texts: list[str], headers: dict[str, str]
) -> aiohttp.ClientResponse:
    return await client.post("/v1/embedding/text", json={"texts": texts}, headers=headers)


async def teach_nomics_price(client: Client) -> None:
    """One miss from the default team: the gateway learns what an image costs upstream."""
    assert (await client.post("/v1/embedding/image", data=image_form([png(99_999)]))).status == 200


async def away_from_a_minute_boundary() -> None:
    """Per-minute windows are real UTC minutes: start a rate-limit test well inside one."""
    if 60 - time.time() % 60 < 3:
        await asyncio.sleep(60 - time.time() % 60 + 0.05)


async def usage_of(client: Client, team: str) -> dict[str, int]:
    rows = (await admin_get(client, f"/admin/usage?team={team}"))["usage"]
    assert len(rows) <= 1
    return rows[0] if rows else {}


@pytest.mark.parametrize("store_url", EVERY_STORE, indirect=True)
async def test_a_daily_budget_of_ten_images_admits_exactly_ten_of_a_hundred(
    gateway: Client, fake_nomic: FakeNomic
) -> None:
    await teach_nomics_price(gateway)
    capped = await team_headers(gateway, "capped", limits={"tokens_per_day": 10 * TOKENS})
    fake_nomic.calls.clear()
    images = [png(1000 + i) for i in range(100)]
    responses = await asyncio.gather(*(post(gateway, [image], capped) for image in images))
    assert Counter(r.status for r in responses) == {200: 10, 429: 90}
    assert len(fake_nomic.items_received) == 10

    refused = next(r for r in responses if r.status == 429)
    assert refused.headers["X-RateLimit-Limit"] == "100"
    assert refused.headers["X-RateLimit-Remaining"] == "0"
    assert int(refused.headers["Retry-After"]) >= 1
    detail = (await refused.json())["detail"][0]
    assert detail["loc"] == ["limits", "tokens_per_day"]
    assert detail["msg"] == (
        "team 'capped' has used all 100 tokens of its tokens_per_day limit today (billed, or "
        "reserved by requests under way)"
    )

    usage = await usage_of(gateway, "capped")
    assert usage["billed_tokens"] == 100 == TOKENS * len(fake_nomic.items_received)
    assert (usage["requests"], usage["misses"], usage["rejected"]) == (10, 10, 90)


@pytest.mark.parametrize("budget", ["tokens_per_day", "tokens_per_month"])
async def test_a_first_request_costing_more_than_the_budget_is_told_so_with_its_numbers(
    gateway: Client, budget: str
) -> None:
    """The headers say 5 tokens remain; the message says why 5 are not enough."""
    await teach_nomics_price(gateway)
    small = await team_headers(gateway, "small", limits={budget: TOKENS // 2})
    refused = await post(gateway, [png(1)], small)
    assert refused.status == 429
    assert (refused.headers["X-RateLimit-Limit"], refused.headers["X-RateLimit-Remaining"]) == (
        "5", "5")  # fmt: skip
    period = "today" if budget == "tokens_per_day" else "this month"
    assert (await refused.json())["detail"] == [{
        "loc": ["limits", budget],
        "msg": f"team 'small': this request's expected cost, 10 tokens, is more than the 5 that "
               f"remain {period} of its {budget} limit (5); that is more than the whole limit",
        "type": "rate_limit_exceeded",
    }]  # fmt: skip


async def test_the_budget_holds_before_any_replica_knows_what_an_image_costs(
    gateway: Client, fake_nomic: FakeNomic
) -> None:
    capped = await team_headers(gateway, "fresh", limits={"tokens_per_day": 10 * TOKENS})
    images = [png(3000 + i) for i in range(100)]
    responses = await asyncio.gather(*(post(gateway, [image], capped) for image in images))
    assert Counter(r.status for r in responses) == {200: 10, 429: 90}
    assert len(fake_nomic.items_received) == 10
    assert (await usage_of(gateway, "fresh"))["billed_tokens"] == 100


async def test_the_budget_holds_across_two_gateways_sharing_redis(
    make_redis_gateway: GatewayFactory, fake_nomic: FakeNomic
) -> None:
    first, second = await make_redis_gateway(), await make_redis_gateway()
    for replica in (first, second):
        await teach_nomics_price(replica)
    capped = await team_headers(first, "capped", limits={"tokens_per_day": 10 * TOKENS})
    fake_nomic.calls.clear()
    images = [png(2000 + i) for i in range(100)]
    replicas = [first, second] * 50
    responses = await asyncio.gather(
        *(post(replica, [image], capped) for replica, image in zip(replicas, images))
    )
    assert Counter(r.status for r in responses) == {200: 10, 429: 90}
    assert len(fake_nomic.items_received) == 10
    usage = await usage_of(second, "capped")
    assert usage["billed_tokens"] == 100
    assert (usage["requests"], usage["rejected"]) == (10, 90)


async def test_requests_per_minute(gateway: Client) -> None:
    await away_from_a_minute_boundary()
    team = await team_headers(gateway, "rpm", limits={"requests_per_minute": 3})
    statuses = [(await post(gateway, [png(1)], team)).status for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    refused = await post(gateway, [png(1)], team)
    assert refused.headers["X-RateLimit-Limit"] == "3"
    assert refused.headers["X-RateLimit-Remaining"] == "0"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.headers["X-RateLimit-Reset"] == refused.headers["Retry-After"]
    detail = (await refused.json())["detail"][0]
    assert detail["loc"] == ["limits", "requests_per_minute"]
    assert detail["msg"] == (
        "team 'rpm' has used all 3 requests of its requests_per_minute limit this minute"
    )


async def test_images_per_minute(gateway: Client) -> None:
    await away_from_a_minute_boundary()
    team = await team_headers(gateway, "ipm", limits={"images_per_minute": 5})
    assert (await post(gateway, [png(1), png(2), png(3)], team)).status == 200
    refused = await post(gateway, [png(4), png(5), png(6)], team)
    assert refused.status == 429
    assert refused.headers["X-RateLimit-Remaining"] == "2"
    assert (await refused.json())["detail"][0]["msg"] == (
        "team 'ipm': this request's 3 images are more than the 2 that remain this minute of its "
        "images_per_minute limit (5)"
    )
    assert (await post(gateway, [png(4), png(5)], team)).status == 200


async def test_texts_per_minute_counts_texts_and_images_per_minute_images(
    gateway: Client,
) -> None:
    await away_from_a_minute_boundary()
    limits = {"texts_per_minute": 5, "images_per_minute": 2}
    team = await team_headers(gateway, "tpm", limits=limits)
    assert (await post_texts(gateway, ["a", "b", "c"], team)).status == 200
    refused = await post_texts(gateway, ["d", "e", "f"], team)
    assert refused.status == 429
    assert refused.headers["X-RateLimit-Limit"] == "5"
    assert refused.headers["X-RateLimit-Remaining"] == "2"
    assert (await refused.json())["detail"][0]["loc"] == ["limits", "texts_per_minute"]
    assert (await post_texts(gateway, ["d", "e"], team)).status == 200
    assert (await post_texts(gateway, ["a"], team)).status == 429  # a hit counts too: used up
    # Used up, texts are refused before their body is read: even a body that is not valid.
    early = await gateway.post("/v1/embedding/text", json={"texts": 5}, headers=team)
    assert early.status == 429
    assert (await early.json())["detail"][0]["loc"] == ["limits", "texts_per_minute"]
    assert (await post(gateway, [png(1), png(2)], team)).status == 200  # images: their own
    assert (await post(gateway, [png(3)], team)).status == 429
    usage = await usage_of(gateway, "tpm")
    assert (usage["requests"], usage["texts"], usage["images"]) == (3, 5, 2)
    assert (usage["hits"] + usage["misses"], usage["rejected"]) == (7, 4)


async def test_hits_do_not_count_toward_texts_per_minute_when_the_team_says_so(
    gateway: Client,
) -> None:
    await away_from_a_minute_boundary()
    team = await team_headers(gateway, "tpm-free", limits={"texts_per_minute": 2},
                              count_hits=False)  # fmt: skip
    assert (await post_texts(gateway, ["x", "y"], team)).status == 200  # misses: counted
    for _ in range(3):
        hit = await post_texts(gateway, ["x", "y"], team)  # hits: free
        assert (hit.status, hit.headers["X-Cache"]) == (200, "HIT")
    assert (await post_texts(gateway, ["z"], team)).status == 429
    usage = await usage_of(gateway, "tpm-free")
    assert (usage["texts"], usage["hits"], usage["misses"], usage["rejected"]) == (8, 6, 2, 1)


async def test_hits_do_not_count_toward_rate_limits_when_the_team_says_so(
    gateway: Client,
) -> None:
    await away_from_a_minute_boundary()
    team = await team_headers(
        gateway, "nohits", limits={"requests_per_minute": 1}, count_hits=False
    )
    assert (await post(gateway, [png(1)], team)).status == 200  # a miss: counted
    for _ in range(3):
        hit = await post(gateway, [png(1)], team)  # hits: free
        assert (hit.status, hit.headers["X-Cache"]) == (200, "HIT")
    assert (await post(gateway, [png(2)], team)).status == 429


async def test_hits_count_toward_rate_limits_by_default(gateway: Client) -> None:
    await away_from_a_minute_boundary()
    team = await team_headers(gateway, "hits", limits={"requests_per_minute": 2})
    assert (await post(gateway, [png(1)], team)).status == 200
    assert (await post(gateway, [png(1)], team)).status == 200
    assert (await post(gateway, [png(1)], team)).status == 429


async def test_a_monthly_budget(gateway: Client) -> None:
    await teach_nomics_price(gateway)
    team = await team_headers(gateway, "monthly", limits={"tokens_per_month": 2 * TOKENS})
    assert (await post(gateway, [png(1)], team)).status == 200
    assert (await post(gateway, [png(2)], team)).status == 200
    refused = await post(gateway, [png(3)], team)
    assert refused.status == 429
    assert refused.headers["X-RateLimit-Remaining"] == "0"
    detail = (await refused.json())["detail"][0]
    assert detail["loc"] == ["limits", "tokens_per_month"]
    assert detail["msg"] == (
        "team 'monthly' has used all 20 tokens of its tokens_per_month limit this month "
        "(billed, or reserved by requests under way)"
    )
    assert (await post(gateway, [png(1), png(2)], team)).status == 200  # hits cost nothing


@pytest.mark.parametrize("store_url", EVERY_STORE, indirect=True)
async def test_a_failed_upstream_call_releases_its_reservation(
    gateway: Client, fake_nomic: FakeNomic
) -> None:
    await teach_nomics_price(gateway)
    team = await team_headers(gateway, "fragile", limits={"tokens_per_day": TOKENS})
    fake_nomic.fail_next = [500]
    assert (await post(gateway, [png(1)], team)).status == 502
    assert (await post(gateway, [png(1)], team)).status == 200
    assert (await post(gateway, [png(2)], team)).status == 429
    usage = await usage_of(gateway, "fragile")
    assert (usage["upstream_errors"], usage["billed_tokens"], usage["rejected"]) == (1, 10, 1)


@pytest.mark.parametrize("store_url", EVERY_STORE, indirect=True)
async def test_usage_cli_after_a_mixed_workload(gateway: Client, fake_nomic: FakeNomic) -> None:
    alpha = await team_headers(gateway, "alpha")
    beta = await team_headers(gateway, "beta")
    fake_nomic.calls.clear()
    billed: Counter[str] = Counter()
    workload = [
        ("alpha", alpha, [png(1), png(2), png(3)]),
        ("alpha", alpha, [png(1), png(1), png(4)]),  # a hit, a duplicate, a miss
        ("beta", beta, [png(2), png(5)]),  # another team's image is a hit too
        ("beta", beta, [png(5), png(6), png(6), png(6)]),
    ]
    for team, headers, images in workload:
        response = await post(gateway, images, headers)
        assert response.status == 200
        billed[team] += int(response.headers["X-Billed-Tokens"])
    assert sum(billed.values()) == TOKENS * len(fake_nomic.items_received)

    env = {**os.environ, "GATEWAY_URL": gateway.base, "GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN}  # type: ignore[attr-defined]
    cli = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "usage", "--json",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await cli.communicate()
    assert cli.returncode == 0, err.decode()
    rows = {row["team"]: row for row in json.loads(out)}
    images_sent = {"alpha": 6, "beta": 6}
    for team in ("alpha", "beta"):
        row = rows[team]
        assert row["hits"] + row["misses"] == row["images"] == images_sent[team]
        assert row["texts"] == 0
        assert row["billed_tokens"] == billed[team] == TOKENS * row["misses"]
        assert row["saved_tokens"] == TOKENS * row["hits"]
    assert (rows["alpha"]["misses"], rows["beta"]["misses"]) == (4, 2)

    table = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "usage", "--team", "beta",
        env=env, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    lines = (await table.communicate())[0].decode().splitlines()
    assert lines[0].split()[:5] == ["team", "day", "requests", "images", "texts"]
    assert lines[1].split()[0] == "beta"
    assert len(lines) == 2
