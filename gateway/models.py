"""What the gateway embeds: Nomic's models it serves, the kinds of input, and what an input
costs (its token estimate and bound, and its share of a call's tokens). Pure.

One home for them, so the form parsers, the cache key, the shield's lanes and the Nomic client
agree on them. The text values and Nomic's defaults for them are as specified in
``/v1/embedding/text``'s schema (the API's defaults, which are not the official client's).
Which models are served, their sizes and contexts, is :mod:`gateway.model_table`'s.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Literal, NamedTuple

Kind = Literal["image", "url", "text"]  # image bytes, a URL Nomic fetches, or a text
DEFAULT_IMAGE_MODEL = "nomic-embed-vision-v1.5"

LongTextMode = Literal["truncate", "mean"]
LONG_TEXT_MODES: tuple[LongTextMode, ...] = ("truncate", "mean")
TASK_TYPES = frozenset({"search_document", "search_query", "classification", "clustering"})
DEFAULT_TEXT_MODEL = "nomic-embed-text-v1"  # Nomic's API default; the official client sends v1.5
DEFAULT_TASK_TYPE = "search_document"
DEFAULT_LONG_TEXT_MODE: LongTextMode = "mean"  # the API's; the official client sends "truncate"
DEFAULT_MEAN_MAX_TOKENS = 8192  # max_tokens_per_text when omitted in "mean" mode
MAX_TEXTS_PER_UPSTREAM_CALL = 10  # Nomic's backend limit since 2025 (the official client's batch)


class TextOptions(NamedTuple):
    """How a text is embedded, besides the model: what else changes its vector."""

    task_type: str
    dimensionality: int | None  # None: the model's full size
    long_text_mode: LongTextMode
    max_tokens_per_text: int | None  # None: Nomic's default for the mode
    # The model's context (ModelInfo.context_tokens): where "truncate" mode cuts a text when
    # max_tokens_per_text is None; None where unknown. Not in the key: the model fixes it.
    context_tokens: int | None = None


class Cost(NamedTuple):
    """An input's expected share of an upstream call's tokens, relative to the others' of
    the call (its weight), and the most tokens Nomic can bill for it (its bound; None where
    no bound is known). Worked out once per input of a request (:meth:`Spec.cost`)."""

    weight: int
    bound: int | None


ITEM_COST = Cost(1, None)  # an image or a URL: each costs the same, with no bound known
EMPTY_COSTS: Mapping[str, Cost] = MappingProxyType({})  # of a request with no texts


class Spec(NamedTuple):
    """How inputs are embedded, besides what they are: everything that changes the output
    (so all of it is in the cache key), and what every input of one upstream call shares
    (so the shield batches by it)."""

    model: str
    kind: Kind
    text: TextOptions | None = None  # for kind "text"

    def variant(self) -> str:
        """The text options as a key's part: empty for images and URLs."""
        if self.text is None:
            return ""
        task, dims, mode, tokens = self.text[:4]
        return f"{task}\0{'' if dims is None else dims}\0{mode}\0{'' if tokens is None else tokens}"

    def cost(self, content: bytes) -> Cost:
        """What an input is expected to cost: an image or URL weighs one and has no known
        bound; a text weighs :func:`text_tokens` and is bound by :func:`text_token_bound`,
        both within its token limit ("truncate" mode), the weight never past the bound."""
        if self.text is None:
            return ITEM_COST
        limit = self._token_limit()
        bound = text_token_bound(content, limit)
        return Cost(min(text_tokens(content, limit), bound), bound)

    def _token_limit(self) -> int | None:
        """Where a text is cut ("truncate" mode); None where it is not ("mean" mode)."""
        assert self.text is not None
        if self.text.long_text_mode != "truncate":
            return None
        return self.text.max_tokens_per_text or self.text.context_tokens


