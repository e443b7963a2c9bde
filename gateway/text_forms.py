"""Text embedding request bodies → a validated :class:`TextRequest`, with Nomic-shaped errors. Pure.

``POST /v1/embedding/text`` takes a JSON object: ``texts`` (required), ``model``,
``task_type``, ``long_text_mode``, ``max_tokens_per_text`` and ``dimensionality``. Omitted
fields take Nomic's API defaults, which are not the official client's (its ``model`` and
``long_text_mode`` differ); fields Nomic does not know are ignored, as its FastAPI models do.
Every error names the offending input the way Nomic does, ``("body", "texts", 3)`` for the
fourth text. The body comes whole: the server has bounded its size before it gets here.

Stricter than Nomic's Pydantic in three ways the official client never meets: an integer
field takes a JSON number with no fraction, not ``"256"`` or ``true``; a string escaping an
unpaired surrogate (``"\\ud800"``) makes the body malformed, since it is not text; and a body
holds at most :data:`MAX_OTHER_VALUES` JSON values besides its texts, counted before it is
parsed (:func:`too_many_values`): a few bytes of JSON (``{},``) become tens of bytes of Python
objects each, so 64 MiB of them (64 KiB gzipped) would take 1.9 GB and 7 s to parse.
"""

from __future__ import annotations

from typing import NamedTuple

import orjson

from gateway.errors import InvalidRequest, Loc
from gateway.model_table import DEFAULT_MODELS, ModelInfo, ModelTable
from gateway.models import (
    DEFAULT_LONG_TEXT_MODE,
    DEFAULT_MEAN_MAX_TOKENS,
    DEFAULT_TASK_TYPE,
    DEFAULT_TEXT_MODEL,
    LONG_TEXT_MODES,
    TASK_TYPES,
    LongTextMode,
    TextOptions,
)

MAX_OTHER_VALUES = 1024  # the request object, its fields, and room for fields Nomic ignores
# No text is near this many tokens; a bound keeps the value a 32-bit integer wherever it goes.
MAX_TOKENS_PER_TEXT_CEILING = 2**31 - 1


class TextLimits(NamedTuple):
    """What one text request may hold (the settings')."""

    max_texts: int
    max_text_bytes: int  # per text, in UTF-8
    models: ModelTable = DEFAULT_MODELS  # the models served (Settings.models)


class TextRequest(NamedTuple):
    """A validated text embedding request, Nomic's defaults filled in; texts in the client's
    order."""

    model: str
    task_type: str
    dimensionality: int | None  # None: the model's full size
    long_text_mode: LongTextMode
    max_tokens_per_text: int | None  # None: not sent; Nomic caps at the model's input size
    texts: list[str]
    context_tokens: int | None = None  # the model's (ModelInfo.context_tokens)

    def loc(self, index: int) -> Loc:
        """Where text ``index`` stands in the client's request, for error ``loc``s."""
        return ("body", "texts", index)

    def options(self) -> TextOptions:
        """How its texts are embedded, besides the model (their cache key's part)."""
        return TextOptions(self.task_type, self.dimensionality, self.long_text_mode,
                           self.max_tokens_per_text, self.context_tokens)  # fmt: skip


def is_json(content_type: str | None) -> bool:
    """Whether Nomic reads a body sent with this ``Content-Type`` as JSON: when there is none,
    ``application/json`` or ``application/*+json`` (FastAPI's rule)."""
    if not content_type:
        return True
    mime = content_type.partition(";")[0].strip().lower()
    main, _, sub = mime.partition("/")
    return main == "application" and (sub == "json" or sub.endswith("+json"))


def check_content_type(content_type: str | None) -> None:
    """Raise :class:`InvalidRequest` as Nomic does for a body it does not read as JSON."""
    if not is_json(content_type):
        raise InvalidRequest(
            "Input should be a valid dictionary or object to extract fields from "
            "(send Content-Type: application/json)",
            loc=("body",),
        )


def parse_text_request(
    body: bytes, limits: TextLimits, content_type: str | None = None
) -> TextRequest:
    """The request in ``body``; :class:`InvalidRequest` naming the first input Nomic would
    refuse (or the gateway's ``limits`` do)."""
    return text_request(json_object(body, limits, content_type), limits)


def json_object(
    body: bytes, limits: TextLimits, content_type: str | None = None, items: str = "texts"
) -> dict[str, object]:
    """The JSON object a texts body holds (of Nomic's route, or of OpenAI's, whose inputs are
    called ``items``); :class:`InvalidRequest` as Nomic answers a body it cannot read: none,
    not JSON (by its ``Content-Type`` or its bytes), more values than ``limits`` allow (counted
    before it is parsed), or not an object."""
    if not body:
        raise InvalidRequest("Field required", loc=("body",))
    check_content_type(content_type)
    if too_many_values(body, limits.max_texts + MAX_OTHER_VALUES):
        raise InvalidRequest(
            f"more JSON values than a request of at most {limits.max_texts} {items} holds",
            loc=("body",),
        )
    try:
        fields = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"JSON decode error: {exc.msg}", loc=("body", exc.pos)) from None
    if not isinstance(fields, dict):
        raise InvalidRequest(
            "Input should be a valid dictionary or object to extract fields from", loc=("body",)
        )
    return fields


