"""Answer bodies: a request's embeddings spliced into the shape its client speaks, without
encoding a vector again. Pure.

- ``nomic``: Nomic's ``{"embeddings": [...], "usage": ..., "model": ...}``;
- ``openai``: OpenAI's list of ``{"object": "embedding", "index", "embedding"}``, the
  embedding a JSON array of floats (``encoding_format: "float"``);
- ``openai-base64``: the same, each embedding its little-endian float32s in base64
  (``encoding_format: "base64"``, what the OpenAI SDK asks for unless told otherwise).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import orjson

from gateway.entries import Entry

Shape = Literal["nomic", "openai", "openai-base64"]


def body(shape: Shape, model: str, entries: Sequence[Entry], usage_tokens: int) -> bytes:
    """The answer of ``entries`` (one per input, in the client's order) in ``shape``."""
    usage = orjson.dumps({"prompt_tokens": usage_tokens, "total_tokens": usage_tokens})
    if shape == "nomic":
        return nomic_body(model, [entry.embedding_json for entry in entries], usage)
    parts = [b'{"object":"list","data":[']
    for index, entry in enumerate(entries):
        if index:
            parts.append(b",")
        parts += b'{"object":"embedding","index":', b"%d" % index, b',"embedding":'
        if shape == "openai":
            parts += entry.embedding_json, b"}"
        else:
            parts += b'"', entry.float32_base64(), b'"}'
    parts += b'],"model":', orjson.dumps(model), b',"usage":', usage, b"}"
    return b"".join(parts)


def nomic_body(model: str, embeddings: Sequence[bytes], usage: bytes) -> bytes:
    """Nomic's answer of ``embeddings`` (JSON arrays) and ``usage`` (a JSON object)."""
    return b"".join(
        (b'{"embeddings":[', b",".join(embeddings), b'],"usage":', usage,
         b',"model":', orjson.dumps(model), b"}")
    )  # fmt: skip
