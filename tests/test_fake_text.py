"""The fake Nomic's text route keeps to Nomic's (its schema's defaults, its 422s, the official
client driving it), so tests of the gateway can trust what it answers and counts."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from fake_nomic import FAKE_API_KEY, TEXT_MODELS, FakeNomic, png
from tests.helpers import run_official_client

AUTH = {"Authorization": f"Bearer {FAKE_API_KEY}"}


async def post_text(
    fake: FakeNomic,
    body: object,
    *,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, Any]:
    """The fake's status, JSON answer and headers for ``body`` (sent as JSON) or ``raw``."""
    data = raw if raw is not None else json.dumps(body).encode()
    sent = {**AUTH, "Content-Type": "application/json", **(headers or {})}
    async with aiohttp.ClientSession() as session:
        url = fake.url + "/v1/embedding/text"  # type: ignore[attr-defined]
        async with session.post(url, data=data, headers=sent) as response:
            return response.status, await response.json(content_type=None), response.headers


async def refused(fake: FakeNomic, body: object, **kwargs: Any) -> list[dict[str, Any]]:
    status, answer, _ = await post_text(fake, body, **kwargs)
    assert status == 422, answer
    detail: list[dict[str, Any]] = answer["detail"]
    assert all(set(entry) == {"loc", "msg", "type"} for entry in detail)
    return detail


async def test_omitted_fields_take_the_apis_defaults(fake_nomic: FakeNomic) -> None:
    texts = ["Nomic Embedding API", "#keepAIOpen"]
    status, answer, _ = await post_text(fake_nomic, {"texts": texts})
    assert status == 200
    assert answer["model"] == "nomic-embed-text-v1"
    assert answer["embeddings"] == [FakeNomic.text_embedding(text) for text in texts]
    assert all(len(vector) == 768 for vector in answer["embeddings"])
    assert answer["usage"] == {"prompt_tokens": 3 + 2, "total_tokens": 5}
    call = fake_nomic.text_calls[0]
    assert (call.model, call.task_type, call.long_text_mode) == (
        "nomic-embed-text-v1", "search_document", "mean",
    )  # fmt: skip
    assert (call.dimensionality, call.max_tokens_per_text, call.status) == (None, None, 200)


async def test_a_matryoshka_size_answers_that_many_floats(fake_nomic: FakeNomic) -> None:
    body = {"texts": ["a", "b"], "model": "nomic-embed-text-v1.5", "dimensionality": 256}
    status, answer, _ = await post_text(fake_nomic, body)
    assert status == 200
    assert [len(vector) for vector in answer["embeddings"]] == [256, 256]
    assert answer["model"] == "nomic-embed-text-v1.5"


def test_every_field_that_changes_nomics_answer_changes_the_vector() -> None:
    base: dict[str, Any] = {"text": "x", "model": "nomic-embed-text-v1.5"}
    variants = [
        {},
        {"text": "y"},
        {"model": "nomic-embed-text-v1"},
        {"task_type": "search_query"},
        {"dimensionality": 512},
        {"long_text_mode": "truncate"},
        {"max_tokens_per_text": 100},
    ]
    vectors = [FakeNomic.text_embedding(**(base | change)) for change in variants]
    assert len({tuple(vector[:64]) for vector in vectors}) == len(variants)


def test_an_omitted_value_and_nomics_default_give_the_same_vector() -> None:
    default = FakeNomic.text_embedding("x", "nomic-embed-text-v1.5")
    assert FakeNomic.text_embedding("x", "nomic-embed-text-v1.5", task_type=None) == default
    assert FakeNomic.text_embedding("x", "nomic-embed-text-v1.5", dimensionality=768) == default
    assert FakeNomic.text_embedding("x", "nomic-embed-text-v1.5", max_tokens_per_text=8192) == (
        default
    )


