"""Nomic's models through the gateway, against the fake Nomic: each default model passes
through in its sizes, an unknown one (or a size it does not answer in) is refused before
Nomic naming what is served, and a model the operator adds is served like Nomic's own."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from fake_nomic import FakeNomic, TextModel, png
from gateway.model_table import DEFAULT_MODELS, extended_by_json
from tests.conftest import GatewayFactory
from tests.helpers import post_images

Client = TestClient[Any, Any]


async def post_texts(client: Client, texts: list[str], **fields: Any) -> Any:
    return await client.post("/v1/embedding/text", json={"texts": texts, **fields})


@pytest.mark.parametrize("model", DEFAULT_MODELS.names("text"))
async def test_every_text_model_of_nomics_passes_through_in_its_full_size(
    gateway: Client, fake_nomic: FakeNomic, model: str
) -> None:
    info = DEFAULT_MODELS.text_model(model)
    assert info is not None
    response = await post_texts(gateway, ["a cat on a mat"], model=model)
    assert response.status == 200, await response.text()
    answer = await response.json()
    assert answer["model"] == model
    expected = FakeNomic.text_embedding("a cat on a mat", model, max_tokens_per_text=8192)
    assert answer["embeddings"] == [expected]
    assert len(expected) == info.dimensions
    again = await post_texts(gateway, ["a cat on a mat"], model=model)
    assert again.headers["X-Cache"] == "HIT"
    assert len(fake_nomic.text_calls) == 1


@pytest.mark.parametrize(
    ("model", "dimensionality", "accepted"),
    [
        ("nomic-embed-text-v2", 256, True),
        ("nomic-embed-text-v2", 255, False),
        ("gte-multilingual-base", 128, True),
        ("gte-multilingual-base", 64, False),
        ("all-MiniLM-L6-v2", 384, True),
        ("all-MiniLM-L6-v2", 256, False),
        ("nomic-embed-code", 3584, True),
        ("nomic-embed-code", 768, False),
    ],
)
async def test_a_models_sizes_are_its_own(
    gateway: Client, fake_nomic: FakeNomic, model: str, dimensionality: int, accepted: bool
) -> None:
    response = await post_texts(gateway, ["q"], model=model, dimensionality=dimensionality)
    if accepted:
        assert response.status == 200, await response.text()
        assert len((await response.json())["embeddings"][0]) == dimensionality
        assert fake_nomic.text_calls[0].dimensionality == dimensionality
    else:
        assert response.status == 422
        detail = (await response.json())["detail"][0]
        assert detail["loc"] == ["body", "dimensionality"]
        assert model in detail["msg"]
        assert fake_nomic.text_calls == []


async def test_an_unknown_model_is_refused_before_nomic_naming_those_served(
    gateway: Client, fake_nomic: FakeNomic
) -> None:
    response = await post_texts(gateway, ["q"], model="nomic-embed-text-v3")
    assert response.status == 422
    detail = (await response.json())["detail"][0]
    assert detail["loc"] == ["body", "model"]
    assert all(name in detail["msg"] for name in DEFAULT_MODELS.names("text"))
    images = await post_images(gateway, [png(1)], model="nomic-embed-vision-v2")
    assert images.status == 422
    assert (
        "nomic-embed-vision-v1, nomic-embed-vision-v1.5"
        in (await images.json())["detail"][0]["msg"]
    )
    assert fake_nomic.text_calls == []
    assert fake_nomic.calls == []


async def test_a_model_the_operator_adds_is_served_and_one_removed_is_not(
    make_gateway: GatewayFactory, fake_nomic: FakeNomic
) -> None:
    fake_nomic.text_models["nomic-embed-text-v3"] = TextModel(128, 1024, 8192)  # Nomic's next
    extra = {"nomic-embed-text-v3": {"kind": "text", "dimensions": 1024,
                                     "smallest_dimensionality": 128, "context_tokens": 8192},
             "all-MiniLM-L6-v2": None}  # fmt: skip
    gateway = await make_gateway(models=extended_by_json(json.dumps(extra)))
    full = await post_texts(gateway, ["q"], model="nomic-embed-text-v3")
    assert full.status == 200, await full.text()
    assert len((await full.json())["embeddings"][0]) == 1024
    small = await post_texts(gateway, ["q"], model="nomic-embed-text-v3", dimensionality=128)
    assert len((await small.json())["embeddings"][0]) == 128
    too_small = await post_texts(gateway, ["q"], model="nomic-embed-text-v3", dimensionality=64)
    assert too_small.status == 422
    removed = await post_texts(gateway, ["q"], model="all-MiniLM-L6-v2")
    assert removed.status == 422
    assert "nomic-embed-text-v3" in (await removed.json())["detail"][0]["msg"]
    assert len(fake_nomic.text_calls) == 2
