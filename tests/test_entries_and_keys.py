from __future__ import annotations

import random
from array import array

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import entries
from gateway.keys import OLD_PREFIXES, PREFIX, cache_key, content_digest, private_scope
from gateway.models import Spec
from gateway.pipeline import answer_body
from gateway.shield import split_tokens
from tests.fake_nomic import FakeNomic


def test_float32_vectors_are_stored_in_4_bytes_and_read_back_exactly() -> None:
    vector = FakeNomic.embedding("m", b"x")
    blob = entries.encode(vector, 42)
    assert len(blob) == 12 + 4 * 768
    entry = entries.decode(blob)
    assert entry.tokens == 42
    assert orjson.loads(entry.embedding_json) == vector


def test_float64_vectors_fall_back_to_8_bytes_and_read_back_exactly() -> None:
    rng = random.Random(1)
    vector = [rng.uniform(-1, 1) for _ in range(768)]
    assert array("f", vector).tolist() != vector
    blob = entries.encode(vector, 1)
    assert len(blob) == 12 + 8 * 768
    assert orjson.loads(entries.decode(blob).embedding_json) == vector


def test_freshness_survives_the_round_trip() -> None:
    entry = entries.decode(entries.encode([0.5], 3, fresh_until=1_900_000_000))
    assert (entry.tokens, entry.fresh_until) == (3, 1_900_000_000)


def test_json_text_from_upstream_survives_the_round_trip() -> None:
    upstream_text = b"[0.10000000149011612,-0.25,3.4028234663852886e38,1e-45,0]"
    vector = orjson.loads(upstream_text)
    decoded = orjson.loads(entries.decode(entries.encode(vector, 0)).embedding_json)
    assert decoded == vector


@pytest.mark.parametrize("blob", [b"", b"\x02\x04",
                                  b"\x01\x04\x01\x00" + bytes(8) + b"abcd",  # version 1
                                  b"\x02\x04\x02\x00" + bytes(8) + b"abcd"])  # fmt: skip
def test_corrupt_entries_are_refused(blob: bytes) -> None:
    with pytest.raises(entries.CorruptEntry):
        entries.decode(blob)


def test_keys_cover_model_kind_scope_and_content() -> None:
    abc = content_digest(b"abc")
    key = cache_key(Spec("m1", "image"), abc)
    assert key.startswith(PREFIX)
    assert key == cache_key(Spec("m1", "image"), content_digest(b"abc"))
    others = {cache_key(Spec("m2", "image"), abc), cache_key(Spec("m1", "url"), abc),
              cache_key(Spec("m1", "image"), content_digest(b"abd")),
              cache_key(Spec("m1", "image"), content_digest(b"")),
              cache_key(Spec("m1", "image"), abc, private_scope("a")),
              cache_key(Spec("m1", "image"), abc, private_scope("b"))}  # fmt: skip
    assert key not in others
    assert len(others) == 6


def test_keys_are_versioned_past_the_collidable_xxh3_keys() -> None:
    key = cache_key(Spec("m1", "image"), content_digest(b"abc"))
    assert not key.startswith(OLD_PREFIXES)
    assert len(key) == len(PREFIX) + 64  # the whole digest: no birthday attack at 2**64


@pytest.mark.parametrize(("total", "count"), [(0, 3), (10, 3), (7, 7), (5, 8), (1000, 64)])
def test_an_even_token_split_adds_up_to_what_was_billed(total: int, count: int) -> None:
    shares = split_tokens(total, [1] * count)
    assert sum(shares) == total
    assert len(shares) == count
    assert max(shares) - min(shares) <= 1


@given(st.integers(0, 10**6), st.lists(st.integers(0, 10_000), min_size=1, max_size=64))
def test_a_weighted_token_split_adds_up_and_follows_the_weights(
    total: int, weights: list[int]
) -> None:
    shares = split_tokens(total, weights)
    assert sum(shares) == total
    assert all(share >= 0 for share in shares)
    if any(weights):
        whole = sum(weights)
        for share, weight in zip(shares, weights, strict=True):
            assert abs(share - total * weight / whole) < 1  # each within a token of its part


def test_answer_body_is_nomics_shape() -> None:
    body = orjson.loads(answer_body("m", [b"[1.5,2.0]", b"[3.0]"], 12))
    assert body == {"embeddings": [[1.5, 2.0], [3.0]],
                    "usage": {"prompt_tokens": 12, "total_tokens": 12}, "model": "m"}  # fmt: skip