def text_request(fields: dict[str, object], limits: TextLimits) -> TextRequest:
    """The request of a body's decoded ``fields``, Nomic's defaults filled in for those left
    out; :class:`InvalidRequest` naming the first input Nomic would refuse (or ``limits``)."""
    texts = _texts(fields, limits)
    model = _model(fields.get("model", DEFAULT_TEXT_MODEL), limits.models)
    task = fields.get("task_type")  # null, like none, is Nomic's default
    task_type = _choice(DEFAULT_TASK_TYPE if task is None else task, "task_type", TASK_TYPES)
    long_text_mode = _long_text_mode(fields)
    max_tokens = _max_tokens_per_text(fields, long_text_mode)
    dimensionality = _dimensionality(fields, model)
    return TextRequest(model.name, task_type, dimensionality, long_text_mode, max_tokens, texts,
                       model.context_tokens)  # fmt: skip


def too_many_values(body: bytes, most: int) -> bool:
    """Whether ``body`` has more than ``most`` commas and opening brackets outside its strings,
    found without building a value: every JSON value but the first follows one (a key and its
    value the same one), so ``body`` holds at most ``2 * most + 1`` values if not. Exact on
    JSON; on a body that is not, exact up to where the parser stops, and only ever too high
    past it. A C-speed pass over the body, and a step per string (at most ``2 * most + 1``)."""
    if b"\\" in body:  # escaped backslashes first: what is left of \" is an escaped quote
        body = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    separators = strings = start = 0
    while True:
        opening = body.find(b'"', start)
        end = len(body) if opening < 0 else opening
        separators += sum(body.count(char, start, end) for char in (b",", b"[", b"{"))
        if separators > most or strings > 2 * most + 1:
            return True
        closing = body.find(b'"', opening + 1) if opening >= 0 else -1
        if closing < 0:  # the end, or a string left open: the parser stops there
            return False
        strings += 1
        start = closing + 1


def _texts(fields: dict[str, object], limits: TextLimits) -> list[str]:
    if "texts" not in fields:
        raise InvalidRequest("Field required", loc=("body", "texts"))
    texts = fields["texts"]
    if not isinstance(texts, list):
        raise InvalidRequest("Input should be a valid list", loc=("body", "texts"))
    if not texts:
        raise InvalidRequest("texts must hold at least one text", loc=("body", "texts"))
    if len(texts) > limits.max_texts:
        raise InvalidRequest(
            f"more than {limits.max_texts} texts in one request",
            loc=("body", "texts", limits.max_texts),
        )
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise InvalidRequest("Input should be a valid string", loc=("body", "texts", index))
        if _utf8_length_over(text, limits.max_text_bytes):
            raise InvalidRequest(
                f"text longer than {limits.max_text_bytes} bytes in UTF-8",
                loc=("body", "texts", index),
            )
    return texts


def _utf8_length_over(text: str, limit: int) -> bool:
    if len(text) * 4 <= limit:  # no character takes more than 4 bytes: no need to encode
        return False
    return len(text) > limit or len(text.encode()) > limit


def _model(value: object, models: ModelTable) -> ModelInfo:
    if not isinstance(value, str):
        raise InvalidRequest("Input should be a valid string", loc=("body", "model"))
    return models.require(value, "text")


def _choice(value: object, name: str, allowed: frozenset[str]) -> str:
    if not isinstance(value, str):
        raise InvalidRequest("Input should be a valid string", loc=("body", name))
    if value not in allowed:
        raise InvalidRequest(
            f"unknown {name} {value[:100]!r}; expected one of {', '.join(sorted(allowed))}",
            loc=("body", name),
        )
    return value


def _long_text_mode(fields: dict[str, object]) -> LongTextMode:
    value = fields.get("long_text_mode", DEFAULT_LONG_TEXT_MODE)
    for mode in LONG_TEXT_MODES:
        if value == mode:
            return mode
    raise InvalidRequest("Input should be 'truncate' or 'mean'", loc=("body", "long_text_mode"))


def _max_tokens_per_text(fields: dict[str, object], mode: LongTextMode) -> int | None:
    if "max_tokens_per_text" not in fields:
        return DEFAULT_MEAN_MAX_TOKENS if mode == "mean" else None
    loc: Loc = ("body", "max_tokens_per_text")
    value = _integer(fields["max_tokens_per_text"], loc)
    if not 1 <= value <= MAX_TOKENS_PER_TEXT_CEILING:
        raise InvalidRequest(f"Input should be from 1 to {MAX_TOKENS_PER_TEXT_CEILING}", loc=loc)
    return value


def _dimensionality(fields: dict[str, object], model: ModelInfo) -> int | None:
    value = fields.get("dimensionality")
    if value is None:
        return None
    loc: Loc = ("body", "dimensionality")
    dimensionality = _integer(value, loc)
    problem = model.dimensionality_problem(dimensionality)
    if problem is not None:
        raise InvalidRequest(problem, loc=loc)
    return dimensionality


def _integer(value: object, loc: Loc) -> int:
    """A JSON integer: an int, or a float with no fraction (JSON does not tell them apart)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise InvalidRequest("Input should be a valid integer", loc=loc)
