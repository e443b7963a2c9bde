"""What the gateway embeds: Nomic's models it serves, and the kinds of input. Pure.

One home for both, so the form parsers, the cache key, the shield's lanes and the Nomic client
agree on them. The text values and Nomic's defaults for them are as specified in
``/v1/embedding/text``'s schema (the API's defaults, which are not the official client's).
"""

from __future__ import annotations

from typing import Literal

Kind = Literal["image", "url"]  # image bytes, or a URL Nomic fetches
IMAGE_MODELS = frozenset({"nomic-embed-vision-v1", "nomic-embed-vision-v1.5"})
DEFAULT_IMAGE_MODEL = "nomic-embed-vision-v1.5"

LongTextMode = Literal["truncate", "mean"]
LONG_TEXT_MODES: tuple[LongTextMode, ...] = ("truncate", "mean")
TEXT_MODELS = frozenset({"nomic-embed-text-v1", "nomic-embed-text-v1.5"})
TASK_TYPES = frozenset({"search_document", "search_query", "classification", "clustering"})
DEFAULT_TEXT_MODEL = "nomic-embed-text-v1"  # Nomic's API default; the official client sends v1.5
DEFAULT_TASK_TYPE = "search_document"
DEFAULT_LONG_TEXT_MODE: LongTextMode = "mean"  # the API's; the official client sends "truncate"
DEFAULT_MEAN_MAX_TOKENS = 8192  # max_tokens_per_text when omitted in "mean" mode
TEXT_DIMENSIONS = 768  # every text model's full size
# The sizes a text model answers in: v1 only its full size; v1.5 (Matryoshka) any size from
# 64 to 768, as Nomic announces it (trained and evaluated at 768, 512, 256, 128 and 64).
TEXT_DIMENSIONALITIES: dict[str, range] = {
    "nomic-embed-text-v1": range(TEXT_DIMENSIONS, TEXT_DIMENSIONS + 1),
    "nomic-embed-text-v1.5": range(64, TEXT_DIMENSIONS + 1),
}
MAX_TEXTS_PER_UPSTREAM_CALL = 10  # Nomic's backend limit since 2025 (the official client's batch)