# Words, punctuation marks, and each CJK ideograph alone (as BERT's tokenizer splits them).
_IDEOGRAPHS = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f"
_PIECES = re.compile(f"[{_IDEOGRAPHS}]|[^\\W{_IDEOGRAPHS}]+|[^\\w\\s]")
_WHITESPACE = " \t\n\r\f\v\u00a0\u3000"  # no token of their own (some of what BERT skips)
_ASCII_WHITESPACE = b" \t\n\r\f\v"  # the same, of ASCII
SAMPLE_CHARACTERS = 4096  # of a longer text, what its token estimate reads


def text_tokens(text: bytes, most: int | None = None) -> int:
    """About how many tokens Nomic bills for a text (UTF-8): its words, punctuation marks and
    CJK ideographs, as a WordPiece tokenizer splits common text, at least one and at most
    ``most``. Rare and long words are split into more pieces by Nomic's tokenizer, so this
    undercounts them: :func:`text_token_bound` is what it can never exceed. A text longer than
    :data:`SAMPLE_CHARACTERS` is estimated from its beginning, scaled to its length: a regular
    expression over a whole document took 80 ms of the event loop per 512 KiB."""
    decoded = text.decode(errors="replace")
    if len(decoded) <= SAMPLE_CHARACTERS:
        pieces = len(_PIECES.findall(decoded))
    else:
        sampled = len(_PIECES.findall(decoded, 0, SAMPLE_CHARACTERS))
        pieces = math.ceil(sampled * len(decoded) / SAMPLE_CHARACTERS)
    return max(1, pieces if most is None else min(pieces, most))


def text_token_bound(text: bytes, most: int | None = None) -> int:
    """The most tokens a text (UTF-8) can cost, whatever the words: a WordPiece tokenizer
    makes a token of at most each character, and none of whitespace, once the text is
    decomposed as BERT's tokenizer decomposes it first (a Hangul syllable becomes two or
    three characters); at least one, and at most ``most`` (a truncating token limit). ASCII,
    which decomposes to itself, is counted as bytes (a few milliseconds per MiB)."""
    if text.isascii():
        characters = len(text.translate(None, _ASCII_WHITESPACE))
    else:
        decomposed = unicodedata.normalize("NFD", text.decode(errors="replace"))
        characters = len(decomposed) - sum(map(decomposed.count, _WHITESPACE))
    bound = max(1, characters)
    return bound if most is None else min(bound, max(1, most))


def split_tokens(
    total: int, weights: Sequence[int], bounds: Sequence[int | None] | None = None
) -> list[int]:
    """Share a call's ``total`` tokens over its items in proportion to their ``weights``, so
    that the shares add up to exactly what Nomic billed, and none passes its item's bound
    (the most it can cost; None: none known) while the bounds can hold the total: a share
    that would is cut to its bound and the rest shared again over the others. So an input
    whose tokens the weights underestimate (say, a text of rare words) pays for them itself,
    not the inputs that shared its call. Should Nomic bill past the bounds, every bounded
    item pays its bound and the excess is shared by weight."""
    if bounds is None or all(bound is None for bound in bounds):
        return _by_weight(total, weights)
    limits = [total if bound is None else bound for bound in bounds]
    if total > sum(limits):
        extra = _by_weight(total - sum(limits), weights)
        return [limit + more for limit, more in zip(limits, extra, strict=True)]
    shares = [0] * len(weights)
    open_items, left = list(range(len(weights))), total
    while True:
        split = _by_weight(left, [weights[i] for i in open_items])
        over = {i for i, share in zip(open_items, split, strict=True) if share > limits[i]}
        if not over:
            for i, share in zip(open_items, split, strict=True):
                shares[i] = share
            return shares
        for i in over:
            shares[i] = limits[i]
            left -= limits[i]
        open_items = [i for i in open_items if i not in over]


def _by_weight(total: int, weights: Sequence[int]) -> list[int]:
    """``total`` in proportion to ``weights`` (all 0: evenly), the tokens left by rounding
    down one each to the items that lost most to it (the first of equals first)."""
    if not any(weights):
        weights = [1] * len(weights)
    whole = sum(weights)
    shares = [total * weight // whole for weight in weights]
    lost = sorted(range(len(weights)), key=lambda i: -(total * weights[i] % whole))
    for i in lost[: total - sum(shares)]:
        shares[i] += 1
    return shares
