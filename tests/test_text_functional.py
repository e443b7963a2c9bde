"""``POST /v1/embedding/text`` through the gateway, against the fake Nomic: a drop-in for
Nomic's, cached per text, batched across requests, billed per text; and nothing else of
Nomic's passed on."""

from __future__ import annotations

import asyncio
import gzip
import secrets
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from fake_nomic import FAKE_API_KEY, MODEL_CONTEXT, FakeNomic
from gateway.models import Cost, Spec
from tests.conftest import GatewayFactory, admin_get, team_headers
from tests.helpers import run_official_client
from tests.test_shield_functional import ahead_of_rate

Client = TestClient[Any, Any]

SCRIPT = """
import json, sys
from nomic import embed
calls = json.loads(sys.argv[1])
out = []
for call in calls:
    answer = embed.text(**call)
    out.append({"embeddings": answer["embeddings"], "usage": answer["usage"]})
print(json.dumps(out))
"""


async def post_texts(client: Client, texts: list[str], **fields: Any) -> Any:
    return await client.post("/v1/embedding/text", json={"texts": texts, **fields})


async def test_the_official_client_through_the_gateway_equals_nomic_directly(
    gateway: Client, fake_nomic: FakeNomic, tmp_path: Path
) -> None:
    calls = [
        {"texts": ["the first text", "a second one."]},
        {"texts": ["what is a query?"], "task_type": "search_query"},
        {"texts": ["short", "and clustered"], "task_type": "clustering", "dimensionality": 256},
        {"texts": ["tiny vector"], "task_type": "classification", "dimensionality": 64,
         "model": "nomic-embed-text-v1.5"},
        {"texts": ["long mode"], "long_text_mode": "mean", "model": "nomic-embed-text-v1"},
    ]  # fmt: skip
    args = [orjson.dumps(calls).decode()]
    direct = await run_official_client(SCRIPT, fake_nomic.url, FAKE_API_KEY, tmp_path, args)  # type: ignore[attr-defined]
    upstream = len(fake_nomic.texts_received)
    base = str(gateway.make_url(""))
    key = gateway.session.headers["Authorization"].removeprefix("Bearer ")
    through = await run_official_client(SCRIPT, base, key, tmp_path, args)
    assert [call["embeddings"] for call in through] == [call["embeddings"] for call in direct]
    assert [call["usage"] for call in through] == [call["usage"] for call in direct]
    assert len(fake_nomic.texts_received) == 2 * upstream  # the gateway asked once for each
    again = await run_official_client(SCRIPT, base, key, tmp_path, args)
    assert [call["embeddings"] for call in again] == [call["embeddings"] for call in direct]
    assert len(fake_nomic.texts_received) == 2 * upstream  # a repeat sends nothing upstream


async def test_seven_known_and_three_new_texts_send_exactly_the_three(
    gateway: Client, fake_nomic: FakeNomic
) -> None:
    texts = [f"text number {n}" for n in range(10)]
    known = [texts[i] for i in (0, 2, 3, 5, 6, 8, 9)]
    assert (await post_texts(gateway, known)).status == 200
    fake_nomic.text_calls.clear()
    response = await post_texts(gateway, texts)
    assert response.status == 200
    assert fake_nomic.texts_received == [texts[1], texts[4], texts[7]]
    assert response.headers["X-Cache"] == "PARTIAL"
    body = await response.json()
    assert body["embeddings"] == [FakeNomic.text_embedding(text) for text in texts]
    assert body["model"] == "nomic-embed-text-v1"  # Nomic's default, not the client's
    tokens = sum(FakeNomic.text_tokens(text) for text in texts)
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}


async def test_every_option_that_changes_the_vector_is_in_the_key(
    gateway: Client, fake_nomic: FakeNomic
) -> None:
    variants = [{}, {"task_type": "search_query"}, {"model": "nomic-embed-text-v1.5"},
                {"model": "nomic-embed-text-v1.5", "dimensionality": 128},
                {"long_text_mode": "truncate"}, {"max_tokens_per_text": 3}]  # fmt: skip
    for fields in variants:
        response = await post_texts(gateway, ["same words, other settings"], **fields)
        assert response.status == 200, await response.text()
        assert response.headers["X-Cache"] == "MISS"
    assert len(fake_nomic.texts_received) == len(variants)
    bodies = [await (await post_texts(gateway, ["same words, other settings"], **f)).json()
              for f in variants]  # fmt: skip
    assert len({orjson.dumps(body["embeddings"]) for body in bodies}) == len(variants)
    assert len(fake_nomic.texts_received) == len(variants)  # all hits now


