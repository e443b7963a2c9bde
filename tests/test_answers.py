"""Answer bodies in each shape a client speaks (gateway/answers.py), and the entries'
base64 of float32s they are made of."""

from __future__ import annotations

import base64
import struct
from array import array

import orjson
from hypothesis import given
from hypothesis import strategies as st

from gateway import entries
from gateway.answers import body
from gateway.entries import Entry

FLOAT32S = st.floats(width=32, allow_nan=False, allow_infinity=False)


def entry_of(vector: list[float], tokens: int = 3) -> Entry:
    return entries.decode(entries.encode(vector, tokens))


def floats_of(encoded: str) -> list[float]:
    raw = base64.b64decode(encoded)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def test_nomic_shape() -> None:
    answered = [entry_of([1.5, 2.0]), entry_of([3.0])]
    assert orjson.loads(body("nomic", "m", answered, 12)) == {
        "embeddings": [[1.5, 2.0], [3.0]],
        "usage": {"prompt_tokens": 12, "total_tokens": 12},
        "model": "m",
    }


def test_openai_float_shape_in_input_order() -> None:
    answered = [entry_of([1.5, 2.0]), entry_of([3.0]), entry_of([1.5, 2.0])]
    assert orjson.loads(body("openai", "nomic-embed-text-v1.5", answered, 7)) == {
        "object": "list",
        "data": [
            {"object": "embedding", "index": 0, "embedding": [1.5, 2.0]},
            {"object": "embedding", "index": 1, "embedding": [3.0]},
            {"object": "embedding", "index": 2, "embedding": [1.5, 2.0]},
        ],
        "model": "nomic-embed-text-v1.5",
        "usage": {"prompt_tokens": 7, "total_tokens": 7},
    }


@given(st.lists(st.lists(FLOAT32S, min_size=1, max_size=40), min_size=1, max_size=5))
def test_base64_is_exactly_the_float32s_answered(vectors: list[list[float]]) -> None:
    """What Nomic answers is float32s: base64 carries exactly those values, whether the entry
    came from the store or was just fetched (the fetcher's Entry, built from the vector)."""
    stored = [entry_of(vector) for vector in vectors]
    fetched = [
        Entry(entries.vector_json(v), 1, 0, entries.base64_of(entries.encode(v, 1)))
        for v in vectors
    ]
    for answered in (stored, fetched):
        data = orjson.loads(body("openai-base64", "m", answered, 1))["data"]
        assert [floats_of(item["embedding"]) for item in data] == vectors
        assert [item["index"] for item in data] == list(range(len(vectors)))


def test_base64_of_a_vector_that_is_not_float32s_rounds_it() -> None:
    """A vector stored as float64 (not every value a float32) is sent as the nearest
    float32s, as OpenAI's base64 can hold nothing else."""
    vector = [0.1, -1 / 3, 2.0]
    stored = entry_of(vector)
    assert stored.base64 == b""
    (item,) = orjson.loads(body("openai-base64", "m", [stored], 1))["data"]
    assert floats_of(item["embedding"]) == array("f", vector).tolist()
