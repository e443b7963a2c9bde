"""``upstream_calls_per_minute`` through real HTTP, on the embedded store, a real Redis and a
real Redis Cluster, counted against the fake Nomic's own record of the calls it got: a team
out of calls is refused while another team is answered, calls are counted as made (one-text
requests with the same options share them), and replicas share one count."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

from aiohttp.test_utils import TestClient

from fake_nomic import FakeNomic, png
from gateway.appkeys import SHIELD
from tests.conftest import GatewayFactory, admin_get, team_headers
from tests.helpers import image_form

Client = TestClient[Any, Any]
LIMIT = "upstream_calls_per_minute"


async def fresh_minute(seconds_needed: float) -> None:
    """Wait for the next UTC minute if fewer than ``seconds_needed`` are left of this one, so
    that what the test counts falls in one minute."""
    left = 60 - time.time() % 60
    if left < seconds_needed:
        await asyncio.sleep(left + 0.1)


def own_options(n: int) -> dict[str, Any]:
    """A one-text request whose options are its own: a lane, and a call, of its own."""
    return {"texts": [f"flood {n}"], "long_text_mode": "truncate", "max_tokens_per_text": n}


async def usage_of(gateway: Client, team: str, requests: int) -> dict[str, Any]:
    """The team's usage today, once ``requests`` requests are in it (written within a second)."""
    for _ in range(100):
        [row] = (await admin_get(gateway, f"/admin/usage?team={team}"))["usage"] or [{}]
        if row.get("requests", 0) + row.get("rejected", 0) >= requests:
            return row
        await asyncio.sleep(0.1)
    raise AssertionError(f"usage of {team} never showed {requests} requests")


async def test_a_team_out_of_calls_is_refused_while_another_team_is_answered(
    make_gateway: GatewayFactory, fake_nomic: FakeNomic
) -> None:
    """20 one-text requests, each with a max_tokens_per_text of its own (20 lanes, 20 calls)
    on a limit of 5 calls a minute: 5 calls go up, and with their 5 s deadline before the
    minute's end the other 15 are refused 429 with Retry-After, billed nothing; another
    team's text and image misses sent meanwhile are answered."""
    gateway = await make_gateway(request_deadline_seconds=5)
    heavy = await team_headers(gateway, "heavy", limits={LIMIT: 5})
    victim = await team_headers(gateway, "victim")
    await fresh_minute(15)
    flood = [asyncio.ensure_future(gateway.post("/v1/embedding/text", json=own_options(n),
                                                headers=heavy)) for n in range(1, 21)]  # fmt: skip
    while not fake_nomic.text_calls:
        await asyncio.sleep(0.01)
    text, image = await asyncio.gather(
        gateway.post("/v1/embedding/text", json={"texts": ["the victim's text"]}, headers=victim),
        gateway.post("/v1/embedding/image", data=image_form([png(4242)]), headers=victim),
    )
    assert (text.status, image.status) == (200, 200)
    responses = await asyncio.gather(*flood)
    assert Counter(response.status for response in responses) == {200: 5, 429: 15}
    for refused in (response for response in responses if response.status == 429):
        [detail] = (await refused.json())["detail"]
        assert detail["loc"] == ["limits", LIMIT]
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        assert refused.headers["X-RateLimit-Limit"] == "5"
    assert sum(call.texts[0].startswith("flood") for call in fake_nomic.text_calls) == 5
    billed = sum(int(r.headers["X-Billed-Tokens"]) for r in responses if r.status == 200)
    usage = await usage_of(gateway, "heavy", 20)
    assert usage["billed_tokens"] == billed  # the 15 cost nothing
    # Admitted, the 15 count as requests whose inputs missed the cache, and as rejected.
    assert (usage["requests"], usage["misses"], usage["hits"]) == (20, 20, 0)
    assert (usage["rejected"], usage["upstream_errors"]) == (15, 0)


async def test_one_text_requests_with_the_same_options_share_calls_and_are_counted_by_them(
    make_gateway: GatewayFactory, fake_nomic: FakeNomic
) -> None:
    """40 one-text requests at once with the same options: the first finds its lane quiet
    and goes alone, the other 39 queue behind it (one call at a time) and go 10 a call. That
    is 5 calls, counted as 5: a limit of 5 calls answers all 40 (counting a call per text,
    as per-minute text limits count, would have refused 35)."""
    gateway = await make_gateway(upstream_concurrency=1)
    team = await team_headers(gateway, "batched", limits={LIMIT: 5})
    await fresh_minute(20)

    def post(n: int) -> asyncio.Future[Any]:
        body = {"texts": [f"one of forty {n}"], "long_text_mode": "truncate"}
        return asyncio.ensure_future(gateway.post("/v1/embedding/text", json=body, headers=team))

    fake_nomic.hold()
    first = post(0)
    while not fake_nomic.text_calls:
        await asyncio.sleep(0.01)
    rest = [post(n) for n in range(1, 40)]
    shield = gateway.server.app[SHIELD]
    while shield.queued < 39:
        await asyncio.sleep(0.01)
    fake_nomic.release()
    responses = await asyncio.gather(first, *rest)
    assert [response.status for response in responses] == [200] * 40
    assert [len(call.texts) for call in fake_nomic.text_calls] == [1, 10, 10, 10, 9]


async def test_replicas_share_a_teams_calls(
    make_redis_gateway: GatewayFactory, fake_nomic: FakeNomic
) -> None:
    """Two gateways on one Redis, a team's 20 one-call requests sent to both: 5 calls in
    all, not 5 each."""
    first = await make_redis_gateway(request_deadline_seconds=5)
    second = await make_redis_gateway(request_deadline_seconds=5)
    heavy = await team_headers(first, "heavy", limits={LIMIT: 5})
    await fresh_minute(15)
    posts = (replica.post("/v1/embedding/text", json=own_options(n), headers=heavy)
             for n, replica in enumerate([first, second] * 10, start=1))  # fmt: skip
    responses = await asyncio.gather(*posts)
    assert Counter(response.status for response in responses) == {200: 5, 429: 15}
    assert len(fake_nomic.text_calls) == 5