async def test_the_same_text_twice_or_in_concurrent_requests_goes_upstream_once(
    make_gateway: GatewayFactory, fake_nomic: FakeNomic, store_url: str | None
) -> None:
    first = await make_gateway()
    second = await make_gateway() if store_url else first  # replicas share a store
    fake_nomic.latency = 0.2
    texts = ["alpha", "beta", "alpha"]
    answers = await asyncio.gather(
        *(post_texts(client, texts) for client in (first, second, first, second))
    )
    assert [answer.status for answer in answers] == [200] * 4
    assert sorted(fake_nomic.texts_received) == ["alpha", "beta"]


async def test_an_item_nomic_refuses_is_named_at_its_position(
    gateway: Client, fake_nomic: FakeNomic
) -> None:
    too_many = await post_texts(gateway, ["x"] * 513)
    assert too_many.status == 422
    bad = await post_texts(gateway, ["fine", 3, "fine"])
    assert bad.status == 422
    assert (await bad.json())["detail"][0]["loc"] == ["body", "texts", 1]
    small = await post_texts(gateway, ["a"], model="nomic-embed-text-v1", dimensionality=256)
    assert small.status == 422
    assert (await small.json())["detail"][0]["loc"] == ["body", "dimensionality"]
    assert fake_nomic.text_calls == []


async def test_texts_share_calls_of_at_most_nomics_limit_and_tokens_by_their_length(
    make_gateway: GatewayFactory, fake_nomic: FakeNomic
) -> None:
    gateway = await make_gateway(upstream_linger_seconds=0.2)
    short, long = "one", "a much longer text, with many more words in it than the other"
    texts = [f"{short} {n}" for n in range(12)] + [f"{long} {n}" for n in range(12)]
    answers = await asyncio.gather(*(post_texts(gateway, [text]) for text in texts))
    assert all(answer.status == 200 for answer in answers)
    assert max(len(call.texts) for call in fake_nomic.text_calls) <= 10
    assert sorted(fake_nomic.texts_received) == sorted(texts)
    billed = [int(answer.headers["X-Billed-Tokens"]) for answer in answers]
    assert sum(billed) == sum(FakeNomic.text_tokens(text) for text in texts)  # to the token
    assert sum(billed[12:]) > 4 * sum(billed[:12])  # a longer text pays more
    again = await post_texts(gateway, [texts[-1]])
    assert again.headers["X-Cache"] == "HIT"
    hit = await again.json()
    assert hit["usage"]["total_tokens"] == billed[-1]  # a hit reports its stored share


async def test_usage_per_team_equals_what_nomic_billed(
    make_gateway: GatewayFactory, fake_nomic: FakeNomic
) -> None:
    gateway = await make_gateway()
    run = secrets.token_hex(4)  # the metrics registry is the test process's: new teams
    teams = {name: await team_headers(gateway, name) for name in (f"ink-{run}", f"quill-{run}")}
    texts = [f"a text of team work {n}" for n in range(30)]
    sent = [
        gateway.post("/v1/embedding/text", json={"texts": texts[n : n + 3]}, headers=headers)
        for n in range(0, 30, 3) for headers in teams.values()
    ]  # fmt: skip
    assert all(answer.status == 200 for answer in await asyncio.gather(*sent))
    assert len(fake_nomic.texts_received) == 30
    rows = (await admin_get(gateway, "/admin/usage"))["usage"]
    billed = sum(row["billed_tokens"] for row in rows if row["team"] in teams)
    assert billed == sum(FakeNomic.text_tokens(text) for text in texts)
    scraped = await (await gateway.get("/metrics")).text()
    in_metrics = sum(
        float(line.rpartition(" ")[2]) for line in scraped.splitlines()
        if line.startswith("gateway_billed_tokens_total{")
        and any(f'team="{team}"' in line for team in teams)
    )  # fmt: skip
    assert in_metrics == billed


async def test_nothing_else_of_nomics_is_passed_on(gateway: Client, fake_nomic: FakeNomic) -> None:
    paths = [("GET", "/v1/project"), ("POST", "/v1/project/create"),
             ("GET", "/v1/project/search/dataset"), ("POST", "/v1/embedding/other")]  # fmt: skip
    for method, path in paths:
        response = await gateway.request(method, path, json={})
        assert response.status == 404
        msg = (await response.json())["detail"][0]["msg"]
        assert "POST /v1/embedding/text" in msg
        assert "POST /v1/embedding/image" in msg
    assert fake_nomic.calls == []
    assert fake_nomic.text_calls == []