@pytest.mark.parametrize(
    ("text", "cap", "tokens"),
    [
        ("The quick brown fox jumps over the lazy dog.", None, 10),
        ("Hello, world!", None, 4),
        ("", None, 0),
        ("one two three four", 3, 3),
        ("word " * 9000, None, 8192),
    ],
)
def test_tokens_are_words_and_marks_up_to_the_cap(text: str, cap: int | None, tokens: int) -> None:
    assert FakeNomic.text_tokens(text, cap) == tokens


async def test_usage_sums_the_capped_counts(fake_nomic: FakeNomic) -> None:
    body = {"texts": ["a b c d", "e"], "long_text_mode": "truncate", "max_tokens_per_text": 2}
    status, answer, _ = await post_text(fake_nomic, body)
    assert status == 200
    assert answer["usage"] == {"prompt_tokens": 3, "total_tokens": 3}


async def test_the_official_clients_body_with_nulls_is_accepted(fake_nomic: FakeNomic) -> None:
    body = {"texts": ["q"], "model": "nomic-embed-text-v1.5", "task_type": None,
            "dimensionality": None, "long_text_mode": "truncate"}  # fmt: skip
    status, answer, _ = await post_text(fake_nomic, body)
    assert status == 200
    assert answer["embeddings"] == [
        FakeNomic.text_embedding("q", "nomic-embed-text-v1.5", long_text_mode="truncate")
    ]


async def test_unknown_fields_are_ignored_and_integral_floats_are_integers(
    fake_nomic: FakeNomic,
) -> None:
    body = {"texts": ["q"], "model": "nomic-embed-text-v1.5", "dimensionality": 128.0, "x": [1]}
    status, answer, _ = await post_text(fake_nomic, body)
    assert status == 200
    assert len(answer["embeddings"][0]) == 128
    assert fake_nomic.text_calls[0].dimensionality == 128


async def test_no_texts_are_refused_as_nomics_schema_requires_one(fake_nomic: FakeNomic) -> None:
    status, answer, _ = await post_text(fake_nomic, {"texts": []})
    assert status == 422
    assert [error["loc"] for error in answer["detail"]] == [["body", "texts"]]


@pytest.mark.parametrize(
    ("body", "loc", "kind"),
    [
        ({"texts": ["a", "b", "c", 4]}, ["body", "texts", 3], "string_type"),
        ({}, ["body", "texts"], "missing"),
        ({"texts": "one text"}, ["body", "texts"], "list_type"),
        ({"texts": ["a"], "model": "nomic-embed-vision-v1.5"}, ["body", "model"], "enum"),
        ({"texts": ["a"], "model": None}, ["body", "model"], "enum"),
        ({"texts": ["a"], "task_type": 3}, ["body", "task_type"], "string_type"),
        ({"texts": ["a"], "task_type": "retrieval"}, ["body", "task_type"], "value_error"),
        ({"texts": ["a"], "long_text_mode": "first"}, ["body", "long_text_mode"], "enum"),
        ({"texts": ["a"], "max_tokens_per_text": None}, ["body", "max_tokens_per_text"],
         "int_type"),
        ({"texts": ["a"], "max_tokens_per_text": 0}, ["body", "max_tokens_per_text"],
         "greater_than_equal"),
        ({"texts": ["a"], "dimensionality": "256"}, ["body", "dimensionality"], "int_type"),
        ({"texts": ["a"], "dimensionality": 256}, ["body", "dimensionality"], "value_error"),
        ({"texts": ["a"], "model": "nomic-embed-text-v1.5", "dimensionality": 32},
         ["body", "dimensionality"], "value_error"),
        ({"texts": ["a"], "model": "nomic-embed-text-v1.5", "dimensionality": 769},
         ["body", "dimensionality"], "value_error"),
        ({"texts": ["a"] * 11}, ["body", "texts"], "too_long"),
        (["a"], ["body"], "model_attributes_type"),
    ],
)  # fmt: skip
async def test_refusals_are_nomic_shaped_and_name_the_input(
    fake_nomic: FakeNomic, body: object, loc: list[object], kind: str
) -> None:
    detail = await refused(fake_nomic, body)
    assert (detail[0]["loc"], detail[0]["type"]) == (loc, kind)
    assert fake_nomic.text_calls[-1].status == 422


