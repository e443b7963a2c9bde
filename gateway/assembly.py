"""A request's answer and its bill, from its lookup and what became of each key it missed.

Pure values and one pure function: :func:`assemble` takes the :class:`Lookup` and an
:class:`Outcome` per missing key and returns the :class:`Answer` (or raises
:class:`FetchFailed`), each with what the request pays upstream (a :class:`Bill`). The
pipeline does the I/O that produces these; the accounts settle the bill; neither reaches
into the other.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Literal, NamedTuple

from gateway import answers
from gateway.entries import Entry
from gateway.errors import GatewayError, ItemRejected
from gateway.forms import ParsedRequest
from gateway.models import EMPTY_COSTS, Cost

CacheStatus = Literal["HIT", "MISS", "PARTIAL", "STALE", "BYPASS"]
How = Literal["fetched", "joined", "replica", "stale", "failed"]


class Lookup(NamedTuple):
    """A request after its one batched cache lookup."""

    request: ParsedRequest
    cache_keys: list[str]  # one per input, in the client's order
    first_item: dict[str, bytes]  # each distinct key once, in order, with its content
    found: dict[str, Entry]
    missing: list[str]  # distinct keys not in the cache, or stale
    stale: dict[str, Entry]  # URL entries past their TTL: served only if Nomic fails
    bypassed: bool = False  # the store could not be read: everything went upstream
    first_cost: Mapping[str, Cost] = EMPTY_COSTS  # each distinct text key's cost, once

    def cost(self, key: str) -> Cost:
        """What the input of ``key`` is expected to cost (:meth:`gateway.models.Spec.cost`)."""
        found = self.first_cost.get(key)
        return found if found is not None else self.request.spec.cost(self.first_item[key])

    @property
    def cached_inputs(self) -> int:
        return sum(1 for key in self.cache_keys if key in self.found)


class Outcome(NamedTuple):
    """What became of one missing key. ``fetched``: upstream, for this request, which pays;
    ``joined``: another request's fetch in this process; ``replica``: stored by another
    replica meanwhile; ``stale``: Nomic failed, the stale entry serves; ``failed``: ``error``."""

    how: How
    entry: Entry | None = None
    error: GatewayError | None = None

    @property
    def paid(self) -> bool:
        return self.how == "fetched"


class Bill(NamedTuple):
    """What a request pays upstream: ``paid``, the tokens of what it fetched by the time it
    was answered (or failed); ``pending``, what its own fetches still running then will have
    cost once they end (they go on, and their entries are stored): None when none were."""

    paid: int = 0
    pending: asyncio.Future[int] | None = None

    async def pending_tokens(self) -> int:
        """What the fetches still running cost, once they end (0 if there were none)."""
        return 0 if self.pending is None else await self.pending


class Answer(NamedTuple):
    """A request's answer and its accounting. ``misses`` are the inputs this request paid
    upstream for (billed); ``hits`` all the others: found in the cache, the same image again
    in the request, fetched by a concurrent request, or served stale. ``usage_tokens`` is
    what Nomic would have reported for the whole request."""

    body: bytes
    hits: int
    misses: int
    billed_tokens: int
    usage_tokens: int
    stale: int = 0
    bypassed: bool = False
    cached: int = 0  # of the hits, those the lookup found

    @property
    def coalesced(self) -> int:
        """Hits that waited for a fetch of another request (here or on another replica)."""
        return self.hits - self.cached - self.stale

    @property
    def cache_status(self) -> CacheStatus:
        if self.bypassed:
            return "BYPASS"
        if self.stale:
            return "STALE"
        if not self.misses:
            return "HIT"
        return "PARTIAL" if self.hits else "MISS"


class Completed(NamedTuple):
    """A request with misses, answered, and its bill."""

    answer: Answer
    bill: Bill


class FetchFailed(Exception):
    """The request failed upstream with ``error``; its ``bill`` is what its items that did
    succeed cost (they are cached, and the team pays for them), and what its fetches still
    running will cost."""

    def __init__(self, error: GatewayError, bill: Bill) -> None:
        super().__init__(error.msg)
        self.error = error
        self.bill = bill

    @property
    def billed_tokens(self) -> int:
        return self.bill.paid


def assemble(
    lookup: Lookup,
    outcomes: Mapping[str, Outcome] | None = None,
    pending: asyncio.Future[int] | None = None,
) -> Answer:
    """The answer to a request from its lookup and the outcome of each key it missed; raises
    :class:`FetchFailed` (the first failure, at its position) if any failed, with the bill of
    what did succeed and ``pending`` (its fetches still running). An input the request paid
    for is a miss where it first stands; every other input is a hit."""
    outcomes = outcomes or {}
    failed = [(i, o.error) for i, key in enumerate(lookup.cache_keys)
              if (o := outcomes.get(key)) is not None and o.error is not None]  # fmt: skip
    paid = {key for key, outcome in outcomes.items() if outcome.paid}
    if failed:
        billed = sum(o.entry.tokens for o in outcomes.values() if o.paid and o.entry)
        raise FetchFailed(_first_failure(lookup.request, failed), Bill(billed, pending))
    answered: list[Entry] = []
    usage = billed = misses = cached = stale = 0
    for key in lookup.cache_keys:
        entry = lookup.found.get(key)
        if entry is not None:
            cached += 1
        else:
            outcome = outcomes[key]
            assert outcome.entry is not None
            entry = outcome.entry
            if key in paid:
                paid.discard(key)  # the first place it stands is the one paid for
                misses += 1
                billed += entry.tokens
            elif outcome.how == "stale":
                stale += 1
        answered.append(entry)
        usage += entry.tokens
    request = lookup.request
    body = answers.body(request.shape, request.model, answered, usage)
    hits = len(lookup.cache_keys) - misses
    return Answer(body, hits, misses, billed, usage, stale, lookup.bypassed, cached)


def _first_failure(
    request: ParsedRequest, failures: Sequence[tuple[int, GatewayError | None]]
) -> GatewayError:
    """The first item Nomic rejected, pointed at its position; else the first failure."""
    for index, error in failures:
        if isinstance(error, ItemRejected):
            return ItemRejected(error.msg, loc=request.loc(index))
    error = failures[0][1]
    assert error is not None
    return error
