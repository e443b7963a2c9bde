"""The text request parser: Nomic's defaults, Nomic-shaped refusals naming the input, and no
other exception for any body at all."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from fake_nomic import FakeNomic
from gateway.errors import InvalidRequest
from gateway.model_table import DEFAULT_MODELS
from gateway.models import TASK_TYPES
from gateway.text_forms import (
    MAX_TOKENS_PER_TEXT_CEILING,
    TextLimits,
    TextRequest,
    is_json,
    parse_text_request,
    too_many_values,
)

LIMITS = TextLimits(max_texts=8, max_text_bytes=64)
TEXT_MODELS = DEFAULT_MODELS.names("text")


def parse(fields: object, limits: TextLimits = LIMITS) -> TextRequest:
    return parse_text_request(json.dumps(fields).encode(), limits)


def refusal(body: object, content_type: str | None = None) -> InvalidRequest:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(InvalidRequest) as raised:
        parse_text_request(raw, LIMITS, content_type)
    return raised.value


def test_omitted_fields_take_nomics_api_defaults_not_the_clients() -> None:
    assert parse({"texts": ["a", "b"]}) == TextRequest(
        model="nomic-embed-text-v1", task_type="search_document", dimensionality=None,
        long_text_mode="mean", max_tokens_per_text=8192, texts=["a", "b"], context_tokens=8192,
    )  # fmt: skip


def test_the_official_clients_body() -> None:
    body = {"texts": ["q"], "model": "nomic-embed-text-v1.5", "task_type": "search_query",
            "dimensionality": None, "long_text_mode": "truncate"}  # fmt: skip
    assert parse(body) == TextRequest(
        "nomic-embed-text-v1.5", "search_query", None, "truncate", None, ["q"], 8192
    )


def test_every_field_given() -> None:
    body = {"texts": ["q"], "model": "nomic-embed-text-v1.5", "task_type": "clustering",
            "dimensionality": 256, "long_text_mode": "mean",
            "max_tokens_per_text": 512}  # fmt: skip
    assert parse(body) == TextRequest(
        "nomic-embed-text-v1.5", "clustering", 256, "mean", 512, ["q"], 8192
    )


def test_null_task_type_is_the_default_and_unknown_fields_are_ignored() -> None:
    parsed = parse({"texts": ["q"], "task_type": None, "inference_mode": "remote", "x": [{}]})
    assert parsed.task_type == "search_document"


def test_no_texts_is_refused_as_nomics_schema_requires_one() -> None:
    error = refusal({"texts": []})
    assert error.loc == ("body", "texts")
    assert "at least one text" in error.msg


def test_integral_floats_are_integers() -> None:
    parsed = parse({"texts": ["q"], "model": "nomic-embed-text-v1.5", "dimensionality": 128.0,
                    "max_tokens_per_text": 1e3})  # fmt: skip
    assert (parsed.dimensionality, parsed.max_tokens_per_text) == (128, 1000)
    assert type(parsed.dimensionality) is int


@pytest.mark.parametrize(
    ("model", "dimensionality", "accepted"),
    [
        ("nomic-embed-text-v1", 768, True),
        ("nomic-embed-text-v1", 256, False),
        ("nomic-embed-text-v1", 769, False),
        ("nomic-embed-text-v1.5", 64, True),
        ("nomic-embed-text-v1.5", 384, True),
        ("nomic-embed-text-v1.5", 768, True),
        ("nomic-embed-text-v1.5", 63, False),
        ("nomic-embed-text-v1.5", 0, False),
        ("nomic-embed-text-v1.5", -64, False),
        ("nomic-embed-text-v1.5", 769, False),
    ],
)
def test_dimensionality_by_model(model: str, dimensionality: int, accepted: bool) -> None:
    body = {"texts": ["q"], "model": model, "dimensionality": dimensionality}
    if accepted:
        assert parse(body).dimensionality == dimensionality
    else:
        error = refusal(body)
        assert error.loc == ("body", "dimensionality")
        assert model in error.msg


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"texts": ["a", "b", "c", 4]}, ("body", "texts", 3)),
        ({"texts": ["a", None]}, ("body", "texts", 1)),
        ({}, ("body", "texts")),
        ({"texts": "one text"}, ("body", "texts")),
        ({"texts": {"0": "a"}}, ("body", "texts")),
        ({"texts": ["a"] * 9}, ("body", "texts", 8)),
        ({"texts": []}, ("body", "texts")),
        ({"texts": ["a", "é" * 33]}, ("body", "texts", 1)),
        ({"texts": ["a"], "model": "nomic-embed-vision-v1.5"}, ("body", "model")),
        ({"texts": ["a"], "model": None}, ("body", "model")),
        ({"texts": ["a"], "model": ["nomic-embed-text-v1"]}, ("body", "model")),
        ({"texts": ["a"], "task_type": "retrieval"}, ("body", "task_type")),
        ({"texts": ["a"], "task_type": 1}, ("body", "task_type")),
        ({"texts": ["a"], "long_text_mode": "first"}, ("body", "long_text_mode")),
        ({"texts": ["a"], "long_text_mode": None}, ("body", "long_text_mode")),
        ({"texts": ["a"], "max_tokens_per_text": None}, ("body", "max_tokens_per_text")),
        ({"texts": ["a"], "max_tokens_per_text": 0}, ("body", "max_tokens_per_text")),
        ({"texts": ["a"], "max_tokens_per_text": MAX_TOKENS_PER_TEXT_CEILING + 1},
         ("body", "max_tokens_per_text")),
        ({"texts": ["a"], "max_tokens_per_text": "512"}, ("body", "max_tokens_per_text")),
        ({"texts": ["a"], "max_tokens_per_text": 1e30}, ("body", "max_tokens_per_text")),
        ({"texts": ["a"], "dimensionality": 767.5}, ("body", "dimensionality")),
        ({"texts": ["a"], "dimensionality": True}, ("body", "dimensionality")),
        ({"texts": ["a"], "dimensionality": "768"}, ("body", "dimensionality")),
        (["a"], ("body",)),
        ("a", ("body",)),
        (None, ("body",)),
    ],
)  # fmt: skip
def test_refusals_name_the_input(body: object, loc: tuple[object, ...]) -> None:
    error = refusal(body)
    assert error.loc == loc
    assert error.status == 422
    assert error.detail() == [{"loc": list(loc), "msg": error.msg, "type": "value_error"}]


def test_a_text_at_the_byte_limit_passes_in_any_script() -> None:
    texts = ["x" * 64, "é" * 32, "€" * 21 + "x", "😀" * 16]
    assert parse({"texts": texts}).texts == texts


def test_the_byte_limit_counts_utf8_not_characters() -> None:
    assert refusal({"texts": ["😀" * 16 + "x"]}).loc == ("body", "texts", 0)
    assert "64 bytes" in refusal({"texts": ["ok", "x" * 65]}).msg


@pytest.mark.parametrize(
    ("raw", "loc"),
    [
        (b'{"texts": [', ("body", 11)),
        (b'{"texts": ["\xff"]}', ("body", 0)),  # not UTF-8
        (b'{"texts": ["\\ud800"]}', ("body", 12)),  # a lone surrogate: not text at all
        (b'{"texts": ["a"], "dimensionality": NaN}', ("body", 35)),
    ],
)
def test_bodies_that_are_not_json_name_the_offset(raw: bytes, loc: tuple[object, ...]) -> None:
    error = refusal(raw)
    assert error.loc == loc
    assert error.msg.startswith("JSON decode error")


def test_an_empty_body_is_a_missing_one() -> None:
    assert (refusal(b"").loc, refusal(b"").msg) == (("body",), "Field required")


@pytest.mark.parametrize(
    ("content_type", "json_read"),
    [
        (None, True),
        ("", True),
        ("application/json", True),
        ("Application/JSON; charset=utf-8", True),
        ("application/vnd.api+json", True),
        ("text/plain", False),
        ("application/x-www-form-urlencoded", False),
        ("multipart/form-data; boundary=x", False),
        ("json", False),
    ],
)
def test_only_json_content_types_are_read(content_type: str | None, json_read: bool) -> None:
    assert is_json(content_type) is json_read
    body = json.dumps({"texts": ["a"]}).encode()
    if json_read:
        assert parse_text_request(body, LIMITS, content_type).texts == ["a"]
    else:
        assert refusal(body, content_type).loc == ("body",)


def test_loc_of_a_text() -> None:
    assert parse({"texts": ["a"]}).loc(3) == ("body", "texts", 3)


# Properties. JSON values of every shape, under the request's own keys as often as not.
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
fields = ["texts", "model", "task_type", "dimensionality", "long_text_mode", "max_tokens_per_text"]
keys = st.sampled_from(fields) | st.text(max_size=8)
plausible = {
    "texts": st.lists(st.text(max_size=20), max_size=12) | json_values,
    "model": st.sampled_from(sorted(TEXT_MODELS)) | json_values,
    "task_type": st.sampled_from(sorted(TASK_TYPES)) | st.none() | json_values,
    "dimensionality": st.none() | st.integers(-10, 1000) | st.sampled_from([64.0, 768.0, 100.5]),
    "long_text_mode": st.sampled_from(["truncate", "mean", "Mean", ""]) | json_values,
    "max_tokens_per_text": st.integers(-2, 10_000) | st.sampled_from([1.0, 2.5]) | json_values,
}
optional = {name: strategy for name, strategy in plausible.items() if name != "texts"}
requests = (
    st.fixed_dictionaries({"texts": st.lists(st.text(max_size=20), max_size=12)}, optional=optional)
    | st.fixed_dictionaries({}, optional=plausible)
    | st.dictionaries(keys, json_values, max_size=7)
)


def valid(request: TextRequest, limits: TextLimits) -> bool:
    return (
        request.model in TEXT_MODELS
        and request.task_type in TASK_TYPES
        and request.long_text_mode in ("truncate", "mean")
        and (request.dimensionality is None
             or request.dimensionality in DEFAULT_MODELS.require(request.model, "text").sizes)
        and (request.max_tokens_per_text is None
             or 1 <= request.max_tokens_per_text <= MAX_TOKENS_PER_TEXT_CEILING)
        and 1 <= len(request.texts) <= limits.max_texts
        and all(len(text.encode()) <= limits.max_text_bytes for text in request.texts)
    )  # fmt: skip


def outcome(raw: bytes, limits: TextLimits = LIMITS) -> TextRequest | InvalidRequest:
    try:
        return parse_text_request(raw, limits)
    except InvalidRequest as error:
        return error


@settings(max_examples=500, deadline=None, database=None)
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_any_bytes_are_a_request_or_invalid(raw: bytes) -> None:
    result = outcome(raw)
    if isinstance(result, InvalidRequest):
        assert result.loc[0] == "body"
    else:
        assert valid(result, LIMITS)


@settings(max_examples=1000, deadline=None, database=None)
@given(requests | json_values)
def test_any_json_is_a_valid_request_or_invalid_naming_a_field(body: Any) -> None:
    result = outcome(json.dumps(body).encode())
    if isinstance(result, InvalidRequest):
        loc = result.loc
        assert loc == ("body",) or (
            loc[1] in fields and (len(loc) == 2 or (loc[1] == "texts" and len(loc) == 3))
        )
    else:
        assert valid(result, LIMITS)
        assert result.texts == body["texts"]


NOMIC_LIMITS = TextLimits(max_texts=10, max_text_bytes=10**6)  # what the fake refuses beyond
# The one difference by design: the gateway bounds max_tokens_per_text, Nomic documents no bound.


@settings(max_examples=1000, deadline=None, database=None)
@given(requests)
def test_the_parser_refuses_what_the_fake_nomic_refuses(body: dict[str, Any]) -> None:
    tokens = body.get("max_tokens_per_text")
    assume(not (isinstance(tokens, int | float) and tokens > MAX_TOKENS_PER_TEXT_CEILING))
    raw = json.dumps(body).encode()
    nomic_refuses = bool(FakeNomic().judge_text_body("application/json", raw)[1])
    assert isinstance(outcome(raw, NOMIC_LIMITS), InvalidRequest) == nomic_refuses


# Bodies of many small values: a few bytes each in JSON, tens of bytes each as Python objects.
# 64 MiB of "{}," (64 KiB gzipped) once parsed took 1.9 GB and 7 s of the event loop.
SMALL_VALUES = [b"{},", b"[],", b"1.5,", b'"":0,', b"[[[]]],", b'"a",']


@pytest.mark.parametrize("value", SMALL_VALUES)
def test_a_body_of_many_small_values_is_refused_before_it_is_parsed(
    value: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    container = b"{%s}" if value.startswith(b'"":') else b"[%s]"
    junk = container % (value * (LIMITS.max_texts + 2000))[:-1]
    monkeypatch.setattr("orjson.loads", _never_called)
    error = refusal(b'{"texts": ["a"], "junk": %s}' % junk)
    assert error.loc == ("body",)
    assert "JSON values" in error.msg


def _never_called(body: bytes) -> object:
    raise AssertionError("the body was parsed")


def test_texts_full_of_commas_brackets_and_escapes_are_not_values() -> None:
    limits = TextLimits(max_texts=512, max_text_bytes=64)
    texts = ['[{"a", "b"}], \\" \\\\", ' * 2] * limits.max_texts
    body = json.dumps({"texts": texts, "model": "nomic-embed-text-v1.5"})
    assert body.count(",") > 1024 + limits.max_texts  # those inside the texts do not count
    assert parse_text_request(body.encode(), limits).texts == texts


def separators(value: Any) -> int:
    """The commas and opening brackets of ``value`` in JSON, outside its strings."""
    if isinstance(value, list | dict):
        inner = value.values() if isinstance(value, dict) else value
        return max(1, len(value)) + sum(separators(item) for item in inner)
    return 0


@settings(max_examples=500, deadline=None, database=None)
@given(json_values, st.booleans())
def test_the_value_count_is_exact_on_json(body: Any, ascii_only: bool) -> None:
    raw = json.dumps(body, ensure_ascii=ascii_only).encode()
    count = separators(body)
    assert not too_many_values(raw, count)
    if count:
        assert too_many_values(raw, count - 1)
