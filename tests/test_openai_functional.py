"""``POST /v1/embeddings`` and ``GET /v1/models`` driven by the real OpenAI SDK (and
LangChain's OpenAI embedding class), beside the official ``nomic`` client, on every store."""

from __future__ import annotations

import asyncio
import base64
import os
import struct
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from aiohttp.test_utils import TestClient
from langchain_openai import OpenAIEmbeddings

from fake_nomic import FakeNomic
from tests.conftest import GatewayFactory, admin_get, make_team
from tests.helpers import run_official_client

Client = TestClient[Any, Any]
MODEL = "nomic-embed-text-v1.5"
CLIENT_SCRIPT = """
import json, sys
from nomic import embed
print(json.dumps(embed.text(texts=json.loads(sys.argv[1]), model=sys.argv[2])["embeddings"]))
"""


def nomic_vector(text: str, model: str = MODEL, **options: Any) -> list[float]:
    """What Nomic (the fake) answers for ``text`` sent as the official client sends it."""
    return FakeNomic.text_embedding(text, model, long_text_mode="truncate", **options)


def float32s(encoded: str) -> list[float]:
    """OpenAI's base64 encoding read back: little-endian float32s."""
    raw = base64.b64decode(encoded)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def base_url(gateway: Client) -> str:
    return str(gateway.server.make_url("/v1"))


@pytest.fixture
async def sdk(gateway: Client) -> AsyncIterator[openai.AsyncOpenAI]:
    """The OpenAI SDK pointed at the gateway with the test team's key, never retrying."""
    client = openai.AsyncOpenAI(
        base_url=base_url(gateway),
        api_key=gateway.team_key,
        max_retries=0,  # type: ignore[attr-defined]
    )
    yield client
    await client.close()


async def sdk_for(gateway: Client, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base_url(gateway), api_key=key, max_retries=0)


@pytest.mark.parametrize("encoding", ["float", "base64", None])
async def test_vectors_are_nomics_in_input_order_in_either_encoding(
    sdk: openai.AsyncOpenAI, fake_nomic: FakeNomic, encoding: str | None
) -> None:
    """The SDK asks for base64 unless told otherwise, and decodes it itself (asked for
    base64, it hands the strings over): either way exactly Nomic's floats, in the input's
    order, a repeated input as often as sent."""
    texts = ["the first", "a second", "the first", "and a third"]
    options = {} if encoding is None else {"encoding_format": encoding}
    response = await sdk.embeddings.create(model=MODEL, input=texts, **options)
    assert [item.index for item in response.data] == [0, 1, 2, 3]
    vectors = [item.embedding for item in response.data]
    if encoding == "base64":
        vectors = [float32s(vector) for vector in vectors]  # type: ignore[arg-type]
    assert vectors == [nomic_vector(t) for t in texts]
    assert response.model == MODEL
    assert response.usage.prompt_tokens == sum(FakeNomic.text_tokens(t) for t in texts)
    assert fake_nomic.texts_received == ["the first", "a second", "and a third"]


async def test_base64_on_the_wire_is_little_endian_float32(gateway: Client) -> None:
    response = await gateway.post(
        "/v1/embeddings", json={"model": MODEL, "input": "plain", "encoding_format": "base64"}
    )
    assert response.status == 200
    (item,) = (await response.json())["data"]
    assert float32s(item["embedding"]) == nomic_vector("plain")


async def test_a_string_input_dimensions_and_nomic_options_as_extra_body(
    sdk: openai.AsyncOpenAI,
) -> None:
    one = await sdk.embeddings.create(model=MODEL, input="alone", dimensions=256)
    assert one.data[0].embedding == nomic_vector("alone", dimensionality=256)
    query = await sdk.embeddings.create(
        model=MODEL, input="alone", extra_body={"task_type": "search_query"}
    )
    assert query.data[0].embedding == nomic_vector("alone", task_type="search_query")
    mean = await sdk.embeddings.create(
        model=MODEL,
        input="alone",
        extra_body={"long_text_mode": "mean", "max_tokens_per_text": 100},
    )
    expected = FakeNomic.text_embedding("alone", MODEL, long_text_mode="mean",
                                        max_tokens_per_text=100)  # fmt: skip
    assert mean.data[0].embedding == expected


