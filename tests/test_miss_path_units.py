"""The miss path's decisions, with no event loop: who pays for what in an answer, and when a
failed upstream call is retried."""

from __future__ import annotations

import random

import orjson
import pytest

from gateway.assembly import FetchFailed, Lookup, Outcome, assemble
from gateway.entries import Entry
from gateway.errors import (
    GatewayError,
    InvalidRequest,
    ItemRejected,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamServerError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.forms import ParsedRequest
from gateway.keys import cache_key
from gateway.models import Spec
from gateway.shield_policy import retry_delay
from tests.helpers import policy

MODEL = "nomic-embed-vision-v1.5"


def lookup(items: list[bytes], found: dict[bytes, int], stale: dict[bytes, int] | None = None,
           ) -> Lookup:  # fmt: skip
    """A lookup of ``items`` that found ``found`` (item → tokens); the rest missing."""
    request = ParsedRequest.of(MODEL, "image", items)
    keys = [cache_key(Spec(MODEL, "image"), digest) for digest in request.digests]
    by_item = dict(zip(items, keys, strict=True))
    first_item = dict(zip(keys, items, strict=True))
    hits = {by_item[item]: entry(item, tokens) for item, tokens in found.items()}
    stale_entries = {by_item[item]: entry(item, t) for item, t in (stale or {}).items()}
    missing = [key for key in first_item if key not in hits]
    return Lookup(request, keys, first_item, hits, missing, stale_entries)


def entry(item: bytes, tokens: int) -> Entry:
    return Entry(orjson.dumps([len(item), tokens]), tokens)


def key_of(look: Lookup, item: bytes) -> str:
    return look.cache_keys[look.request.items.index(item)]


def test_a_request_pays_for_what_it_fetched_once_wherever_the_input_stands() -> None:
    look = lookup([b"a", b"b", b"a", b"c", b"d"], found={b"b": 7})
    outcomes = {
        key_of(look, b"a"): Outcome("fetched", entry(b"a", 10)),
        key_of(look, b"c"): Outcome("joined", entry(b"c", 10)),
        key_of(look, b"d"): Outcome("replica", entry(b"d", 10)),
    }
    answer = assemble(look, outcomes)
    assert (answer.hits, answer.misses, answer.billed_tokens) == (4, 1, 10)
    assert (answer.cached, answer.coalesced, answer.stale) == (1, 3, 0)
    assert answer.usage_tokens == 10 + 7 + 10 + 10 + 10
    assert answer.cache_status == "PARTIAL"
    body = orjson.loads(answer.body)
    assert body["embeddings"] == [[1, 10], [1, 7], [1, 10], [1, 10], [1, 10]]
    assert body["usage"] == {"prompt_tokens": 47, "total_tokens": 47}


def test_an_answer_found_whole_is_a_hit_that_pays_nothing() -> None:
    look = lookup([b"a", b"b"], found={b"a": 3, b"b": 4})
    answer = assemble(look)
    assert (answer.hits, answer.misses, answer.billed_tokens, answer.cache_status) == (
        2, 0, 0, "HIT"
    )  # fmt: skip


def test_a_stale_entry_served_is_not_paid_and_says_so() -> None:
    look = lookup([b"u"], found={}, stale={b"u": 5})
    answer = assemble(look, {key_of(look, b"u"): Outcome("stale", entry(b"u", 5))})
    assert (answer.misses, answer.billed_tokens, answer.stale, answer.cache_status) == (
        0, 0, 1, "STALE"
    )  # fmt: skip


def test_a_failure_names_the_first_rejected_input_and_bills_what_was_fetched() -> None:
    look = lookup([b"ok", b"down", b"bad"], found={})
    outcomes = {
        key_of(look, b"ok"): Outcome("fetched", entry(b"ok", 10)),
        key_of(look, b"down"): Outcome("failed", error=UpstreamUnavailable("down")),
        key_of(look, b"bad"): Outcome("failed", error=ItemRejected("not an image")),
    }
    with pytest.raises(FetchFailed) as failed:
        assemble(look, outcomes)
    assert isinstance(failed.value.error, ItemRejected)
    assert failed.value.error.loc == ("body", "images", 2)
    assert failed.value.billed_tokens == 10


def test_without_a_rejection_the_first_failure_in_input_order_is_answered() -> None:
    look = lookup([b"x", b"y"], found={})
    outcomes = {
        key_of(look, b"x"): Outcome("failed", error=UpstreamTimeout("slow")),
        key_of(look, b"y"): Outcome("replica", entry(b"y", 10)),
    }
    with pytest.raises(FetchFailed) as failed:
        assemble(look, outcomes)
    assert isinstance(failed.value.error, UpstreamTimeout)
    assert failed.value.billed_tokens == 0  # another replica paid for y


RNG = random.Random(7)
POLICY = policy(max_attempts=4, backoff_base_seconds=0.25, backoff_max_seconds=8)


def delay(error: GatewayError, attempt: int = 0, breaker: float = 0.0, left: float = 60.0,
          ) -> float | None:  # fmt: skip
    return retry_delay(error, attempt, POLICY, breaker_wait=breaker, time_left=left, rng=RNG)


@pytest.mark.parametrize(
    "error",
    [
        UpstreamServerError("502"),
        UpstreamTimeout("slow"),
        UpstreamUnavailable("busy"),
        UpstreamRateLimited("429", retry_after=2),
    ],
)
def test_failures_worth_retrying_are_retried_with_backoff(error: GatewayError) -> None:
    wait = delay(error)
    assert wait is not None
    assert 0.125 <= wait <= max(0.25, error.retry_after or 0)


@pytest.mark.parametrize(
    "error", [UpstreamError("unusable answer"), InvalidRequest("bad"), ItemRejected("bad")]
)
def test_answers_that_would_not_change_are_not_retried(error: GatewayError) -> None:
    assert delay(error) is None


def test_retries_stop_at_the_last_attempt_an_open_breaker_or_the_deadline() -> None:
    error = UpstreamServerError("502")
    assert delay(error, attempt=2) is not None
    assert delay(error, attempt=3) is None  # the fourth attempt was the last
    assert delay(error, breaker=4.0) is None
    assert delay(error, left=0.1) is None  # the backoff alone would pass the deadline
    assert delay(UpstreamRateLimited("429", retry_after=30), left=20) is None


def test_nomics_retry_after_is_honoured_over_the_backoff() -> None:
    assert delay(UpstreamRateLimited("429", retry_after=5)) == 5
