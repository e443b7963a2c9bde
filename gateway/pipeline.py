"""A request's way through: look up, fetch what is missing, assemble the answer.

A request's items are keyed, deduplicated and looked up in one batched store call (the hot
in-process cache first). What is missing goes to the :class:`~gateway.fetch.Fetcher`, which
returns an outcome per key and what is still running; :func:`gateway.assembly.assemble` turns
the lookup and the outcomes into Nomic's answer and the request's bill (what it paid, what is
pending), with no I/O.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

from gateway import metrics
from gateway.assembly import Bill, Completed, Lookup, assemble
from gateway.entries import Entry
from gateway.fetch import Fetcher, stored_entry
from gateway.forms import ParsedRequest
from gateway.hot import HotCache
from gateway.keys import SHARED, cache_keys
from gateway.models import EMPTY_COSTS, Cost
from gateway.store import Store, StoreError

log = logging.getLogger(__name__)


class Pipeline:
    """Answers embedding requests from the store (``hot``, the in-process cache, in front),
    and through ``fetcher`` for what it misses. It builds nothing: the app composes it."""

    def __init__(
        self,
        store: Store,
        hot: HotCache,
        fetcher: Fetcher,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._hot = hot
        self.fetcher = fetcher
        self._clock = clock

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
        answer = assemble(lookup, fetched.outcomes, fetched.pending)
        return Completed(answer, Bill(answer.billed_tokens, fetched.pending))

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