async def test_one_cache_entry_for_either_api_and_the_official_client(
    gateway: Client, sdk: openai.AsyncOpenAI, fake_nomic: FakeNomic, tmp_path: Path
) -> None:
    """A text the official client embedded is a HIT through OpenAI's shape, and one the
    OpenAI SDK embedded is a HIT for the official client: neither goes to Nomic again."""
    url = str(gateway.server.make_url("")).rstrip("/")
    key = gateway.team_key  # type: ignore[attr-defined]
    first = await run_official_client(
        CLIENT_SCRIPT, url, key, tmp_path, [orjson.dumps(["shared one"]).decode(), MODEL]
    )
    assert fake_nomic.texts_received == ["shared one"]
    raw = await sdk.embeddings.with_raw_response.create(model=MODEL, input=["shared one", "new"])
    assert raw.headers["X-Cache"] == "PARTIAL"
    assert (raw.headers["X-Cache-Hits"], raw.headers["X-Cache-Misses"]) == ("1", "1")
    assert raw.parse().data[0].embedding == first[0]
    again = await run_official_client(
        CLIENT_SCRIPT, url, key, tmp_path, [orjson.dumps(["new", "shared one"]).decode(), MODEL]
    )
    assert again == [nomic_vector("new"), first[0]]
    assert fake_nomic.texts_received == ["shared one", "new"]


async def test_usage_and_per_minute_limits_are_the_teams(
    make_gateway: GatewayFactory, fake_nomic: FakeNomic
) -> None:
    """The texts and tokens of either API are the team's usage; its texts_per_minute counts
    both, and the SDK raises RateLimitError with the Retry-After; nothing refused reaches
    Nomic."""
    gateway = await make_gateway()
    key = await make_team(gateway.session, gateway.base, "capped",  # type: ignore[attr-defined]
                          limits={"texts_per_minute": 3})  # fmt: skip
    auth = {"Authorization": f"Bearer {key}"}
    nomic = await gateway.post("/v1/embedding/text", json={"texts": ["n1", "n2"]}, headers=auth)
    assert nomic.status == 200
    client = await sdk_for(gateway, key)
    try:
        await client.embeddings.create(model=MODEL, input="o1")
        received = len(fake_nomic.texts_received)
        with pytest.raises(openai.RateLimitError) as refused:
            await client.embeddings.create(model=MODEL, input=["o2"])
    finally:
        await client.close()
    assert int(refused.value.response.headers["Retry-After"]) >= 1
    error = refused.value.body
    assert isinstance(error, dict)
    assert error["code"] == "rate_limit_exceeded"
    assert len(fake_nomic.texts_received) == received
    usage = await gateway.get("/v1/usage", headers=auth)
    (today,) = (await usage.json())["usage"]
    assert today["texts"] == 3
    tokens = sum(FakeNomic.text_tokens(t) for t in ("n1", "n2", "o1"))
    assert today["billed_tokens"] == tokens


async def test_a_spent_token_budget_is_insufficient_quota(
    make_gateway: GatewayFactory, fake_nomic: FakeNomic
) -> None:
    gateway = await make_gateway()
    key = await make_team(gateway.session, gateway.base, "broke",  # type: ignore[attr-defined]
                          limits={"tokens_per_day": 1})  # fmt: skip
    client = await sdk_for(gateway, key)
    try:
        with pytest.raises(openai.RateLimitError) as refused:
            await client.embeddings.create(model=MODEL, input="more words than the budget")
    finally:
        await client.close()
    error = refused.value.body
    assert isinstance(error, dict)
    assert error["type"] == "insufficient_quota"
    assert "tokens_per_day" in error["message"]
    assert fake_nomic.text_calls == []