async def test_a_token_budget_holds_against_a_hundred_concurrent_requests(
    gateway: Client, fake_nomic: FakeNomic
) -> None:
    """Of 100 concurrent 4-token requests on a 40-token budget, the first to be admitted
    reserves its estimate, the others (while it is under way) the most they can cost (their
    characters, 15 or 16): what is admitted never passes the budget, and what is refused
    never reaches Nomic."""
    assert (await post_texts(gateway, ["teach the price here"])).status == 200  # 4 tokens
    capped = await team_headers(gateway, "capped", limits={"tokens_per_day": 10 * 4})
    fake_nomic.text_calls.clear()
    texts = [f"four tokens each {n}" for n in range(100)]
    responses = await asyncio.gather(*(
        gateway.post("/v1/embedding/text", json={"texts": [text]}, headers=capped)
        for text in texts
    ))  # fmt: skip
    statuses = Counter(response.status for response in responses)
    assert set(statuses) == {200, 429}
    assert statuses[200] >= 3
    assert len(fake_nomic.texts_received) == statuses[200]
    rows = (await admin_get(gateway, "/admin/usage?team=capped"))["usage"]
    billed = sum(map(FakeNomic.text_tokens, fake_nomic.texts_received))
    assert rows[0]["billed_tokens"] == billed == 4 * statuses[200] <= 40


