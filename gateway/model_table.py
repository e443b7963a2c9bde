"""The models the gateway serves: one table, Nomic's defaults plus the operator's. Pure.

Each model has a kind (``text`` or ``image``), a full size, the sizes it answers in (a text
model's ``dimensionality``: its full size only, or a Matryoshka range down to a smallest size)
and, for text, its context in tokens (where ``"truncate"`` mode cuts a text, which bounds what
a text can cost; None where no source says). A model not in the table is refused before Nomic.

The operator extends or overrides the table without a release: ``GATEWAY_MODELS`` holds a JSON
object (or names a file holding one) read once at start-up by :func:`extended_by_json`::

    {"nomic-embed-text-v3": {"kind": "text", "dimensions": 1024,
                             "smallest_dimensionality": 128, "context_tokens": 8192},
     "nomic-embed-code": null}

(a name the defaults hold is replaced; ``null`` stops serving it). The table in effect is
``Settings.models``: in a request handler, ``request.app[SETTINGS].models``
(:data:`gateway.appkeys.SETTINGS`); the form parsers get it in their limits
(``TextLimits.models``, ``BodyLimits.models``).

For a request handler::

    info = table.text_model(name)              # ModelInfo | None
    problem = info.dimensionality_problem(256)  # str | None, Nomic's route's 422 message
    table.models()                              # every model served, sorted, for a listing
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Literal, NamedTuple

from gateway.errors import InvalidRequest, Loc
from gateway.models import DEFAULT_IMAGE_MODEL, DEFAULT_TEXT_MODEL

ModelKind = Literal["text", "image"]  # an image model embeds image bytes and URLs alike
MODEL_KINDS: tuple[ModelKind, ...] = ("text", "image")
MAX_NAME_LENGTH = 100
MAX_DIMENSIONS = 65_536
MAX_CONTEXT_TOKENS = 2**31 - 1


class ModelInfo(NamedTuple):
    """One model the gateway serves."""

    name: str
    kind: ModelKind
    dimensions: int  # its full size: what it answers when no dimensionality is asked
    smallest: int  # the smallest dimensionality it answers in: ``dimensions`` if not Matryoshka
    context_tokens: int | None = None  # text: where "truncate" cuts; None: unknown (no cut)

    @property
    def sizes(self) -> range:
        """Every ``dimensionality`` it answers in."""
        return range(self.smallest, self.dimensions + 1)

    def dimensionality_problem(self, dimensionality: int) -> str | None:
        """Why it does not answer in ``dimensionality`` dimensions (the message Nomic's text
        route answers in its 422); None if it does."""
        if dimensionality in self.sizes:
            return None
        if self.smallest == self.dimensions:
            return (
                f"{self.name} has no Matryoshka sizes: dimensionality must be "
                f"{self.dimensions} or null"
            )
        return f"{self.name} answers in {self.smallest} to {self.dimensions} dimensions"


class ModelTable:
    """The models served, by name; immutable."""

    __slots__ = ("_by_name",)

    def __init__(self, models: Iterable[ModelInfo]) -> None:
        self._by_name: Mapping[str, ModelInfo] = MappingProxyType(
            {model.name: model for model in sorted(models, key=lambda model: model.name)}
        )

    def __reduce__(self) -> tuple[type[ModelTable], tuple[tuple[ModelInfo, ...]]]:
        """Pickled as its models: ``--workers`` sends the settings to its processes."""
        return ModelTable, (tuple(self._by_name.values()),)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ModelTable) and dict(self._by_name) == dict(other._by_name)

    def __hash__(self) -> int:
        return hash(tuple(self._by_name.values()))

    def __repr__(self) -> str:
        return f"ModelTable({', '.join(self._by_name)})"

    def model(self, name: str, kind: ModelKind) -> ModelInfo | None:
        """The model called ``name`` if it is one of ``kind``."""
        info = self._by_name.get(name)
        return info if info is not None and info.kind == kind else None

    def text_model(self, name: str) -> ModelInfo | None:
        return self.model(name, "text")

    def image_model(self, name: str) -> ModelInfo | None:
        return self.model(name, "image")

    def models(self, kind: ModelKind | None = None) -> tuple[ModelInfo, ...]:
        """Every model served (of ``kind``), by name."""
        return tuple(info for info in self._by_name.values() if kind in (None, info.kind))

    def names(self, kind: ModelKind) -> tuple[str, ...]:
        return tuple(info.name for info in self.models(kind))

    def require(self, name: str, kind: ModelKind, loc: Loc = ("body", "model")) -> ModelInfo:
        """The model called ``name`` of ``kind``, or the 422 naming the ones served."""
        info = self.model(name, kind)
        if info is None:
            raise InvalidRequest(
                f"unknown model {name[:MAX_NAME_LENGTH]!r}; expected one of "
                f"{', '.join(self.names(kind))}",
                loc=loc,
            )
        return info

    def replaced(self, changes: Mapping[str, ModelInfo | None]) -> ModelTable:
        """This table with each named model replaced (or added), or removed where None."""
        models = {**self._by_name, **changes}
        return ModelTable(info for info in models.values() if info is not None)


def _text(name: str, dimensions: int, smallest: int, context: int | None) -> ModelInfo:
    return ModelInfo(name, "text", dimensions, smallest, context)


def _image(name: str, dimensions: int) -> ModelInfo:
    return ModelInfo(name, "image", dimensions, dimensions)


# The models Nomic's embedding API takes, as its generated schema lists them: the enums
# NomicTextEmbeddingModel and NomicVisionEmbeddingModel of src/type-gen/openapi.ts in
# github.com/nomic-ai/ts-nomic (commit 88059e0, 2025-09-15). The schema gives no sizes or
# contexts; those are from each model's Hugging Face card, cited per line. Whether Nomic's API
# honours every size a card documents is not documented: a size it refused would be an
# upstream error (its 422 names no input), nothing cached, and GATEWAY_MODELS corrects it.
DEFAULT_MODELS = ModelTable(
    [
        # huggingface.co/nomic-ai/nomic-embed-text-v1: "8192 context length", 768 dimensions
        # (the v1.5 card's table); Matryoshka came with v1.5, so v1 answers in 768 only.
        _text("nomic-embed-text-v1", 768, 768, 8192),
        # huggingface.co/nomic-ai/nomic-embed-text-v1.5: SeqLen 8192; Matryoshka, evaluated
        # at 768, 512, 256, 128 and 64 (Nomic announces any size from 64 to 768).
        _text("nomic-embed-text-v1.5", 768, 64, 8192),
        # huggingface.co/nomic-ai/nomic-embed-text-v2-moe (Nomic's only v2 text model):
        # "Supports flexible dimension from 768 to 256 through Matryoshka representation
        # learning", "Maximum Sequence Length: 512 tokens".
        _text("nomic-embed-text-v2", 768, 256, 512),
        # huggingface.co/nomic-ai/nomic-embed-code: its card, as found, states neither its
        # size nor its context. 3584 is the width Nomic's GGUF release of it answers in
        # (hf.co/nomic-ai/nomic-embed-code-GGUF, measured in a third-party comparison); no
        # Matryoshka sizes are documented, so its full size only; no context (no cut known:
        # a text's cost bound is its length).
        _text("nomic-embed-code", 3584, 3584, None),
        # huggingface.co/Alibaba-NLP/gte-multilingual-base: "Embedding Dimension: 768",
        # "Max Input Tokens: 8192", elastic dense embedding (its usage: a dimension in
        # [128, 768]).
        _text("gte-multilingual-base", 768, 128, 8192),
        # huggingface.co/sentence-transformers/all-MiniLM-L6-v2: "a 384 dimensional dense
        # vector space"; "input text longer than 256 word pieces is truncated".
        _text("all-MiniLM-L6-v2", 384, 384, 256),
        # huggingface.co/nomic-ai/nomic-embed-vision-v1 and -v1.5: aligned to (in the same
        # 768-dimensional space as) nomic-embed-text-v1 and -v1.5.
        _image("nomic-embed-vision-v1", 768),
        _image("nomic-embed-vision-v1.5", 768),
    ]
)

_FIELDS = frozenset({"kind", "dimensions", "smallest_dimensionality", "context_tokens"})


def extended_by_json(raw: str | bytes, base: ModelTable = DEFAULT_MODELS) -> ModelTable:
    """``base`` with the operator's models: a JSON object of model name to its description
    (``kind``, ``dimensions``, and for text ``smallest_dimensionality`` and
    ``context_tokens``, both optional) or to null (no longer served). :class:`ValueError`
    naming the first model or field that is not valid."""
    try:
        document = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"is not JSON ({exc})") from None
    if not isinstance(document, dict):
        raise ValueError("must be a JSON object of model names to their descriptions or null")
    changes = {name: _described(name, value) for name, value in document.items()}
    for default in (DEFAULT_TEXT_MODEL, DEFAULT_IMAGE_MODEL):
        if default in changes and changes[default] is None:
            raise ValueError(f"model {default!r} is the default of requests that name none: "
                             "it cannot be removed")  # fmt: skip
    return base.replaced(changes)


def _described(name: str, value: object) -> ModelInfo | None:
    if not (0 < len(name) <= MAX_NAME_LENGTH and name.isascii() and name.isprintable()
            and " " not in name):  # fmt: skip
        raise ValueError(
            f"model name {name[:MAX_NAME_LENGTH]!r} must be 1 to {MAX_NAME_LENGTH} printable "
            "ASCII characters without spaces"
        )
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError(f"model {name!r} must be an object or null")
    unknown = sorted(set(value) - _FIELDS)
    if unknown:
        raise ValueError(f"model {name!r} has unknown field {unknown[0]!r}; expected "
                         f"{', '.join(sorted(_FIELDS))}")  # fmt: skip
    kind = value.get("kind")
    if kind not in MODEL_KINDS:
        raise ValueError(f'model {name!r}: kind must be "text" or "image"')
    dimensions = _whole(value.get("dimensions"), name, "dimensions", 1, MAX_DIMENSIONS)
    if kind == "image":
        for field in ("smallest_dimensionality", "context_tokens"):
            if field in value:
                raise ValueError(f"model {name!r}: an image model has no {field}")
        return _image(name, dimensions)
    smallest = value.get("smallest_dimensionality", dimensions)
    smallest = _whole(smallest, name, "smallest_dimensionality", 1, dimensions)
    context = value.get("context_tokens")
    if context is not None:
        context = _whole(context, name, "context_tokens", 1, MAX_CONTEXT_TOKENS)
    return _text(name, dimensions, smallest, context)


def _whole(value: object, name: str, field: str, least: int, most: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not least <= value <= most:
        raise ValueError(f"model {name!r}: {field} must be a whole number from {least} to {most}")
    return value