async def test_every_type_error_is_listed_at_once(fake_nomic: FakeNomic) -> None:
    detail = await refused(fake_nomic, {"texts": [1, "b", None], "long_text_mode": 2})
    assert [entry["loc"] for entry in detail] == [
        ["body", "texts", 0], ["body", "texts", 2], ["body", "long_text_mode"],
    ]  # fmt: skip


@pytest.mark.parametrize("model", sorted(TEXT_MODELS))
async def test_each_text_model_answers_in_its_sizes(fake_nomic: FakeNomic, model: str) -> None:
    known = TEXT_MODELS[model]
    status, answer, _ = await post_text(fake_nomic, {"texts": ["q"], "model": model})
    assert (status, answer["model"]) == (200, model)
    assert len(answer["embeddings"][0]) == known.dimensions
    body = {"texts": ["q"], "model": model, "dimensionality": known.smallest}
    status, answer, _ = await post_text(fake_nomic, body)
    assert (status, len(answer["embeddings"][0])) == (200, known.smallest)
    detail = await refused(fake_nomic, {**body, "dimensionality": known.smallest - 1})
    assert detail[0]["loc"] == ["body", "dimensionality"]


async def test_truncate_mode_bills_at_most_the_models_context(fake_nomic: FakeNomic) -> None:
    text = "word " * 300
    for model, tokens in [("all-MiniLM-L6-v2", 256), ("nomic-embed-text-v1.5", 300)]:
        body = {"texts": [text], "model": model, "long_text_mode": "truncate"}
        status, answer, _ = await post_text(fake_nomic, body)
        assert (status, answer["usage"]["total_tokens"]) == (200, tokens)


async def test_an_unknown_model_is_a_422_listing_those_it_takes(fake_nomic: FakeNomic) -> None:
    detail = await refused(fake_nomic, {"texts": ["q"], "model": "nomic-embed-text-v3"})
    assert (detail[0]["loc"], detail[0]["type"]) == (["body", "model"], "enum")
    assert all(repr(model) in detail[0]["msg"] for model in TEXT_MODELS)


async def test_v1_takes_its_full_size_as_dimensionality(fake_nomic: FakeNomic) -> None:
    status, answer, _ = await post_text(fake_nomic, {"texts": ["a"], "dimensionality": 768})
    assert status == 200
    assert len(answer["embeddings"][0]) == 768


@pytest.mark.parametrize(
    ("raw", "content_type", "loc", "kind"),
    [
        (b'{"texts": [', "application/json", ["body", 11], "json_invalid"),
        (b'{"texts": ["\xff"]}', "application/json", ["body", 0], "json_invalid"),
        (b"", "application/json", ["body"], "missing"),
        (b'{"texts": ["a"]}', "text/plain", ["body"], "model_attributes_type"),
    ],
)
async def test_bodies_that_are_not_a_json_object(
    fake_nomic: FakeNomic, raw: bytes, content_type: str, loc: list[object], kind: str
) -> None:
    detail = await refused(fake_nomic, None, raw=raw, headers={"Content-Type": content_type})
    assert (detail[0]["loc"], detail[0]["type"]) == (loc, kind)


async def test_json_with_a_suffix_content_type_is_read(fake_nomic: FakeNomic) -> None:
    headers = {"Content-Type": "application/vnd.api+json; charset=utf-8"}
    status, _, _ = await post_text(fake_nomic, {"texts": ["a"]}, headers=headers)
    assert status == 200


async def test_a_wrong_key_is_401(fake_nomic: FakeNomic) -> None:
    status, _, _ = await post_text(fake_nomic, {"texts": ["a"]},
                                   headers={"Authorization": "Bearer nk-wrong"})  # fmt: skip
    assert status == 401
    assert fake_nomic.text_calls[0].status == 401
    assert fake_nomic.texts_received == []


