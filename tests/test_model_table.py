"""The table of models served: Nomic's defaults as their sources give them, the operator's
extensions checked at start-up, and each model's sizes and context where they are used."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from fake_nomic import MODELS as FAKE_IMAGE_MODELS
from fake_nomic import TEXT_MODELS as FAKE_TEXT_MODELS
from gateway.config import Settings, SettingsError
from gateway.errors import InvalidRequest
from gateway.model_table import DEFAULT_MODELS, ModelInfo, ModelTable, extended_by_json
from gateway.models import Spec, TextOptions

SCHEMA_TEXT_MODELS = {
    "all-MiniLM-L6-v2",
    "nomic-embed-text-v1",
    "nomic-embed-text-v1.5",
    "nomic-embed-text-v2",
    "nomic-embed-code",
    "gte-multilingual-base",
}
SCHEMA_IMAGE_MODELS = {"nomic-embed-vision-v1", "nomic-embed-vision-v1.5"}


def test_the_defaults_are_the_models_of_nomics_schema() -> None:
    assert set(DEFAULT_MODELS.names("text")) == SCHEMA_TEXT_MODELS
    assert set(DEFAULT_MODELS.names("image")) == SCHEMA_IMAGE_MODELS
    assert DEFAULT_MODELS.models() == tuple(sorted(DEFAULT_MODELS.models()))


def test_the_fake_nomic_knows_the_same_models_and_sizes() -> None:
    for info in DEFAULT_MODELS.models("text"):
        fake = FAKE_TEXT_MODELS[info.name]
        assert (fake.smallest, fake.dimensions, fake.context) == (
            info.smallest, info.dimensions, info.context_tokens
        )  # fmt: skip
    assert set(FAKE_TEXT_MODELS) == SCHEMA_TEXT_MODELS
    assert set(FAKE_IMAGE_MODELS) == SCHEMA_IMAGE_MODELS


@pytest.mark.parametrize(
    ("name", "dimensionality", "problem"),
    [
        ("nomic-embed-text-v1", 768, None),
        ("nomic-embed-text-v1", 512,
         "nomic-embed-text-v1 has no Matryoshka sizes: dimensionality must be 768 or null"),
        ("nomic-embed-text-v1.5", 64, None),
        ("nomic-embed-text-v1.5", 63, "nomic-embed-text-v1.5 answers in 64 to 768 dimensions"),
        ("nomic-embed-text-v2", 256, None),
        ("nomic-embed-text-v2", 128, "nomic-embed-text-v2 answers in 256 to 768 dimensions"),
        ("gte-multilingual-base", 128, None),
        ("all-MiniLM-L6-v2", 384, None),
        ("all-MiniLM-L6-v2", 768,
         "all-MiniLM-L6-v2 has no Matryoshka sizes: dimensionality must be 384 or null"),
        ("nomic-embed-code", 3584, None),
    ],
)  # fmt: skip
def test_dimensionality_rules(name: str, dimensionality: int, problem: str | None) -> None:
    info = DEFAULT_MODELS.text_model(name)
    assert info is not None
    assert info.dimensionality_problem(dimensionality) == problem


def test_a_model_is_found_only_as_its_kind() -> None:
    assert DEFAULT_MODELS.text_model("nomic-embed-vision-v1.5") is None
    assert DEFAULT_MODELS.image_model("nomic-embed-text-v1.5") is None
    assert DEFAULT_MODELS.text_model("nomic-embed-text-v3") is None


def test_an_unknown_model_is_refused_naming_the_ones_served() -> None:
    with pytest.raises(InvalidRequest) as raised:
        DEFAULT_MODELS.require("nomic-embed-text-v3", "text")
    assert raised.value.loc == ("body", "model")
    assert raised.value.msg == (
        "unknown model 'nomic-embed-text-v3'; expected one of all-MiniLM-L6-v2, "
        "gte-multilingual-base, nomic-embed-code, nomic-embed-text-v1, nomic-embed-text-v1.5, "
        "nomic-embed-text-v2"
    )
    with pytest.raises(InvalidRequest, match=r"nomic-embed-vision-v1, nomic-embed-vision-v1\.5$"):
        DEFAULT_MODELS.require("x" * 10_000, "image")


def test_the_operator_adds_replaces_and_removes_models() -> None:
    table = extended_by_json(json.dumps({
        "nomic-embed-text-v3": {"kind": "text", "dimensions": 1024,
                                "smallest_dimensionality": 128, "context_tokens": 4096},
        "nomic-embed-vision-v2": {"kind": "image", "dimensions": 1024},
        "nomic-embed-text-v1.5": {"kind": "text", "dimensions": 768},
        "all-MiniLM-L6-v2": None,
    }))  # fmt: skip
    assert table.text_model("nomic-embed-text-v3") == ModelInfo(
        "nomic-embed-text-v3", "text", 1024, 128, 4096
    )
    assert table.image_model("nomic-embed-vision-v2") == ModelInfo(
        "nomic-embed-vision-v2", "image", 1024, 1024, None
    )
    assert table.text_model("nomic-embed-text-v1.5") == ModelInfo(
        "nomic-embed-text-v1.5", "text", 768, 768, None
    )
    assert table.text_model("all-MiniLM-L6-v2") is None
    assert table.text_model("nomic-embed-code") == DEFAULT_MODELS.text_model("nomic-embed-code")
    assert extended_by_json("{}") == DEFAULT_MODELS


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ("[]", "JSON object"),
        ("{", "not JSON"),
        ('{"m": 1}', "'m' must be an object or null"),
        ('{"m": {"kind": "audio", "dimensions": 8}}', 'kind must be "text" or "image"'),
        ('{"m": {"kind": "text"}}', "dimensions must be a whole number from 1 to 65536"),
        ('{"m": {"kind": "text", "dimensions": 0}}', "dimensions must be"),
        ('{"m": {"kind": "text", "dimensions": 8.5}}', "dimensions must be"),
        ('{"m": {"kind": "text", "dimensions": true}}', "dimensions must be"),
        ('{"m": {"kind": "text", "dimensions": 8, "smallest_dimensionality": 9}}',
         "smallest_dimensionality must be a whole number from 1 to 8"),
        ('{"m": {"kind": "text", "dimensions": 8, "context_tokens": 0}}', "context_tokens"),
        ('{"m": {"kind": "image", "dimensions": 8, "context_tokens": 5}}',
         "an image model has no context_tokens"),
        ('{"m": {"kind": "text", "dimensions": 8, "dimension": 8}}', "unknown field 'dimension'"),
        ('{"": null}', "must be 1 to 100 printable ASCII"),
        ('{"a b": null}', "without spaces"),
        ('{"a\\u0000b": null}', "printable"),
        ('{"nomic-embed-text-v1": null}', "is the default of requests that name none"),
        ('{"nomic-embed-vision-v1.5": null}', "cannot be removed"),
    ],
)  # fmt: skip
def test_a_bad_table_is_refused_naming_what_is_wrong(raw: str, words: str) -> None:
    with pytest.raises(ValueError, match=re.escape(words)):
        extended_by_json(raw)


def test_gateway_models_takes_a_json_value_or_a_file(tmp_path: Path) -> None:
    extra = {"nomic-embed-text-v3": {"kind": "text", "dimensions": 1024}}
    env = {"NOMIC_API_KEY": "nk-x"}
    inline = Settings.from_sources({}, {**env, "GATEWAY_MODELS": json.dumps(extra)})
    path = tmp_path / "models.json"
    path.write_text(json.dumps(extra))
    from_file = Settings.from_sources({"models": str(path)}, env)
    assert inline.models == from_file.models
    assert inline.models.text_model("nomic-embed-text-v3") is not None
    assert Settings.from_sources({}, env).models == DEFAULT_MODELS
    assert "nomic-embed-text-v3" in repr(inline)


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ('{"m": {"kind": "text"}}', "dimensions must be"),
        ("/no/such/models.json", "must be a JSON object, or the path of a readable file"),
        ("not json", "must be a JSON object, or the path of a readable file"),
    ],
)
def test_a_bad_gateway_models_stops_start_up_naming_it(value: str, words: str) -> None:
    with pytest.raises(SettingsError) as raised:
        Settings.from_sources({}, {"NOMIC_API_KEY": "nk-x", "GATEWAY_MODELS": value})
    assert str(raised.value).startswith("GATEWAY_MODELS=")
    assert words in str(raised.value)


def test_a_bad_models_file_is_named_too(tmp_path: Path) -> None:
    path = tmp_path / "models.json"
    path.write_text('{"m": {"kind": "text", "dimensions": -1}}')
    with pytest.raises(SettingsError, match="dimensions must be"):
        Settings.from_sources({"models": str(path)}, {"NOMIC_API_KEY": "nk-x"})


def test_truncate_mode_cuts_a_text_at_its_models_context() -> None:
    """A long text in "truncate" mode can cost at most its model's context; a model whose
    context is unknown cuts nowhere, so its texts are bound by their length."""
    text = b"word " * 3000
    for name, bound in [("all-MiniLM-L6-v2", 256), ("nomic-embed-text-v2", 512),
                        ("nomic-embed-text-v1.5", 8192), ("nomic-embed-code", 12000)]:  # fmt: skip
        info = DEFAULT_MODELS.text_model(name)
        assert info is not None
        options = TextOptions("search_document", None, "truncate", None, info.context_tokens)
        assert Spec(name, "text", options).cost(text).bound == bound
    mean = TextOptions("search_document", None, "mean", 8192, 256)
    assert Spec("all-MiniLM-L6-v2", "text", mean).cost(text).bound == 12000


def test_the_context_is_not_part_of_the_cache_key() -> None:
    options = TextOptions("search_document", 256, "truncate", None)
    model = "nomic-embed-text-v1.5"
    assert (
        Spec(model, "text", options).variant()
        == Spec(model, "text", options._replace(context_tokens=8192)).variant()
    )


def test_tables_compare_by_their_models() -> None:
    assert ModelTable(DEFAULT_MODELS.models()) == DEFAULT_MODELS
    assert hash(ModelTable(DEFAULT_MODELS.models())) == hash(DEFAULT_MODELS)
    assert DEFAULT_MODELS.replaced({"all-MiniLM-L6-v2": None}) != DEFAULT_MODELS
