"""OpenAI's embeddings API, as the gateway speaks it: the request of ``POST /v1/embeddings``
read into the texts request Nomic's route takes, and errors in OpenAI's shape. Pure.

The request (OpenAI's API reference): ``input``, a string or a list of strings; ``model``
(required); ``encoding_format``, ``"float"`` (the API's default) or ``"base64"`` (what the
OpenAI SDK sends unless told otherwise); ``dimensions`` (Nomic's ``dimensionality``, with
its rules per model); ``user``, read as the request's tag, the job its usage is kept under
(:mod:`gateway.tags`: the ``X-Gateway-Tag`` header wins when both are given; OpenAI takes
any string, so a ``user`` that is no tag is made one). Nomic's own options come as extension
fields (the SDK's ``extra_body``): ``task_type``, ``long_text_mode`` and
``max_tokens_per_text``. Left out, they are what the official ``nomic`` client sends
(``search_document``, ``truncate``, no token limit), not Nomic's API defaults, so a text
embedded through either API is one cache entry. Any other field is refused, as OpenAI
refuses it. Token ids (what some tools send after tokenizing for OpenAI's models) are refused
with a message to send text: the gateway has no tokenizer, and Nomic's is not OpenAI's.

Validation is Nomic's route's (:func:`gateway.text_forms.text_request`); its errors are
pointed at OpenAI's names (``input`` for ``texts``, ``dimensions`` for ``dimensionality``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from gateway import tags, text_forms
from gateway.answers import Shape
from gateway.errors import GatewayError, InvalidRequest, Loc, UnknownModel
from gateway.model_table import ModelTable
from gateway.text_forms import TextLimits, TextRequest

ENCODINGS: Mapping[str, Shape] = {"float": "openai", "base64": "openai-base64"}
NOMIC_FIELDS = ("task_type", "long_text_mode", "max_tokens_per_text")
FIELDS = frozenset({"input", "model", "encoding_format", "dimensions", "user", *NOMIC_FIELDS})
CLIENT_LONG_TEXT_MODE = "truncate"  # what the official nomic client sends
_OPENAI_NAMES = {"texts": "input", "dimensionality": "dimensions"}  # Nomic's name: OpenAI's
BUDGETS = frozenset({"tokens_per_day", "tokens_per_month"})  # of QuotaExceeded's limits


class EmbeddingsRequest(NamedTuple):
    """A validated ``/v1/embeddings`` request: the texts request, and its answer's shape."""

    texts: TextRequest
    shape: Shape
    tag: str = tags.UNTAGGED  # its user field's


def parse_embeddings_request(
    body: bytes,
    limits: TextLimits,
    aliases: Mapping[str, str],
    content_type: str | None = None,
) -> EmbeddingsRequest:
    """The request in ``body``, for one of the text models of ``limits.models`` (or of its
    ``aliases``, a name a tool may insist on mapped to one of them); :class:`InvalidRequest`
    naming what is wrong (an :class:`UnknownModel` for a model not served)."""
    fields = text_forms.json_object(body, limits, content_type, items="inputs")
    for name in fields:
        if name not in FIELDS:
            raise InvalidRequest(
                f"Unrecognized request argument supplied: {name[:40]}", loc=("body", name[:40])
            )
    model = _model(fields, limits.models, aliases)
    nomic: dict[str, object] = {"texts": _texts(fields), "model": model}
    nomic["dimensionality"] = fields.get("dimensions")
    nomic["task_type"] = fields.get("task_type")
    nomic["long_text_mode"] = fields.get("long_text_mode", CLIENT_LONG_TEXT_MODE)
    if "max_tokens_per_text" in fields:
        nomic["max_tokens_per_text"] = fields["max_tokens_per_text"]
    tag = _tag(fields.get("user"))
    try:
        texts = text_forms.text_request(nomic, limits)
    except InvalidRequest as exc:
        raise type(exc)(exc.msg, loc=openai_loc(exc.loc)) from None
    return EmbeddingsRequest(texts, _shape(fields), tag)


def _tag(user: object) -> str:
    """The tag ``user`` names (none: untagged; one that is no tag is made one, as OpenAI
    takes any string: :func:`tags.from_user`)."""
    if user is None:
        return tags.UNTAGGED
    if not isinstance(user, str):
        raise InvalidRequest("user must be a string", loc=("body", "user"))
    return tags.from_user(user)


