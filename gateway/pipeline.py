"""A request's way through: look up, fetch what is missing, assemble the answer.

A request's items are keyed, deduplicated and looked up in one batched store call (the hot
in-process cache first). What is missing goes to the :class:`~gateway.fetch.Fetcher`, which
returns an outcome per key; :func:`assemble` turns the lookup and the outcomes into Nomic's
answer (in the shape its client speaks, :mod:`gateway.answers`) and what the request pays
for, with no I/O.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Literal, NamedTuple

from gateway import answers, metrics
from gateway.breaker import Breaker
from gateway.entries import Entry
from gateway.errors import GatewayError, ItemRejected
from gateway.fetch import Fetcher, Landed, Outcome, stored_entry
from gateway.forms import ParsedRequest
from gateway.hot import HotCache
from gateway.keys import SHARED, cache_keys
from gateway.models import EMPTY_COSTS, Cost
from gateway.quota import TokenEstimator
from gateway.shield import Embedder, Policy, Shield
from gateway.store import Store, StoreError
from gateway.store.base import Coordinator
from gateway.unattributed import Unattributed

log = logging.getLogger(__name__)

CacheStatus = Literal["HIT", "MISS", "PARTIAL", "STALE", "BYPASS"]


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


class FetchFailed(Exception):
    """The request failed upstream; ``billed_tokens`` is what its items that did succeed
    cost (they are cached, and the team pays for them), and ``late`` its fetches that were
    still running (see :func:`gateway.fetch.late_tokens`: the team pays for those too)."""

    def __init__(
        self, error: GatewayError, billed_tokens: int, late: Sequence[asyncio.Future[Landed]] = ()
    ) -> None:
        super().__init__(error.msg)
        self.error = error
        self.billed_tokens = billed_tokens
        self.late = list(late)


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
    """A request's answer, and its own fetches still running (a stale entry answered in
    their place): :func:`gateway.fetch.late_tokens` says what they cost once they end."""

    answer: Answer
    late: list[asyncio.Future[Landed]]


def assemble(lookup: Lookup, outcomes: Mapping[str, Outcome] | None = None) -> Answer:
    """The answer to a request from its lookup and the outcome of each key it missed; raises
    :class:`FetchFailed` (the first failure, at its position) if any failed. An input the
    request paid for is a miss where it first stands; every other input is a hit. Pure."""
    outcomes = outcomes or {}
    failed = [(i, o.error) for i, key in enumerate(lookup.cache_keys)
              if (o := outcomes.get(key)) is not None and o.error is not None]  # fmt: skip
    paid = {key for key, outcome in outcomes.items() if outcome.paid}
    if failed:
        billed = sum(o.entry.tokens for o in outcomes.values() if o.paid and o.entry)
        raise FetchFailed(_first_failure(lookup.request, failed), billed)
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


def count_items(model: str, answer: Answer) -> None:
    """The answer's inputs in ``gateway_items_total`` (once the request is admitted)."""
    for outcome, count in (("hit", answer.cached), ("miss", answer.misses),
                           ("coalesced", answer.coalesced), ("stale", answer.stale)):  # fmt: skip
        metrics.child(metrics.ITEMS, model, outcome).inc(count)


class Pipeline:
    """Answers embedding requests from the store, and from upstream for what it misses."""

    def __init__(
        self,
        store: Store,
        upstream: Embedder,
        coordinator: Coordinator,
        *,
        policy: Policy,
        url_ttl_seconds: int,
        stale_grace_seconds: int,
        estimator: TokenEstimator,
        breaker: Breaker | None = None,
        remember_seconds: float = 2.0,
        lease_seconds: float = 3.0,
        shares_fetches: bool = False,
        hot_cache_bytes: int = 0,
        unattributed: Unattributed | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._clock = clock
        self._hot = HotCache(hot_cache_bytes)
        self.shield = Shield(
            upstream, coordinator, policy, breaker=breaker, lease_seconds=lease_seconds
        )
        self.fetcher = Fetcher(
            store, self.shield, coordinator, self._hot, estimator,
            url_ttl_seconds=url_ttl_seconds, stale_grace_seconds=stale_grace_seconds,
            shares_fetches=shares_fetches, remember_seconds=remember_seconds,
            lease_seconds=lease_seconds, unattributed=unattributed, clock=clock,
        )  # fmt: skip

    async def lookup(self, request: ParsedRequest, scope: str = SHARED) -> Lookup:
        """Key every input (in the cache of ``scope``) and look all of them up in one store
        call."""
        keys = cache_keys(request.spec, request.digests, scope)
        first_item = dict(zip(keys, request.items, strict=True))  # same key, same content
        now = self._clock()
        found = self._hot.get(first_item, now)
        readable = True
        if len(found) < len(first_item):
            cold = [key for key in first_item if key not in found]
            stored, readable = await self._read(cold)
            for key, entry in stored.items():
                self._hot.put(key, entry)
            found.update(stored)
        stale = {key: entry for key, entry in found.items() if not entry.fresh(now)}
        for key in stale:
            del found[key]
        missing = [key for key in first_item if key not in found]
        return Lookup(
            request, keys, first_item, found, missing, stale, not readable,
            _costs(request, keys, first_item, missing),
        )  # fmt: skip

    async def complete(
        self, lookup: Lookup, deadline: float, team: str = "", calls_per_minute: int | None = None
    ) -> Completed:
        """Fetch what the lookup missed (joining fetches in flight) and answer by ``deadline``
        (a ``time.monotonic()`` instant), for a request of ``team`` (its
        ``upstream_calls_per_minute``: ``calls_per_minute``); raises :class:`FetchFailed`."""
        request = lookup.request
        wanted = {key: lookup.first_item[key] for key in lookup.missing}
        fetched = await self.fetcher.fetch(
            request.spec, wanted, lookup.stale, deadline, team, lookup.first_cost,
            calls_per_minute,
        )  # fmt: skip
        try:
            return Completed(assemble(lookup, fetched.outcomes), fetched.late)
        except FetchFailed as failed:
            failed.late = fetched.late
            raise

    async def _read(self, keys: list[str]) -> tuple[dict[str, Entry], bool]:
        """The entries found, and whether the store could be read at all."""
        try:
            blobs = await self._store.get_many(keys)
        except StoreError as exc:
            metrics.STORE_ERRORS.labels(operation="get").inc()
            log.warning("cache lookup failed, answering from upstream: %s", exc)
            return {}, False
        found = {key: entry for key, blob in zip(keys, blobs, strict=True)
                 if (entry := stored_entry(key, blob)) is not None}  # fmt: skip
        return found, True

    async def drain(self) -> None:
        """Wait for upstream fetches still running (at shutdown: their results get stored).
        The fetcher's first: a watch of another replica's fetch that takes it over hands it
        to the shield, which must still be sending."""
        await self.fetcher.drain()
        await self.shield.drain()


def _costs(
    request: ParsedRequest, keys: list[str], first_item: dict[str, bytes], missing: list[str]
) -> Mapping[str, Cost]:
    """Each distinct text key's cost: those the parser worked out (a large body's, off the
    loop), else the misses' alone, worked out here once (a hit's cost is never needed)."""
    if request.costs:
        return dict(zip(keys, request.costs, strict=True))
    if request.text is None or not missing:
        return EMPTY_COSTS
    spec = request.spec
    return {key: spec.cost(first_item[key]) for key in missing}


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
