"""The hit path and the miss path: look up, deduplicate, forward misses, fill, assemble.

A request's items are keyed, deduplicated and looked up in one batched store call. Misses that
another request in this process is already fetching are awaited, not fetched again; the rest
are fetched upstream in batches by a task of their own, so a client that goes away does not
cancel a fetch that other requests wait for, and the result is stored all the same.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Sequence
from typing import Any, Literal, NamedTuple, Protocol

import orjson

from gateway import entries, metrics
from gateway.entries import Entry
from gateway.errors import GatewayError, ItemRejected, UpstreamError
from gateway.forms import Kind, ParsedRequest
from gateway.keys import cache_key
from gateway.quota import TokenEstimator
from gateway.store import Store, StoreError
from gateway.upstream import UpstreamItemRejected, UpstreamResult

log = logging.getLogger(__name__)

CacheStatus = Literal["HIT", "MISS", "PARTIAL"]

# Each rejection costs an upstream call; past this many in one batch the rest is not resent,
# so a request full of undecodable images cannot spend Nomic's rate limit one item at a time.
MAX_REJECTIONS_PER_BATCH = 3


class Lookup(NamedTuple):
    """A request after its one batched cache lookup."""

    request: ParsedRequest
    keys: list[str]  # one per input, in the client's order
    first_item: dict[str, bytes]  # each distinct key once, in order, with its content
    found: dict[str, Entry]
    missing: list[str]  # distinct keys not in the cache

    @property
    def cached_inputs(self) -> int:
        return sum(1 for key in self.keys if key in self.found)


class FetchFailed(Exception):
    """The request failed upstream; ``billed_tokens`` is what its items that did succeed
    cost (they are cached, and the team pays for them)."""

    def __init__(self, error: GatewayError, billed_tokens: int) -> None:
        super().__init__(error.msg)
        self.error = error
        self.billed_tokens = billed_tokens


class Embedder(Protocol):
    async def embed(self, model: str, kind: Kind, items: Sequence[bytes]) -> UpstreamResult: ...


class Answer(NamedTuple):
    """A request's answer and its accounting. ``misses`` are the inputs this request paid
    upstream for (billed); ``hits`` all the others: found in the cache, the same image again
    in the request, or fetched by a concurrent request. ``usage_tokens`` is what Nomic would
    have reported for the whole request; ``usage_tokens - billed_tokens`` is what was saved."""

    body: bytes
    hits: int
    misses: int
    billed_tokens: int
    usage_tokens: int

    @property
    def cache_status(self) -> CacheStatus:
        if not self.misses:
            return "HIT"
        return "PARTIAL" if self.hits else "MISS"


def split_tokens(total: int, count: int) -> list[int]:
    """Share a batch's ``total`` tokens over ``count`` items: evenly, the remainder one token
    each to the first items, so the shares always add up to exactly what Nomic billed."""
    base, extra = divmod(total, count)
    return [base + (1 if i < extra else 0) for i in range(count)]


def answer_body(model: str, embeddings: Sequence[bytes], usage_tokens: int) -> bytes:
    """Nomic's answer, spliced from the embeddings' JSON without re-encoding them."""
    usage = orjson.dumps({"prompt_tokens": usage_tokens, "total_tokens": usage_tokens})
    return b"".join(
        (b'{"embeddings":[', b",".join(embeddings), b'],"usage":', usage,
         b',"model":', orjson.dumps(model), b"}")
    )  # fmt: skip


class Pipeline:
    """Answers embedding requests from the store, and from upstream for what it misses."""

    def __init__(
        self,
        store: Store,
        upstream: Embedder,
        *,
        batch_size: int,
        url_ttl_seconds: int,
        estimator: TokenEstimator,
        linger_seconds: float = 2.0,
    ) -> None:
        self._estimator = estimator
        self._store = store
        self._upstream = upstream
        self._batch_size = batch_size
        self._url_ttl_seconds = url_ttl_seconds
        self._linger_seconds = linger_seconds
        self._inflight: dict[str, asyncio.Future[Entry]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def lookup(self, request: ParsedRequest) -> Lookup:
        """Key every input and look all of them up in one store call."""
        keys = [cache_key(request.model, request.kind, item) for item in request.items]
        first_item = dict(zip(keys, request.items, strict=True))  # same key, same content
        found = await self._lookup(list(first_item))
        missing = [key for key in first_item if key not in found]
        return Lookup(request, keys, first_item, found, missing)

    def assemble(self, lookup: Lookup) -> Answer:
        """The answer of a lookup that found everything."""
        return self._answer(lookup, {}, set())

    async def complete(self, lookup: Lookup) -> Answer:
        """Fetch what the lookup missed (joining fetches in flight) and answer; raises
        :class:`FetchFailed`."""
        waits, owned = self._claim(lookup.missing)
        if owned:
            pairs = [(key, lookup.first_item[key]) for key in owned]
            self._spawn(self._fetch(lookup.request, pairs))
        fetched: dict[str, Entry] = {}
        failed: dict[str, GatewayError] = {}
        for key, future in waits.items():
            try:
                fetched[key] = await asyncio.shield(future)
            except GatewayError as exc:
                failed[key] = exc
        if failed:
            billed = sum(fetched[key].tokens for key in owned if key in fetched)
            raise FetchFailed(_first_failure(lookup.request, lookup.keys, failed), billed)
        return self._answer(lookup, fetched, set(owned))

    async def _lookup(self, keys: list[str]) -> dict[str, Entry]:
        try:
            blobs = await self._store.get_many(keys)
        except StoreError as exc:
            metrics.STORE_ERRORS.labels(operation="get").inc()
            log.warning("cache lookup failed, answering from upstream: %s", exc)
            return {}
        found: dict[str, Entry] = {}
        for key, blob in zip(keys, blobs, strict=True):
            if blob is not None:
                try:
                    found[key] = entries.decode(blob)
                except entries.CorruptEntry:
                    log.warning("unreadable cache entry %s, fetching it again", key)
        return found

    def _claim(self, missing: list[str]) -> tuple[dict[str, asyncio.Future[Entry]], list[str]]:
        """Join fetches already in flight; claim the rest as this request's to fetch."""
        loop = asyncio.get_running_loop()
        waits: dict[str, asyncio.Future[Entry]] = {}
        owned: list[str] = []
        for key in missing:
            future = self._inflight.get(key)
            if future is None:
                future = self._inflight[key] = loop.create_future()
                future.add_done_callback(_consume_exception)
                owned.append(key)
            waits[key] = future
        return waits, owned

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _fetch(self, request: ParsedRequest, pairs: list[tuple[str, bytes]]) -> None:
        mine = {key: self._inflight[key] for key, _ in pairs}
        size = self._batch_size
        batches = [pairs[i : i + size] for i in range(0, len(pairs), size)]
        try:
            await asyncio.gather(*(self._fetch_batch(request, batch) for batch in batches))
        except Exception:
            log.exception("unexpected error fetching %d items upstream", len(pairs))
        finally:
            loop = asyncio.get_running_loop()
            for key, future in mine.items():
                if not future.done():
                    future.set_exception(UpstreamError("the upstream call was abandoned"))
                    self._forget(key, future)
                elif future.exception() is None:
                    # Lookups that began before the entry was stored may still miss it:
                    # they find the answer here for a while instead of fetching again.
                    loop.call_later(self._linger_seconds, self._forget, key, future)

    def _forget(self, key: str, future: asyncio.Future[Entry]) -> None:
        if self._inflight.get(key) is future:
            del self._inflight[key]

    async def _fetch_batch(self, request: ParsedRequest, pairs: list[tuple[str, bytes]]) -> None:
        rejections = 0
        while pairs:
            try:
                result = await self._upstream.embed(
                    request.model, request.kind, [item for _, item in pairs]
                )
            except UpstreamItemRejected as rejected:
                if not 0 <= rejected.index < len(pairs):
                    self._fail(pairs, UpstreamError("Nomic rejected an item it was not sent"))
                    return
                key, _ = pairs.pop(rejected.index)
                self._fail([(key, b"")], ItemRejected(f"rejected by Nomic: {rejected.msg}"))
                rejections += 1
                if rejections >= MAX_REJECTIONS_PER_BATCH:
                    error = UpstreamError("Nomic rejected several items sent with this one")
                    self._fail(pairs, error)
                    return
                continue  # the batch without the rejected item
            except GatewayError as exc:
                self._fail(pairs, exc)
                return
            await self._fill(request, pairs, result)
            return

    async def _fill(
        self, request: ParsedRequest, pairs: list[tuple[str, bytes]], result: UpstreamResult
    ) -> None:
        costs = split_tokens(result.total_tokens, len(pairs))
        try:
            stored = [
                (key, entries.encode(vector, tokens))
                for (key, _), vector, tokens in zip(pairs, result.embeddings, costs, strict=True)
            ]
        except ValueError:
            self._fail(pairs, UpstreamError("Nomic answered malformed embeddings"))
            return
        self._estimator.observe(request.model, result.total_tokens, len(pairs))
        for (key, _), vector, tokens in zip(pairs, result.embeddings, costs, strict=True):
            self._inflight[key].set_result(Entry(orjson.dumps(vector), tokens))
        ttl = None if request.kind == "image" else self._url_ttl_seconds
        try:
            await self._store.set_many(stored, ttl)
        except StoreError as exc:
            metrics.STORE_ERRORS.labels(operation="set").inc()
            log.warning("could not store %d fetched embeddings: %s", len(stored), exc)

    def _fail(self, pairs: list[tuple[str, bytes]], error: GatewayError) -> None:
        """Fail these items, and forget them at once: the next request asks upstream again."""
        for key, _ in pairs:
            future = self._inflight.pop(key)
            future.set_exception(error)

    def _answer(self, lookup: Lookup, fetched: dict[str, Entry], owned: set[str]) -> Answer:
        model = lookup.request.model
        embeddings: list[bytes] = []
        outcomes = {"hit": 0, "miss": 0, "coalesced": 0}
        usage = billed = 0
        for key in lookup.keys:
            entry = lookup.found.get(key)
            if entry is not None:
                outcomes["hit"] += 1
            else:
                entry = fetched[key]
                if key in owned:
                    owned.discard(key)  # the first place it stands is the one paid for
                    outcomes["miss"] += 1
                    billed += entry.tokens
                else:
                    outcomes["coalesced"] += 1
            embeddings.append(entry.embedding_json)
            usage += entry.tokens
        for outcome, count in outcomes.items():
            metrics.ITEMS.labels(model=model, outcome=outcome).inc(count)
        body = answer_body(model, embeddings, usage)
        misses = outcomes["miss"]
        return Answer(body, len(lookup.keys) - misses, misses, billed, usage)

    async def drain(self) -> None:
        """Wait for upstream fetches still running (at shutdown: their results get stored)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _first_failure(
    request: ParsedRequest, keys: list[str], failed: dict[str, GatewayError]
) -> GatewayError:
    """The first item Nomic rejected, pointed at its position; else the first failure."""
    failures = [(index, failed[key]) for index, key in enumerate(keys) if key in failed]
    for index, error in failures:
        if isinstance(error, ItemRejected):
            return ItemRejected(error.msg, loc=request.loc(index))
    return failures[0][1]


def _consume_exception(future: asyncio.Future[Entry]) -> None:
    """Mark a failed fetch's error as seen: a future no request waits on any more is fine."""
    if not future.cancelled():
        future.exception()