def refuse_query(query: Iterable[str]) -> None:
    """Refuse a query parameter, naming it: OpenAI's endpoint takes none, and one dropped
    would be answered, and cached, as if it had not been sent."""
    for name in query:
        raise InvalidRequest(
            f"unknown query parameter {name[:40]!r}: /v1/embeddings takes none",
            loc=("query", name[:40]),
        )


def speaks_openai(path: str) -> bool:
    """Whether a request to ``path`` is answered in OpenAI's shape, errors too (a wrong
    method, a body too large): ``/v1/embeddings`` and ``/v1/models``."""
    return path in ("/v1/embeddings", "/v1/models") or path.startswith("/v1/models/")


def openai_loc(loc: Loc) -> Loc:
    """A loc of Nomic's texts request, in OpenAI's names."""
    if len(loc) >= 2 and isinstance(loc[1], str) and loc[1] in _OPENAI_NAMES:
        return (loc[0], _OPENAI_NAMES[loc[1]], *loc[2:])
    return loc


def _model(fields: dict[str, Any], models: ModelTable, aliases: Mapping[str, str]) -> str:
    if "model" not in fields:
        raise InvalidRequest("you must provide a model parameter", loc=("body", "model"))
    name = fields["model"]
    if not isinstance(name, str):
        raise InvalidRequest("model must be a string", loc=("body", "model"))
    model = aliases.get(name, name)
    if models.text_model(model) is None:
        names = ", ".join(sorted({*models.names("text"), *aliases}))
        raise UnknownModel(
            f"The model {name[:100]!r} does not exist here: the gateway serves {names}",
            loc=("body", "model"),
        )
    return model


def _texts(fields: dict[str, Any]) -> list[object]:
    if "input" not in fields:
        raise InvalidRequest("you must provide an input parameter", loc=("body", "input"))
    given = fields["input"]
    if isinstance(given, str):
        return [given]
    if not isinstance(given, list):
        raise InvalidRequest("input must be a string or a list of strings", loc=("body", "input"))
    if not given:
        raise InvalidRequest("input must not be an empty list", loc=("body", "input"))
    for index, item in enumerate(given):
        if isinstance(item, (int, list)) and not isinstance(item, bool):
            raise InvalidRequest(
                "token ids are not accepted: send the text itself (the gateway has no "
                "tokenizer, and Nomic's models do not read OpenAI's tokens)",
                loc=("body", "input", index),
            )
    return given


def _shape(fields: dict[str, Any]) -> Shape:
    encoding = fields.get("encoding_format")
    if encoding is None:
        return ENCODINGS["float"]
    if not isinstance(encoding, str) or encoding not in ENCODINGS:
        raise InvalidRequest(
            "encoding_format must be 'float' or 'base64'", loc=("body", "encoding_format")
        )
    return ENCODINGS[encoding]


def error_body(error: GatewayError) -> tuple[int, dict[str, object]]:
    """``error``'s status and body in OpenAI's shape, ``{"error": {"message", "type", "param",
    "code"}}``, with OpenAI's statuses: 400 for input the gateway refuses (Nomic's 422), 404
    for a model it does not serve; the others as on Nomic's routes. The OpenAI SDK raises its
    exception class of the status (``BadRequestError``, ``AuthenticationError``,
    ``NotFoundError``, ``RateLimitError``, ...)."""
    status, kind = error.status, "invalid_request_error"
    code: str | None = error.kind
    if isinstance(error, UnknownModel):
        status, code = 404, "model_not_found"
    elif status == 422:
        status, code = 400, None
    elif status == 401:
        code = "invalid_api_key"
    elif status == 429:
        budget = len(error.loc) == 2 and error.loc[1] in BUDGETS
        kind = code = "insufficient_quota" if budget else "rate_limit_exceeded"
    elif status >= 500:
        kind = "server_error"
    message = {"message": error.msg, "type": kind, "param": _param(error.loc), "code": code}
    return status, {"error": message}


def _param(loc: Loc) -> str | None:
    """The request field an error is about, as OpenAI names it (``input[3]``); None for
    what is not a field of the body."""
    if loc[:2] == ("header", tags.HEADER):
        return tags.HEADER
    if len(loc) < 2 or loc[0] not in ("body", "query") or not isinstance(loc[1], str):
        return None  # not a field (a decode error's position in the body)
    param = str(loc[1])
    return param + "".join(f"[{part}]" for part in loc[2:])