async def test_concurrent_requests_of_rare_words_pass_a_budget_by_at_most_one_request(
    gateway: Client, fake_nomic: FakeNomic, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A text of rare words costs Nomic many times its estimate (here ten pieces a word).
    Sixty such requests at once on a 1,000-token budget were all admitted on their
    estimates and billed 6,000; now only one at a time runs on its estimate, the rest
    reserve what they can cost at most, and the budget is passed by at most one request."""
    assert (await post_texts(gateway, ["teach the price here"])).status == 200
    monkeypatch.setattr(FakeNomic, "text_tokens", staticmethod(rare_word_tokens))
    capped = await team_headers(gateway, "rare", limits={"tokens_per_day": 1000})
    texts = [" ".join(secrets.token_hex(10) for _ in range(10)) for _ in range(60)]
    each = rare_word_tokens(texts[0])  # 100 tokens, ten times the estimate's 10
    responses = await asyncio.gather(*(
        gateway.post("/v1/embedding/text", json={"texts": [text]}, headers=capped)
        for text in texts
    ))  # fmt: skip
    admitted = sum(response.status == 200 for response in responses)
    rows = (await admin_get(gateway, "/admin/usage?team=rare"))["usage"]
    assert rows[0]["billed_tokens"] == admitted * each <= 1000 + each
    refusals = [await r.json() for r in responses if r.status == 429]
    assert refusals
    assert all("tokens_per_day" in r["detail"][0]["msg"] for r in refusals)


async def test_the_official_clients_pattern_sends_each_text_once_in_full_calls_within_the_rate(
    make_gateway: GatewayFactory, fake_nomic: FakeNomic
) -> None:
    """1,000 requests of 10 texts from 10 clients at once (the official client's own pattern:
    10 texts a request, 10 threads) over 3,000 distinct texts."""
    rate = 100  # calls a second, so the test takes seconds; Nomic's own is 4
    gateway = await make_gateway(upstream_rate_calls=rate, upstream_rate_period_seconds=1,
                                 upstream_rate_burst=1)  # fmt: skip
    texts = [f"distinct text number {n}" for n in range(3000)]

    async def client(first: int) -> list[int]:
        statuses = []
        for request in range(first, 1000, 10):
            chunk = [texts[(request * 10 + j) * 7 % 3000] for j in range(10)]
            statuses.append((await post_texts(gateway, chunk)).status)
        return statuses

    statuses = [s for client_statuses in await asyncio.gather(*map(client, range(10)))
                for s in client_statuses]  # fmt: skip
    assert statuses == [200] * 1000
    assert sorted(fake_nomic.texts_received) == sorted(texts)  # each text once
    calls = fake_nomic.text_calls
    assert max(len(call.texts) for call in calls) <= 10  # Nomic's limit a call
    assert len(calls) <= 330  # 300 if every call were full
    assert ahead_of_rate([call.at for call in calls], 1 / rate) < 0.05  # 5 calls


async def test_a_small_gzipped_body_of_many_tiny_json_values_is_refused_unparsed(
    gateway: Client, fake_nomic: FakeNomic
) -> None:
    junk = b'{"texts": ["a"], "junk": [' + b"{}," * 3_000_000 + b"{}]}"  # 8.6 MiB, 300 MB parsed
    body = gzip.compress(junk)
    assert len(body) < 16 * 1024
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    response = await gateway.post("/v1/embedding/text", data=body, headers=headers)
    assert response.status == 422
    assert (await response.json())["detail"][0]["loc"] == ["body"]
    assert fake_nomic.text_calls == []


def rare_word_tokens(text: str, max_tokens_per_text: int | None = None) -> int:
    """As a WordPiece tokenizer splits words it does not know: a piece every two letters."""
    pieces = sum((len(word) + 1) // 2 for word in text.split())
    return min(pieces, max_tokens_per_text or MODEL_CONTEXT)


async def test_a_team_cannot_have_its_tokens_billed_to_another_team_in_the_same_call(
    make_gateway: GatewayFactory, fake_nomic: FakeNomic, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call's tokens are shared over its texts by an estimate (their words), which a text
    of rare words beats: 400 twenty-letter words are 400 to the estimate and 4,000 tokens to
    Nomic. So texts of different teams never share a call: a victim's texts, sent while an
    attacker's wait in the same lane's linger, are billed exactly what they cost alone, and
    their entries keep that for later hits."""
    monkeypatch.setattr(FakeNomic, "text_tokens", staticmethod(rare_word_tokens))
    gateway = await make_gateway(upstream_linger_seconds=0.3)
    attacker = await team_headers(gateway, "attacker")
    victim = await team_headers(gateway, "victim")
    fake_nomic.latency = 0.5
    busy = asyncio.create_task(post_texts(gateway, ["busy"]))
    await asyncio.sleep(0.1)  # a call of the lane in flight: the next misses linger together
    rare = " ".join(secrets.token_hex(10) for _ in range(40))
    mine = [f"a cat on mat number {n}" for n in range(9)]
    answers = await asyncio.gather(
        gateway.post("/v1/embedding/text", json={"texts": [rare]}, headers=attacker),
        gateway.post("/v1/embedding/text", json={"texts": mine}, headers=victim),
    )
    assert (await busy).status == 200
    assert [answer.status for answer in answers] == [200, 200]
    calls = [set(call.texts) for call in fake_nomic.text_calls if call.status == 200]
    assert all(not (texts & set(mine)) or texts <= set(mine) for texts in calls)
    billed = [int(answer.headers["X-Billed-Tokens"]) for answer in answers]
    assert billed == [rare_word_tokens(rare), sum(map(rare_word_tokens, mine))]
    again = await gateway.post("/v1/embedding/text", json={"texts": mine}, headers=victim)
    assert (orjson.loads(await again.read()))["usage"]["total_tokens"] == billed[1]


async def test_one_teams_long_text_does_not_shrink_another_teams_token_budget(
    gateway: Client, fake_nomic: FakeNomic
) -> None:
    """A text's misses reserve what the text itself can cost, not the most any recent text
    of the model cost: another team's 9,000-word text, and a team with 1,000 tokens a day
    still gets 20 short texts (whose 360 characters bound their cost), and its budget holds."""
    other = await team_headers(gateway, "other")
    long = await post_texts(gateway, ["w " * 9000], headers=other)
    assert long.status == 200
    budget = await team_headers(gateway, "budget", limits={"tokens_per_day": 1000})
    texts = [f"a short text number {n:02d}" for n in range(20)]  # 18 characters and 5 words
    answer = await gateway.post("/v1/embedding/text", json={"texts": texts}, headers=budget)
    assert answer.status == 200, await answer.text()
    assert int(answer.headers["X-Billed-Tokens"]) == 100
    usage = (await admin_get(gateway, "/admin/usage?team=budget"))["usage"]
    assert usage[0]["billed_tokens"] == 100


async def test_a_large_text_request_is_parsed_and_costed_off_the_event_loop_once_a_text(
    gateway: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch of long documents is parsed, digested and costed in the heavy-work thread (on
    the event loop it held every other team's hits for seconds), each text once, however
    many phases of the request need its cost; a small request stays on the loop."""
    seen: list[str] = []
    original = Spec.cost

    def recorded(spec: Spec, content: bytes) -> Cost:
        seen.append(threading.current_thread().name)
        return original(spec, content)

    monkeypatch.setattr(Spec, "cost", recorded)
    long = [f"{n} " + "word " * 20_000 for n in range(4)]  # 400 KB in all
    assert (await post_texts(gateway, long)).status == 200
    assert len(seen) == 4
    assert all(name.startswith("heavy-work") for name in seen), seen
    seen.clear()
    assert (await post_texts(gateway, ["a short text", "and another"])).status == 200
    assert seen == [threading.main_thread().name] * 2
