"""Spend by job, end to end: requests name their job (the X-Gateway-Tag header, or the
OpenAI route's user field), replicas sharing Redis keep each job's usage apart exactly as the
fake Nomic billed it, and no client can grow the ledger past its bound of tags a day."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import redis
from aiohttp.test_utils import TestClient

from fake_nomic import FakeNomic, png
from gateway import quota, tags
from gateway.store import redis_keys
from tests.conftest import ADMIN, GatewayFactory, admin_get, team_headers
from tests.helpers import image_form

TEXT_MODEL = "nomic-embed-text-v1.5"
Client = TestClient[Any, Any]


async def images(client: Client, seeds: list[int], tag: str | None) -> None:
    headers = {} if tag is None else {tags.HEADER: tag}
    response = await client.post(
        "/v1/embedding/image", data=image_form([png(seed) for seed in seeds]), headers=headers
    )
    assert response.status == 200, await response.text()


async def openai_texts(client: Client, texts: list[str], **extra: Any) -> None:
    headers = extra.pop("headers", {})
    body = {"input": texts, "model": TEXT_MODEL, **extra}
    response = await client.post("/v1/embeddings", json=body, headers=headers)
    assert response.status == 200, await response.text()


async def by_tag(client: Client) -> dict[str, dict[str, Any]]:
    response = await client.get("/v1/usage?by=tag")
    assert response.status == 200, await response.text()
    return {row["tag"]: row for row in (await response.json())["usage"]}


async def test_three_jobs_over_two_replicas_are_kept_as_the_fake_billed_each(
    make_redis_gateway: GatewayFactory, fake_nomic: FakeNomic
) -> None:
    first = await make_redis_gateway()
    second = await make_redis_gateway()  # with a key of the same team, "test"
    texts_a = [f"document {i} of the reindex" for i in range(6)]
    texts_b = [f"question {i} asked ad hoc" for i in range(4)]
    await asyncio.gather(
        images(first, [1, 2, 3], "nightly-reindex"),
        images(second, [4, 5], "nightly-reindex"),
        openai_texts(first, texts_a[:4], user="search-backfill"),
        openai_texts(second, texts_a[2:], headers={tags.HEADER: "search-backfill"}),
        openai_texts(first, texts_b, user="ignored", headers={tags.HEADER: "adhoc"}),
    )
    await images(second, [1, 2, 3, 4, 5], "nightly-reindex")  # all hits: saved, not billed
    await images(first, [99], None)  # untagged

    billed_for = Counter[str]()
    image_tokens = fake_nomic.tokens_per_image
    for item in fake_nomic.items_received:
        billed_for["untagged" if item == png(99) else "nightly-reindex"] += image_tokens
    for text in fake_nomic.texts_received:
        job = "search-backfill" if text in texts_a else "adhoc"
        billed_for[job] += fake_nomic.text_tokens(text)
    assert len(fake_nomic.items_received) == 6  # each image once, whichever replica
    assert len(fake_nomic.texts_received) == 10  # each text once

    for replica in (first, second):  # each reads the usage both wrote
        await admin_get(replica, "/admin/usage")  # flushes what the replica buffered
    for replica in (first, second):
        found = await by_tag(replica)
        assert {tag: row["billed_tokens"] for tag, row in found.items()} == dict(billed_for)
        assert found["nightly-reindex"]["saved_tokens"] == 5 * image_tokens
        assert found["nightly-reindex"]["requests"] == 3
        assert found["search-backfill"]["texts"] == 8  # two texts sent twice: hits
        assert "ignored" not in found  # the header wins over the user field
        (day,) = (await (await replica.get("/v1/usage")).json())["usage"]
        for field in quota.USAGE_FIELDS:  # the jobs add up to the team's day
            assert sum(row[field] for row in found.values()) == day[field], field


async def test_ten_thousand_distinct_tags_leave_the_ledger_bounded(
    make_redis_gateway: GatewayFactory, redis_client: redis.Redis
) -> None:
    client = await make_redis_gateway()
    team = "bounded"  # a per-minute limit: each request is decided in admit.lua
    headers = await team_headers(client, team, limits={"requests_per_minute": 1_000_000})
    await images(client, [7], None)  # cached: every request below is a hit
    sent = 10_000
    gate = asyncio.Semaphore(32)

    async def one(number: int) -> None:
        async with gate:
            response = await client.post(
                "/v1/embedding/image", data=image_form([png(7)]),
                headers={**headers, tags.HEADER: f"job-{number}"},
            )  # fmt: skip
            assert response.status == 200

    await asyncio.gather(*(one(number) for number in range(sent)))
    today = quota.window(time.time()).day
    counted = redis_client.smembers(redis_keys.day_tags(team, today))
    assert len(counted) == tags.DEFAULT_TAGS_PER_DAY
    held = redis_client.hkeys(redis_keys.usage_day_by_tag(team, today))
    held_tags = {field.decode().partition("|")[0] for field in held}
    assert held_tags == {member.decode() for member in counted} | {tags.OTHER}
    rows = (await admin_get(client, f"/admin/usage?team={team}&by=tag"))["usage"]
    requests = {row["tag"]: row["requests"] for row in rows}
    assert len(requests) == tags.DEFAULT_TAGS_PER_DAY + 1
    assert requests[tags.OTHER] == sent - tags.DEFAULT_TAGS_PER_DAY
    assert sum(requests.values()) == sent


async def test_a_malformed_tag_is_refused_in_the_routes_own_shape(
    make_redis_gateway: GatewayFactory,
) -> None:
    client = await make_redis_gateway()
    bad = {tags.HEADER: "not a tag"}
    nomic = await client.post("/v1/embedding/image", data=image_form([png(1)]), headers=bad)
    assert nomic.status == 422
    (detail,) = (await nomic.json())["detail"]
    assert detail["loc"] == ["header", tags.HEADER]
    assert tags.HEADER in detail["msg"]
    body = {"input": ["x"], "model": TEXT_MODEL}
    openai = await client.post("/v1/embeddings", json=body, headers=bad)
    assert openai.status == 400
    error = (await openai.json())["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", tags.HEADER)
    # OpenAI takes any string as user: one that is no tag is made one, never refused
    user = await client.post("/v1/embeddings", json={**body, "user": "Ada Lovelace"})
    assert user.status == 200, await user.text()
    assert "Ada_Lovelace" in await by_tag(client)


async def test_usage_is_read_by_day_or_by_tag_and_nothing_else(
    make_redis_gateway: GatewayFactory,
) -> None:
    client = await make_redis_gateway()
    for path in ("/v1/usage?by=month", "/admin/usage?by=team", "/admin/chargeback?by=day"):
        response = await client.get(path, headers=ADMIN if "admin" in path else {})
        assert response.status == 422, path
        (detail,) = (await response.json())["detail"]
        assert detail["loc"] == ["query", "by"]
