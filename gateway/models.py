"""What the gateway embeds: Nomic's models it serves, and the kinds of input. Pure.

One home for both, so the form parser, the cache key, the shield's lanes and the Nomic client
agree on them.
"""

from __future__ import annotations

from typing import Literal

Kind = Literal["image", "url"]  # image bytes, or a URL Nomic fetches
IMAGE_MODELS = frozenset({"nomic-embed-vision-v1", "nomic-embed-vision-v1.5"})
DEFAULT_IMAGE_MODEL = "nomic-embed-vision-v1.5"
