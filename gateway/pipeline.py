"""The hit path and the miss path: look up, deduplicate, forward misses, fill, assemble.

A request's items are keyed, deduplicated and looked up in one batched store call. A miss
that another request in this process is already fetching is awaited, not fetched again; one
that another replica is fetching (its in-flight mark is in the store) is awaited through the
store. The rest go to the upstream shield, which batches them with other requests' misses;
results come back here (:meth:`Pipeline.filled`), are stored, and answer every request that
waits for them, whether or not the request that asked first is still there.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
import uuid
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Literal, NamedTuple

import orjson

from gateway import entries, metrics
from gateway.breaker import Breaker
from gateway.entries import Entry
from gateway.errors import GatewayError, ItemRejected, UpstreamError, UpstreamTimeout
from gateway.forms import Kind, ParsedRequest
from gateway.hot import HotCache
from gateway.keys import SHARED, cache_key
from gateway.quota import TokenEstimator
from gateway.shield import Embedder, Job, Policy, Shield
from gateway.store import Store, StoreError
from gateway.store.base import Coordinator
from gateway.upstream import UpstreamResult

log = logging.getLogger(__name__)

CacheStatus = Literal["HIT", "MISS", "PARTIAL", "STALE", "BYPASS"]
POLL_SECONDS = (0.02, 0.05, 0.1, 0.2)  # watching another replica's fetch: quick, then calmer


class Lookup(NamedTuple):
    """A request after its one batched cache lookup."""

    request: ParsedRequest
    keys: list[str]  # one per input, in the client's order
    first_item: dict[str, bytes]  # each distinct key once, in order, with its content
    found: dict[str, Entry]
    missing: list[str]  # distinct keys not in the cache, or stale
    stale: dict[str, Entry]  # URL entries past their TTL: served only if Nomic fails
    bypassed: bool = False  # the store could not be read: everything went upstream

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

    @property
    def cache_status(self) -> CacheStatus:
        if self.bypassed:
            return "BYPASS"
        if self.stale:
            return "STALE"
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
        coordinator: Coordinator,
        *,
        policy: Policy,
        url_ttl_seconds: int,
        stale_grace_seconds: int,
        estimator: TokenEstimator,
        breaker: Breaker | None = None,
        linger_seconds: float = 2.0,
        shares_fetches: bool = False,
        hot_cache_bytes: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._coordinator = coordinator
        self._estimator = estimator
        self._url_ttl_seconds = url_ttl_seconds
        self._stale_grace_seconds = stale_grace_seconds
        self._linger_seconds = linger_seconds
        self._shares_fetches = shares_fetches
        self._clock = clock
        self._hot = HotCache(hot_cache_bytes)
        self._holder = uuid.uuid4().hex
        self._owners = itertools.count()
        self._inflight: dict[str, asyncio.Future[Entry]] = {}
        self._from_replicas: set[asyncio.Future[Entry]] = set()  # answered by another replica
        self._tasks: set[asyncio.Task[None]] = set()
        self.shield = Shield(upstream, coordinator, self, policy, breaker=breaker)

    async def lookup(self, request: ParsedRequest, scope: str = SHARED) -> Lookup:
        """Key every input (in the cache of ``scope``) and look all of them up in one store
        call."""
        keys = [cache_key(request.model, request.kind, d, scope) for d in request.digests]
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
        stale = {k: e for k, e in found.items() if e.fresh_until and e.fresh_until <= now}
        for key in stale:
            del found[key]
        missing = [key for key in first_item if key not in found]
        return Lookup(request, keys, first_item, found, missing, stale, not readable)

    def assemble(self, lookup: Lookup) -> Answer:
        """The answer of a lookup that found everything."""
        return self._answer(lookup, {}, set(), set())

    async def complete(self, lookup: Lookup, deadline: float) -> Answer:
        """Fetch what the lookup missed (joining fetches in flight) and answer by ``deadline``
        (a ``time.monotonic()`` instant); raises :class:`FetchFailed`."""
        waits, owned = self._claim(lookup.missing)
        if owned:
            pairs = [(key, lookup.first_item[key]) for key in owned]
            owner = next(self._owners)
            try:
                await self._dispatch(lookup.request, pairs, deadline, owner)
            except BaseException:  # cancelled before the shield had them: nobody would
                jobs = [Job(key, content, owner, deadline) for key, content in pairs]
                self.failed(jobs, UpstreamError("the request was cancelled"))
                raise
        fetched: dict[str, Entry] = {}
        failed: dict[str, GatewayError] = {}
        for key, future in waits.items():
            try:
                left = max(0.0, deadline - time.monotonic())
                fetched[key] = await asyncio.wait_for(asyncio.shield(future), left)
            except TimeoutError:
                failed[key] = UpstreamTimeout("Nomic did not answer within the request's deadline")
            except GatewayError as exc:
                failed[key] = exc
        served_stale = {key for key in failed if key in lookup.stale}
        for key in served_stale:
            fetched[key] = lookup.stale[key]
            del failed[key]
        metrics.STALE_SERVED.inc(len(served_stale))
        paid = {
            key for key in owned
            if key not in served_stale and waits[key] not in self._from_replicas
        }  # fmt: skip
        if failed:
            billed = sum(fetched[key].tokens for key in paid if key in fetched)
            raise FetchFailed(_first_failure(lookup.request, lookup.keys, failed), billed)
        return self._answer(lookup, fetched, paid, served_stale)

    async def _read(self, keys: list[str]) -> tuple[dict[str, Entry], bool]:
        """The entries found, and whether the store could be read at all."""
        try:
            blobs = await self._store.get_many(keys)
        except StoreError as exc:
            metrics.STORE_ERRORS.labels(operation="get").inc()
            log.warning("cache lookup failed, answering from upstream: %s", exc)
            return {}, False
        found: dict[str, Entry] = {}
        for key, blob in zip(keys, blobs, strict=True):
            if blob is not None:
                try:
                    found[key] = entries.decode(blob)
                except entries.CorruptEntry:
                    log.warning("unreadable cache entry %s, fetching it again", key)
        return found, True

    def _claim(self, missing: list[str]) -> tuple[dict[str, asyncio.Future[Entry]], list[str]]:
        """Join fetches already in flight; claim the rest as this request's to fetch."""
        loop = asyncio.get_running_loop()
        now = self._clock()
        waits: dict[str, asyncio.Future[Entry]] = {}
        owned: list[str] = []
        for key in missing:
            future = self._inflight.get(key)
            if future is not None and _stale(future, now):
                future = None  # a lingering answer that has since gone stale: fetch anew
            if future is None:
                future = self._inflight[key] = loop.create_future()
                future.add_done_callback(_consume_exception)
                owned.append(key)
            waits[key] = future
        return waits, owned

    async def _dispatch(
        self, request: ParsedRequest, pairs: list[tuple[str, bytes]], deadline: float, owner: int
    ) -> None:
        """Send what no other replica is fetching to the shield; watch the rest."""
        elsewhere: list[tuple[str, bytes]] = []
        if self._shares_fetches:
            pairs, elsewhere = await self._split_by_marks(pairs, deadline)
            pairs = await self._fetched_meanwhile(pairs)
        jobs = [Job(key, content, owner, deadline) for key, content in pairs]
        if jobs:
            try:
                self.shield.submit(request.model, request.kind, jobs)
            except GatewayError as exc:
                self.failed(jobs, exc)
        if elsewhere:
            self._spawn(self._watch(request, elsewhere, deadline, owner))

    async def _split_by_marks(
        self, pairs: list[tuple[str, bytes]], deadline: float
    ) -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]]]:
        """Mark these keys as fetched by this replica where no other replica's mark is."""
        ttl_ms = round(max(1.0, deadline - time.monotonic()) * 1000)
        try:
            mine = await self._coordinator.claim_fetches(
                [k for k, _ in pairs], self._holder, ttl_ms
            )
        except StoreError:
            return pairs, []
        claimed = [pair for pair, ok in zip(pairs, mine, strict=True) if ok]
        return claimed, [pair for pair, ok in zip(pairs, mine, strict=True) if not ok]

    async def _fetched_meanwhile(self, pairs: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
        """Drop what another replica stored between this request's lookup and its marks.

        An owner stores its entry before it unmarks it, so a mark taken after that unmark
        finds the entry on this second read (in one process, the lingering future does it).
        """
        if not pairs:
            return pairs
        found, _ = await self._read([key for key, _ in pairs])
        now = self._clock()
        done = {k for k, e in found.items() if not (e.fresh_until and e.fresh_until <= now)}
        for key in done:
            self._resolve_from_replica(key, found[key])
        if done:
            await self._unmark(list(done))
        return [(key, content) for key, content in pairs if key not in done]

    async def _watch(
        self, request: ParsedRequest, pairs: list[tuple[str, bytes]], deadline: float, owner: int
    ) -> None:
        """Wait for other replicas' fetches through the store; take over any they drop."""
        metrics.REPLICA_WAITS.inc(len(pairs))
        pending = dict(pairs)
        for attempt in itertools.count():
            if not pending:
                return
            if time.monotonic() >= deadline:
                error = UpstreamTimeout("another replica's upstream call did not finish in time")
                self.failed([Job(k, c, owner, deadline) for k, c in pending.items()], error)
                return
            await asyncio.sleep(POLL_SECONDS[min(attempt, len(POLL_SECONDS) - 1)])
            keys = list(pending)
            try:
                # The mark first: an owner stores its entry before it unmarks, so a key
                # unmarked before the read and missing from it was given up.
                marks = await self._coordinator.fetching(keys)
                found, readable = await self._read(keys)
            except StoreError:
                continue
            if not readable:
                continue
            now = self._clock()
            for key in keys:
                entry = found.get(key)
                if entry is not None and not (entry.fresh_until and entry.fresh_until <= now):
                    self._resolve_from_replica(key, entry)
                    del pending[key]
            dropped = [
                (key, pending.pop(key))
                for key, mark in zip(keys, marks, strict=True)
                if not mark and key in pending
            ]
            if dropped:
                await self._dispatch(request, dropped, deadline, owner)

    async def filled(self, model: str, kind: Kind, jobs: list[Job], result: UpstreamResult) -> None:
        """Store a batch's results and answer everyone waiting for them (the shield's sink)."""
        costs = split_tokens(result.total_tokens, len(jobs))
        fresh_until = 0 if kind == "image" else math.ceil(self._clock() + self._url_ttl_seconds)
        try:
            stored = [
                (job.key, entries.encode(vector, tokens, fresh_until))
                for job, vector, tokens in zip(jobs, result.embeddings, costs, strict=True)
            ]
        except ValueError:
            self.failed(jobs, UpstreamError("Nomic answered malformed embeddings"))
            return
        self._estimator.observe(model, result.total_tokens, len(jobs))
        for job, vector, tokens in zip(jobs, result.embeddings, costs, strict=True):
            self._resolve(job.key, Entry(orjson.dumps(vector), tokens, fresh_until))
        ttl = None if kind == "image" else self._url_ttl_seconds + self._stale_grace_seconds
        try:
            await self._store.set_many(stored, ttl)
        except StoreError as exc:
            metrics.STORE_ERRORS.labels(operation="set").inc()
            log.warning("could not store %d fetched embeddings: %s", len(stored), exc)
        await self._unmark([job.key for job in jobs])

    def failed(self, jobs: list[Job], error: GatewayError) -> None:
        """Fail these items, and forget them at once: the next request asks again."""
        for job in jobs:
            future = self._inflight.get(job.key)
            if future is not None and not future.done():
                del self._inflight[job.key]
                future.set_exception(error)
        if self._shares_fetches:
            self._spawn(self._unmark([job.key for job in jobs]))

    def _resolve_from_replica(self, key: str, entry: Entry) -> None:
        future = self._inflight.get(key)
        if future is not None and not future.done():
            self._from_replicas.add(future)  # not billed here: not fetched here
        self._resolve(key, entry)

    def _resolve(self, key: str, entry: Entry) -> None:
        self._hot.put(key, entry)
        future = self._inflight.get(key)
        if future is not None and not future.done():
            future.set_result(entry)
            # Lookups that began before the entry was stored may still miss it: they find
            # the answer here for a while instead of fetching again.
            asyncio.get_running_loop().call_later(self._linger_seconds, self._forget, key, future)

    async def _unmark(self, keys: list[str]) -> None:
        if self._shares_fetches:
            try:
                await self._coordinator.release_fetches(keys, self._holder)
            except StoreError as exc:
                log.warning("in-flight marks left to expire: %s", exc)

    def _forget(self, key: str, future: asyncio.Future[Entry]) -> None:
        self._from_replicas.discard(future)
        if self._inflight.get(key) is future:
            del self._inflight[key]

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _answer(
        self, lookup: Lookup, fetched: dict[str, Entry], owned: set[str], stale: set[str]
    ) -> Answer:
        model = lookup.request.model
        embeddings: list[bytes] = []
        outcomes = {"hit": 0, "miss": 0, "coalesced": 0, "stale": 0}
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
                    outcomes["stale" if key in stale else "coalesced"] += 1
            embeddings.append(entry.embedding_json)
            usage += entry.tokens
        for outcome, count in outcomes.items():
            metrics.child(metrics.ITEMS, model, outcome).inc(count)
        body = answer_body(model, embeddings, usage)
        misses = outcomes["miss"]
        hits = len(lookup.keys) - misses
        return Answer(body, hits, misses, billed, usage, outcomes["stale"], lookup.bypassed)

    async def drain(self) -> None:
        """Wait for upstream fetches still running (at shutdown: their results get stored)."""
        await self.shield.drain()
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


def _stale(future: asyncio.Future[Entry], now: float) -> bool:
    if not future.done() or future.cancelled() or future.exception() is not None:
        return False
    fresh_until = future.result().fresh_until
    return bool(fresh_until) and fresh_until <= now


def _consume_exception(future: asyncio.Future[Entry]) -> None:
    """Mark a failed fetch's error as seen: a future no request waits on any more is fine."""
    if not future.cancelled():
        future.exception()