async def test_refusals_are_openai_errors_the_sdk_raises_and_reach_no_one(
    gateway: Client, sdk: openai.AsyncOpenAI, fake_nomic: FakeNomic
) -> None:
    stranger = await sdk_for(gateway, "nk-" + "A" * 43)
    try:
        with pytest.raises(openai.AuthenticationError) as unauthorized:
            await stranger.embeddings.create(model=MODEL, input="x")
    finally:
        await stranger.close()
    assert unauthorized.value.code == "invalid_api_key"
    with pytest.raises(openai.NotFoundError) as unknown:
        await sdk.embeddings.create(model="text-embedding-3-small", input="x")
    assert unknown.value.code == "model_not_found"
    assert MODEL in unknown.value.message
    cases: list[tuple[dict[str, Any], str | None, str]] = [
        ({"input": [[1, 2, 3]]}, "input[0]", "token ids"),
        ({"input": [101, 2023]}, "input[0]", "token ids"),
        ({"input": ["ok", 7]}, "input[1]", "token ids"),
        ({"input": []}, "input", "empty"),
        ({"input": "x", "dimensions": 10}, "dimensions", "64 to 768"),
        ({"input": "x", "encoding_format": "int8"}, "encoding_format", "'float' or 'base64'"),
        ({"input": "x", "extra_body": {"task_type": "poetry"}}, "task_type", "poetry"),
        ({"input": "x", "extra_body": {"temperature": 1}}, "temperature", "Unrecognized"),
    ]
    for fields, param, words in cases:
        extra = fields.pop("extra_body", None)
        with pytest.raises(openai.BadRequestError) as bad:
            await sdk.embeddings.create(model=MODEL, extra_body=extra, **fields)
        assert bad.value.param == param, fields
        assert words in bad.value.message, bad.value.message
        assert bad.value.type == "invalid_request_error"
    assert fake_nomic.text_calls == []


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        (b'{"input": "x"}', "model", "model"),
        (b'{"model": "nomic-embed-text-v1.5"}', "input", "input"),
        (b'{"model": "nomic-embed-text-v1.5", "input": "x"', None, "JSON"),
        (b"[1]", None, "object"),
    ],
)
async def test_malformed_bodies_are_400s_in_openai_shape(
    gateway: Client, body: bytes, param: str | None, words: str
) -> None:
    response = await gateway.post(
        "/v1/embeddings", data=body, headers={"Content-Type": "application/json"}
    )
    assert response.status == 400
    error = (await response.json())["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["param"], error["type"]) == (param, "invalid_request_error")
    assert words in error["message"]


async def test_a_query_parameter_is_refused_not_dropped(
    gateway: Client, fake_nomic: FakeNomic
) -> None:
    response = await gateway.post(
        "/v1/embeddings?dimensions=64", json={"model": MODEL, "input": "x"}
    )
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["param"] == "dimensions"
    assert "takes none" in error["message"]
    assert fake_nomic.text_calls == []


async def test_method_and_size_refusals_are_openai_shaped_too(gateway: Client) -> None:
    wrong_method = await gateway.get("/v1/embeddings")
    assert wrong_method.status == 405
    assert "error" in await wrong_method.json()
    too_large = await gateway.post(
        "/v1/embeddings",
        data=b" " * 64,
        headers={"Content-Type": "application/json", "Content-Length": str(2**40)},
    )
    assert too_large.status == 413
    assert (await too_large.json())["error"]["type"] == "invalid_request_error"


async def test_models_are_listed_and_retrieved(sdk: openai.AsyncOpenAI) -> None:
    listed = [model.id for model in (await sdk.models.list()).data]
    assert MODEL in listed
    assert "nomic-embed-text-v1" in listed
    assert not any("vision" in name for name in listed)  # /v1/embeddings takes texts only
    assert (await sdk.models.retrieve(MODEL)).id == MODEL
    with pytest.raises(openai.NotFoundError):
        await sdk.models.retrieve("text-embedding-ada-002")


async def test_models_need_a_team_key(gateway: Client) -> None:
    response = await gateway.get("/v1/models", headers={"Authorization": "Bearer nope"})
    assert response.status == 401
    assert (await response.json())["error"]["code"] == "invalid_api_key"


async def test_an_alias_the_operator_sets_is_the_model_it_names(
    make_gateway: GatewayFactory, fake_nomic: FakeNomic
) -> None:
    gateway = await make_gateway(model_aliases=(("text-embedding-3-small", MODEL),))
    client = await sdk_for(gateway, gateway.team_key)
    try:
        aliased = await client.embeddings.create(model="text-embedding-3-small", input="same")
        direct = await client.embeddings.with_raw_response.create(model=MODEL, input="same")
        listed = [model.id for model in (await client.models.list()).data]
    finally:
        await client.close()
    assert aliased.model == MODEL  # the answer names the model that embedded it
    assert aliased.data[0].embedding == nomic_vector("same")
    assert direct.headers["X-Cache"] == "HIT"
    assert "text-embedding-3-small" in listed
    assert fake_nomic.texts_received == ["same"]


async def test_langchains_openai_embeddings_as_the_readme_shows(
    gateway: Client, fake_nomic: FakeNomic
) -> None:
    """LangChain's class tokenizes for OpenAI's models unless told not to
    (``check_embedding_ctx_length=False``): then it sends the texts, as the README says."""
    connections = httpx.AsyncClient()  # LangChain never closes the client it would make
    embeddings = OpenAIEmbeddings(
        model=MODEL,
        base_url=base_url(gateway),
        api_key=gateway.team_key,  # type: ignore[attr-defined]
        check_embedding_ctx_length=False,
        max_retries=0,
        http_async_client=connections,
    )
    try:
        documents = await embeddings.aembed_documents(["a page", "another page"])
        query = await embeddings.aembed_query("a page")
    finally:
        await connections.aclose()
    assert documents == [nomic_vector("a page"), nomic_vector("another page")]
    assert query == documents[0]
    assert fake_nomic.texts_received == ["a page", "another page"]


async def test_the_team_usage_row_counts_openai_requests(
    gateway: Client, sdk: openai.AsyncOpenAI
) -> None:
    await sdk.embeddings.create(model=MODEL, input=["u1", "u2"])
    await sdk.embeddings.create(model=MODEL, input=["u1"])
    rows = (await admin_get(gateway, "/admin/usage?team=test"))["usage"]
    total = {field: sum(row[field] for row in rows) for field in ("texts", "hits")}
    assert total == {"texts": 3, "hits": 1}


async def test_nomics_newer_models_pass_through_with_their_own_sizes(
    sdk: openai.AsyncOpenAI, fake_nomic: FakeNomic
) -> None:
    small = await sdk.embeddings.create(model="all-MiniLM-L6-v2", input="mini")
    assert small.data[0].embedding == nomic_vector("mini", "all-MiniLM-L6-v2")
    assert len(small.data[0].embedding) == 384
    v2 = await sdk.embeddings.create(model="nomic-embed-text-v2", input="v2", dimensions=256)
    assert v2.data[0].embedding == nomic_vector("v2", "nomic-embed-text-v2", dimensionality=256)
    with pytest.raises(openai.BadRequestError) as too_small:
        await sdk.embeddings.create(model="nomic-embed-text-v2", input="v2", dimensions=128)
    assert too_small.value.param == "dimensions"
    assert [call.model for call in fake_nomic.text_calls] == [
        "all-MiniLM-L6-v2", "nomic-embed-text-v2"
    ]  # fmt: skip


async def test_nomic_failing_is_a_server_error_the_sdk_raises(
    sdk: openai.AsyncOpenAI, fake_nomic: FakeNomic
) -> None:
    fake_nomic.fail_next.append(500)
    with pytest.raises(openai.InternalServerError) as failed:
        await sdk.embeddings.create(model=MODEL, input="unlucky")
    assert failed.value.status_code == 502
    error = failed.value.body
    assert isinstance(error, dict)
    assert error["type"] == "server_error"
    assert (
        await sdk.embeddings.create(model=MODEL, input="unlucky")
    ).data  # not cached: asks again


def readme_snippets() -> list[str]:
    """The README's Python examples of the OpenAI SDK and LangChain."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    blocks = readme.split("```python\n")[1:]
    return [block.split("```", 1)[0] for block in blocks if "/v1" in block]


async def test_the_readmes_openai_examples_run_as_written(
    gateway: Client, fake_nomic: FakeNomic
) -> None:
    snippets = readme_snippets()
    assert len(snippets) == 2
    url = base_url(gateway)
    env = {**os.environ, "TEAM_KEY": gateway.team_key}  # type: ignore[attr-defined]
    printed = []
    for snippet in snippets:
        code = snippet.replace("http://127.0.0.1:8080/v1", url)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        stdout, stderr = await asyncio.wait_for(process.communicate(), 120)
        assert process.returncode == 0, stderr.decode()[-2000:]
        printed.append(stdout.decode().split())
    tokens = sum(FakeNomic.text_tokens(text) for text in ("a cat", "a dog"))
    assert printed == [["256", str(tokens)], []]  # the SDK's example prints; LangChain's not
    assert set(fake_nomic.texts_received) == {"a cat", "a dog", "a page", "another page"}
