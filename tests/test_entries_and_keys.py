from __future__ import annotations

import random
import unicodedata
from array import array
from typing import Literal

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fake_nomic import FakeNomic
from gateway import entries
from gateway.keys import OLD_PREFIXES, PREFIX, cache_key, content_digest, private_scope
from gateway.models import (
    _PIECES,
    SAMPLE_CHARACTERS,
    Spec,
    TextOptions,
    split_tokens,
    text_token_bound,
    text_tokens,
)


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


@given(
    st.integers(0, 10**5),
    st.lists(st.tuples(st.integers(0, 1000), st.one_of(st.none(), st.integers(0, 5000))),
             min_size=1, max_size=20),
)  # fmt: skip
def test_a_bounded_token_split_adds_up_and_keeps_each_within_its_bound(
    total: int, items: list[tuple[int, int | None]]
) -> None:
    weights, bounds = [w for w, _ in items], [b for _, b in items]
    shares = split_tokens(total, weights, bounds)
    assert sum(shares) == total
    assert all(share >= 0 for share in shares)
    if any(bound is None for bound in bounds) or total <= sum(b or 0 for b in bounds):
        for share, bound in zip(shares, bounds, strict=True):
            assert bound is None or share <= bound  # the bounds hold the total: all kept
    else:  # Nomic billed past every bound: each pays its bound, and its part of the rest
        assert all(share >= (bound or 0) for share, bound in zip(shares, bounds, strict=True))
    if all(bound is None or bound >= total for bound in bounds):
        assert shares == split_tokens(total, weights)  # no bound binds: by weight alone


def test_a_text_the_estimate_undercounts_pays_for_itself_not_its_call_mates() -> None:
    """Eight thousand CJK ideographs cost 8,000 tokens; a five-word text can cost at most its
    characters, whatever the weights say."""
    spec = Spec("nomic-embed-text-v1.5", "text", TextOptions("search_document", None, "mean", None))
    attacker, victim = "中".encode() * 8000, b"a cat on a mat"
    weights = [1, 5]  # as if the estimate had seen one word in the attacker's text
    bounds = [spec.cost(attacker).bound, spec.cost(victim).bound]
    assert bounds == [8000, 10]
    assert split_tokens(8005, weights, bounds) == [7995, 10]


@pytest.mark.parametrize(
    ("text", "estimate", "bound"),
    [
        ("a cat on a mat", 5, 10),
        ("Hello, world!", 4, 12),
        ("\u4e2d\u6587\u5b57", 3, 3),  # each CJK ideograph a token, as BERT splits them
        ("\ud55c\uad6d\uc5b4", 1, 8),  # three Hangul syllables: eight jamo once decomposed
        ("caf\u00e9", 1, 5),  # the accent is a character of its own once decomposed
        ("   \n\t", 1, 1),  # whitespace is no token; every text costs at least one
        ("x" * 100, 1, 100),  # one rare "word": the estimate's 1, up to 100 pieces
    ],
)  # fmt: skip
def test_a_texts_token_estimate_and_bound(text: str, estimate: int, bound: int) -> None:
    assert text_tokens(text.encode()) == estimate
    assert text_token_bound(text.encode()) == bound
    assert text_token_bound(text.encode(), 2) == min(bound, 2)


@given(st.text(max_size=200), st.sampled_from(["truncate", "mean"]),
       st.one_of(st.none(), st.integers(1, 50)))  # fmt: skip
def test_the_fakes_tokens_and_a_texts_weight_never_pass_the_bound(
    text: str, mode: Literal["truncate", "mean"], limit: int | None
) -> None:
    content = text.encode(errors="replace")
    assert FakeNomic.text_tokens(text) <= text_token_bound(content)
    spec = Spec("nomic-embed-text-v1.5", "text", TextOptions("search_query", None, mode, limit))
    weight, bound = spec.cost(content)
    assert bound is not None
    assert 1 <= weight <= bound


@given(st.text(alphabet=st.characters(max_codepoint=127), max_size=300))
def test_an_ascii_texts_bound_is_counted_as_bytes_as_it_would_be_decomposed(text: str) -> None:
    content = text.encode()
    decomposed = unicodedata.normalize("NFD", text)
    characters = len(decomposed) - sum(map(decomposed.count, " \t\n\r\f\v\u00a0\u3000"))
    assert text_token_bound(content) == max(1, characters)


def test_a_long_texts_estimate_reads_its_beginning_scaled_to_its_length() -> None:
    """A document of a hundred thousand words is estimated from its first characters, at
    the same count per character, and no more than a truncating limit."""
    words = b"lorem ipsum dolor sit amet, " * 20_000  # 6 pieces a repeat of 28 characters
    estimate = text_tokens(words)
    assert abs(estimate - 6 * 20_000) <= 6 * 20_000 // 100
    assert text_tokens(words, 8192) == 8192
    assert text_tokens(words[:SAMPLE_CHARACTERS]) == len(_PIECES.findall(words[:4096].decode()))
