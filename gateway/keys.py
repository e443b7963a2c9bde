"""Cache keys. Pure.

A key covers everything that changes the embedding: the model, the kind of input (image bytes
or URL) and the content itself. Keys are versioned (``v1``) so a change of format never reads
an old entry, and prefixed (``ng:``) so the gateway's keys are easy to find in a shared Redis.
"""

from __future__ import annotations

import xxhash

from gateway.forms import Kind

PREFIX = "ng:v1:emb:"


def cache_key(model: str, kind: Kind, content: bytes) -> str:
    """``ng:v1:emb:<xxh3_128 hex>`` over model, kind and content (NUL-separated)."""
    digest = xxhash.xxh3_128()
    digest.update(f"{model}\0{kind}\0".encode())
    digest.update(content)
    return PREFIX + digest.hexdigest()
