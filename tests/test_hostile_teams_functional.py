"""What one team cannot do to another, through real HTTP, on the embedded store, a real Redis
and a real Redis Cluster: plant an embedding another team is answered, see another team's
cache, read /metrics without its token, crowd the process with bodies in flight."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import xxhash
from aiohttp.test_utils import TestClient

from fake_nomic import FakeNomic, png
from gateway.appkeys import BODY_BUDGET
from gateway.keys import cache_key, content_digest
from gateway.models import Spec
from tests.bench.harness import BOUNDARY, multipart
from tests.conftest import GatewayFactory, team_headers
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
    assert cache_key(Spec(MODEL, "image"), content_digest(planted)) != (
        cache_key(Spec(MODEL, "image"), content_digest(victim))
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
    team_items = 'gateway_team_items_total{kind="image",outcome="miss",team="test"}'
    assert team_items in await allowed.text()


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


def upload_headers(body: bytes, team: dict[str, str]) -> dict[str, str]:
    return {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
            "Content-Length": str(len(body)), **team}  # fmt: skip


async def test_bodies_past_the_budget_in_flight_get_503_before_they_are_read(
    make_gateway: GatewayFactory, fake_nomic: FakeNomic
) -> None:
    gateway = await make_gateway(body_bytes_in_flight=400_000, max_body_bytes=200_000)
    teams = [await team_headers(gateway, name) for name in ("first", "second", "third")]
    body = multipart([png(1) + bytes(190_000)])  # a PNG with a tail: a valid upload
    release = asyncio.Event()
    held = [
        asyncio.ensure_future(gateway.post("/v1/embedding/image", data=slow_body(body, release),
                                           headers=upload_headers(body, team)))
        for team in teams[:2]
    ]  # fmt: skip
    await asyncio.sleep(0.3)  # two bodies half in, their whole length claimed: 380 KB
    refused = await gateway.post("/v1/embedding/image", data=body,
                                 headers=upload_headers(body, teams[2]))  # fmt: skip
    assert refused.status == 503
    assert refused.headers["Retry-After"] == "2"
    assert (await refused.json())["detail"][0]["type"] == "gateway_overloaded"
    release.set()
    for first in held:
        assert (await first).status == 200
    again = await gateway.post("/v1/embedding/image", data=body,
                               headers=upload_headers(body, teams[2]))  # fmt: skip
    assert (again.status, again.headers["X-Cache"]) == (200, "HIT")  # the budget was given back
    assert len(fake_nomic.items_received) == 1


async def test_one_team_cannot_hold_the_others_body_budget(
    make_gateway: GatewayFactory, fake_nomic: FakeNomic
) -> None:
    gateway = await make_gateway(body_bytes_in_flight=300_000, max_body_bytes=100_000)
    hog, other = await team_headers(gateway, "hog"), await team_headers(gateway, "other")
    body = multipart([png(2) + bytes(90_000)])
    release = asyncio.Event()
    held = asyncio.ensure_future(gateway.post("/v1/embedding/image", data=slow_body(body, release),
                                              headers=upload_headers(body, hog)))  # fmt: skip
    budget = gateway.server.app[BODY_BUDGET]  # type: ignore[attr-defined]
    for _ in range(250):  # until the hog's held upload holds its bytes (before the next claims)
        if budget.in_flight >= len(body):
            break
        await asyncio.sleep(0.02)
    # Declared and never sent: it would hold what it declares, but the team's share is used.
    _, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    head = upload_headers(body, hog) | {"Host": "gw"}
    writer.write(b"POST /v1/embedding/image HTTP/1.1\r\n" + "".join(
        f"{name}: {value}\r\n" for name, value in head.items()).encode() + b"\r\n")  # fmt: skip
    over_share = await gateway.post("/v1/embedding/image", data=body,
                                    headers=upload_headers(body, hog))  # fmt: skip
    assert over_share.status == 429  # the team's own share (100 KB) is what it holds up
    assert "wait for its uploads in flight" in (await over_share.json())["detail"][0]["msg"]
    served = await gateway.post("/v1/embedding/image", data=body,
                                headers=upload_headers(body, other))  # fmt: skip
    assert served.status == 200
    writer.close()
    release.set()
    assert (await held).status == 200


async def test_a_refused_request_never_gets_100_continue(gateway: Client) -> None:
    limited = await team_headers(gateway, "limited", limits={"requests_per_minute": 1})
    body = multipart([png(3)])

    async def ask(team: dict[str, str]) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        head = upload_headers(body, team) | {"Host": "gw", "Expect": "100-continue"}
        writer.write(b"POST /v1/embedding/image HTTP/1.1\r\n" + "".join(
            f"{name}: {value}\r\n" for name, value in head.items()).encode() + b"\r\n")  # fmt: skip
        status = await asyncio.wait_for(reader.readline(), 5)
        if status.startswith(b"HTTP/1.1 100"):
            await reader.readline()
            writer.write(body)
            status = await asyncio.wait_for(reader.readline(), 5)
        writer.close()
        return status

    assert (await ask(limited)).startswith(b"HTTP/1.1 200")  # after 100 Continue
    assert (await ask(limited)).startswith(b"HTTP/1.1 429")  # read, then refused: now known
    assert (await ask(limited)).startswith(b"HTTP/1.1 429")  # refused before 100 Continue
    assert (await ask({"Authorization": "Bearer nk-nobody"})).startswith(b"HTTP/1.1 401")


async def test_a_client_that_leaves_mid_body_costs_no_traceback(
    gateway: Client, caplog: pytest.LogCaptureFixture
) -> None:
    body = multipart([png(4) + bytes(500_000)])
    _, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    head = upload_headers(body, {"Authorization": f"Bearer {gateway.team_key}"}) | {"Host": "g"}  # type: ignore[attr-defined]
    writer.write(b"POST /v1/embedding/image HTTP/1.1\r\n" + "".join(
        f"{name}: {value}\r\n" for name, value in head.items()).encode() + b"\r\n")  # fmt: skip
    writer.write(body[: len(body) // 2])
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.transport.abort()
    await asyncio.sleep(0.3)
    assert (await gateway.get("/healthz")).status == 200
    gateway_lines = [r for r in caplog.records if r.name.startswith(("gateway", "aiohttp"))]
    assert not [r for r in gateway_lines if r.exc_info or r.levelno >= logging.ERROR]


def test_the_queue_drains_in_calls_counted_by_items_and_bytes() -> None:
    from gateway.shield_policy import calls_for, drain_seconds
    from tests.helpers import policy as make_policy

    policy = make_policy(batch_items=64, batch_bytes=32_000_000, rate_calls=1200,
                         rate_period_seconds=300, rate_burst=1, concurrency=8)  # fmt: skip

    def drain(items: int, size: int, seconds: float, most: int = 64) -> float:
        return drain_seconds(calls_for(items, size, most, policy), policy, seconds)

    assert drain(0, 0, 2.0) == 0.0
    assert drain(64, 64_000, 0.1) == pytest.approx(0.1)  # one call
    assert drain(65, 65_000, 0.1) == pytest.approx(0.35)  # two: 0.25 s apart
    assert drain(65, 650, 0.1, most=10) == pytest.approx(6 * 0.25 + 0.1)  # texts: 10 a call
    twenty_mb = drain(10, 200_000_000, 2.0)  # one image a call
    assert twenty_mb == pytest.approx(max(9 * 0.25 + 2.0, 2 * 2.0))
    slow = drain(16 * 64, 16 * 64_000, 10.0)  # 16 calls, 8 at once, 10 s each
    assert slow == pytest.approx(max(15 * 0.25 + 10.0, 2 * 10.0))


async def test_the_queue_admits_no_more_texts_than_the_rate_serves_by_their_deadline() -> None:
    """A text call takes 10 texts, and texts of different options never share one: at Nomic's
    rate (4 calls a second) a 60 s deadline serves about 2,400 texts of one lane, or 240
    texts each of its own options; what the queue admitted beyond that would fail 60 s later
    instead of at once with an honest Retry-After."""

    from gateway.errors import UpstreamUnavailable
    from gateway.models import TextOptions
    from gateway.shield import Job
    from gateway.store.memory_coordinator import MemoryCoordinator
    from tests.helpers import policy as make_policy
    from tests.helpers import shield as make_shield

    def spec(max_tokens: int) -> Spec:
        options = TextOptions("search_document", None, "mean", max_tokens)
        return Spec("nomic-embed-text-v1.5", "text", options)

    async def admitted(requests: list[tuple[Spec, int]]) -> int:
        shield = make_shield(object(), MemoryCoordinator(), make_policy())  # type: ignore[arg-type]
        count, waits = 0, []
        try:
            for n, (options, texts) in enumerate(requests):
                jobs = [Job(b"%d %d" % (n, i), n, time.monotonic() + 60, 1) for i in range(texts)]
                try:
                    shield.submit(options, jobs)
                except UpstreamUnavailable as refused:
                    waits.append(refused.retry_after or 0)
                    continue
                count += texts
        finally:
            for lane in shield._lanes.values():
                assert lane.task is not None
                lane.task.cancel()
            await asyncio.sleep(0)
        assert waits
        assert min(waits) >= 55  # Retry-After: when the queue ahead will have drained
        return count

    assert 2300 <= await admitted([(spec(1), 100)] * 100) <= 2400
    assert 230 <= await admitted([(spec(n), 1) for n in range(1, 4001)]) <= 240


async def test_large_images_the_rate_cannot_take_by_the_deadline_get_503_at_once(
    make_gateway: GatewayFactory, fake_nomic: FakeNomic
) -> None:
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


async def test_a_team_flooding_distinct_lanes_takes_its_turn_not_the_whole_rate(
    make_gateway: GatewayFactory, fake_nomic: FakeNomic
) -> None:
    """One team sends 40 one-text requests, each with a max_tokens_per_text of its own: 40
    lanes and 40 calls, where the rate serves 10 a second. Another team's text miss and image
    miss, sent once the flood is going, are served in the next round of turns (a call or two
    of the flood's before each), not after the whole flood."""
    gateway = await make_gateway(
        upstream_rate_calls=10, upstream_rate_period_seconds=1, upstream_rate_burst=1
    )
    flooder = await team_headers(gateway, "flood")
    victim = await team_headers(gateway, "victim")

    def flood_body(n: int) -> dict[str, Any]:
        return {"texts": [f"flood {n}"], "long_text_mode": "truncate", "max_tokens_per_text": n}

    posts = (gateway.post("/v1/embedding/text", json=flood_body(n), headers=flooder)
             for n in range(1, 41))  # fmt: skip
    flood = [asyncio.ensure_future(post) for post in posts]
    while len(fake_nomic.text_calls) < 2:
        await asyncio.sleep(0.01)
    asked = time.monotonic()
    text, image = await asyncio.gather(
        gateway.post("/v1/embedding/text", json={"texts": ["the victim's text"]}, headers=victim),
        gateway.post("/v1/embedding/image", data=image_form([png(4242)]), headers=victim),
    )
    assert (text.status, image.status) == (200, 200)
    assert all(response.status == 200 for response in await asyncio.gather(*flood))
    [mine] = [c.at for c in fake_nomic.text_calls if c.texts == ["the victim's text"]]
    [picture] = [c.at for c in fake_nomic.calls if c.kind == "image"]
    flood_calls = [c.at for c in fake_nomic.text_calls if c.texts[0].startswith("flood")]
    # A call or two of the flood's before each (36 with the shield of first come, first
    # served); up to 5, as on a loaded machine the victim's requests take a few of the rate's
    # tenths of a second to reach the queue after `asked` (4 once).
    for served in (mine, picture):
        assert sum(asked <= at < served for at in flood_calls) <= 5
    assert sum(at > max(mine, picture) for at in flood_calls) >= 20  # the flood went on
