"""OpenAI's request read into Nomic's texts request, and errors in OpenAI's shape
(gateway/openai_shape.py): pure, no server."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import (
    GatewayError,
    InvalidRequest,
    QuotaExceeded,
    Unauthorized,
    UnknownModel,
    UpstreamUnavailable,
)
from gateway.model_table import DEFAULT_MODELS
from gateway.openai_shape import error_body, parse_embeddings_request, speaks_openai
from gateway.text_forms import TextLimits, parse_text_request

LIMITS = TextLimits(max_texts=8, max_text_bytes=64)
MODELS = DEFAULT_MODELS.names("text")
ALIASES = {"text-embedding-3-small": "nomic-embed-text-v1.5"}


def parse(fields: Any, aliases: dict[str, str] | None = None) -> Any:
    return parse_embeddings_request(orjson.dumps(fields), LIMITS, aliases or {})


def test_the_official_clients_defaults_so_both_apis_share_cache_entries() -> None:
    """Left out, Nomic's options are what the nomic client sends: the options (the cache
    key's part) equal those of the same texts through Nomic's route as the client sends them."""
    openai = parse({"model": "nomic-embed-text-v1.5", "input": ["a", "b"]})
    client = parse_text_request(
        orjson.dumps(
            {
                "texts": ["a", "b"],
                "model": "nomic-embed-text-v1.5",
                "task_type": "search_document",
                "dimensionality": None,
                "long_text_mode": "truncate",
            }
        ),
        LIMITS,
    )
    assert openai.texts == client
    assert openai.shape == "openai"


def test_a_string_is_one_input_and_options_map_to_nomics() -> None:
    parsed = parse(
        {
            "model": "text-embedding-3-small",
            "input": "one",
            "dimensions": 128,
            "encoding_format": "base64",
            "user": "u-1",
            "task_type": "clustering",
            "long_text_mode": "mean",
            "max_tokens_per_text": 50,
        },
        ALIASES,
    )
    assert parsed.shape == "openai-base64"
    texts = parsed.texts
    assert texts.texts == ["one"]
    assert (texts.model, texts.dimensionality, texts.task_type) == (
        "nomic-embed-text-v1.5", 128, "clustering"
    )  # fmt: skip
    assert (texts.long_text_mode, texts.max_tokens_per_text) == ("mean", 50)


@pytest.mark.parametrize(
    ("fields", "loc", "kind"),
    [
        ({"model": "m", "input": "x"}, ("body", "model"), UnknownModel),
        ({"model": "nomic-embed-vision-v1.5", "input": "x"}, ("body", "model"), UnknownModel),
        ({"input": "x"}, ("body", "model"), InvalidRequest),
        ({"model": 3, "input": "x"}, ("body", "model"), InvalidRequest),
        ({"model": "nomic-embed-text-v1"}, ("body", "input"), InvalidRequest),
        ({"model": "nomic-embed-text-v1", "input": {}}, ("body", "input"), InvalidRequest),
        ({"model": "nomic-embed-text-v1", "input": [True]}, ("body", "input", 0), InvalidRequest),
        ({"model": "nomic-embed-text-v1", "input": ["x" * 65]}, ("body", "input", 0),
         InvalidRequest),
        ({"model": "nomic-embed-text-v1", "input": ["x"] * 9}, ("body", "input", 8),
         InvalidRequest),
        ({"model": "nomic-embed-text-v1", "input": "x", "dimensions": 64},
         ("body", "dimensions"), InvalidRequest),
        ({"model": "nomic-embed-text-v1", "input": "x", "user": 1}, ("body", "user"),
         InvalidRequest),
        ({"model": "nomic-embed-text-v1", "input": "x", "texts": ["y"]}, ("body", "texts"),
         InvalidRequest),
    ],
)  # fmt: skip
def test_refusals_name_openais_field(fields: Any, loc: tuple[Any, ...], kind: type) -> None:
    with pytest.raises(InvalidRequest) as refused:
        parse(fields)
    assert type(refused.value) is kind
    assert refused.value.loc == loc


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=12,
)
FIELD_NAMES = st.sampled_from(
    ["input", "model", "encoding_format", "dimensions", "user", "task_type", "long_text_mode",
     "max_tokens_per_text", "other"]
)  # fmt: skip


@given(st.dictionaries(FIELD_NAMES, JSON | st.sampled_from([*MODELS, "base64", 256])))
def test_any_body_is_read_or_refused_with_a_400(fields: dict[str, Any]) -> None:
    try:
        parsed = parse(fields)
    except InvalidRequest as refused:
        status, body = error_body(refused)
        assert status in (400, 404)
        assert set(body["error"]) == {"message", "type", "param", "code"}  # type: ignore[arg-type]
    else:
        assert 1 <= len(parsed.texts.texts) <= LIMITS.max_texts


@pytest.mark.parametrize(
    ("error", "status", "kind", "param", "code"),
    [
        (InvalidRequest("bad", loc=("body", "input", 3)), 400, "invalid_request_error",
         "input[3]", None),
        (UnknownModel("no", loc=("body", "model")), 404, "invalid_request_error", "model",
         "model_not_found"),
        (Unauthorized("who"), 401, "invalid_request_error", None, "invalid_api_key"),
        (QuotaExceeded("slow", loc=("limits", "texts_per_minute")), 429,
         "rate_limit_exceeded", None, "rate_limit_exceeded"),
        (QuotaExceeded("spent", loc=("limits", "tokens_per_month")), 429,
         "insufficient_quota", None, "insufficient_quota"),
        (UpstreamUnavailable("later"), 503, "server_error", None, "upstream_error.unavailable"),
    ],
)  # fmt: skip
def test_errors_in_openais_shape_and_statuses(
    error: GatewayError, status: int, kind: str, param: str | None, code: str | None
) -> None:
    assert error_body(error) == (
        status, {"error": {"message": error.msg, "type": kind, "param": param, "code": code}}
    )  # fmt: skip


def test_which_paths_speak_openai() -> None:
    assert speaks_openai("/v1/embeddings")
    assert speaks_openai("/v1/models/nomic-embed-text-v1")
    assert not speaks_openai("/v1/embedding/text")
    assert not speaks_openai("/v1/embeddings/x")


def test_an_unknown_fields_name_is_echoed_forty_characters_at_most() -> None:
    """A megabyte of field name must not come back as a megabyte of error."""
    with pytest.raises(InvalidRequest) as refused:
        parse({"model": "nomic-embed-text-v1", "input": "x", "y" * 1_000_000: 1})
    assert refused.value.loc == ("body", "y" * 40)
    assert len(refused.value.msg) < 100