async def test_injected_faults_and_retry_after(fake_nomic: FakeNomic) -> None:
    fake_nomic.fail_next = [429, 503]
    fake_nomic.retry_after = 2
    for expected in (429, 503):
        status, _, headers = await post_text(fake_nomic, {"texts": ["a"]})
        assert (status, headers["Retry-After"]) == (expected, "2")
    status, _, _ = await post_text(fake_nomic, {"texts": ["a"]})
    assert status == 200
    assert [call.status for call in fake_nomic.text_calls] == [429, 503, 200]
    assert fake_nomic.texts_received == ["a"]  # a refused call's body is never read


async def test_a_dropped_connection(fake_nomic: FakeNomic) -> None:
    fake_nomic.fail_next = ["drop"]
    with pytest.raises(aiohttp.ClientError):
        await post_text(fake_nomic, {"texts": ["a"]})


async def test_fail_when_counts_the_calls_of_both_routes(fake_nomic: FakeNomic) -> None:
    seen: list[int] = []
    fake_nomic.fail_when = lambda n: seen.append(n) or (500 if n == 1 else None)
    async with aiohttp.ClientSession() as session:
        form = aiohttp.FormData()
        form.add_field("images", png(1), filename="a.png")
        url = fake_nomic.url + "/v1/embedding/image"  # type: ignore[attr-defined]
        async with session.post(url, data=form, headers=AUTH) as response:
            assert response.status == 200
    status, _, _ = await post_text(fake_nomic, {"texts": ["a"]})
    assert (status, seen) == (500, [0, 1])


async def test_latency_delays_the_answer(fake_nomic: FakeNomic) -> None:
    fake_nomic.latency = 0.05
    status, _, _ = await post_text(fake_nomic, {"texts": ["a"]})
    assert status == 200  # the delay itself is not timed: tests assert no durations


async def test_hold_keeps_answers_until_release(fake_nomic: FakeNomic) -> None:
    fake_nomic.hold()
    answer = asyncio.create_task(post_text(fake_nomic, {"texts": ["a"]}))
    while not fake_nomic.texts_received:
        await asyncio.sleep(0.01)
    assert (answer.done(), fake_nomic.text_calls[0].status) == (False, 0)
    fake_nomic.release()
    assert (await answer)[0] == 200


async def test_stats_count_answered_texts(fake_nomic: FakeNomic) -> None:
    await post_text(fake_nomic, {"texts": ["a", "b"]})
    await post_text(fake_nomic, {"texts": ["c", 4]})
    stats_url = fake_nomic.url + "/_fake/stats"  # type: ignore[attr-defined]
    async with aiohttp.ClientSession() as session, session.get(stats_url) as response:
        stats = await response.json()
    assert (stats["text_calls"], stats["answered_text_calls"], stats["answered_texts"]) == (2, 1, 2)
    assert stats["calls"] == 0
    assert fake_nomic.texts_received == ["a", "b", "c"]


EMBED_TEXTS = """
import json, sys
from nomic import embed
texts = json.loads(sys.argv[1])
print(json.dumps(embed.text(texts, model="nomic-embed-text-v1.5", dimensionality=256)))
"""


@pytest.mark.slow
async def test_the_official_client_embeds_through_the_fake(
    fake_nomic: FakeNomic, tmp_path: Path
) -> None:
    texts = [f"text number {i}." for i in range(25)]
    answer = await run_official_client(
        EMBED_TEXTS,
        fake_nomic.url,
        FAKE_API_KEY,
        tmp_path,
        [json.dumps(texts)],  # type: ignore[attr-defined]
    )
    expected = [
        FakeNomic.text_embedding(text, "nomic-embed-text-v1.5", "search_document", 256, "truncate")
        for text in texts
    ]
    assert answer["embeddings"] == expected
    tokens = sum(FakeNomic.text_tokens(text) for text in texts)
    assert answer["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    assert sorted(fake_nomic.texts_received) == sorted(texts)  # each text reached it once
    assert all(call.status == 200 and len(call.texts) <= 10 for call in fake_nomic.text_calls)
