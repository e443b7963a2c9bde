"""Fetching what the cache missed: each input upstream once, however many ask at once.

:meth:`Fetcher.fetch` takes a request's missing cache keys and returns an :class:`Outcome`
for each: what happened to it, and so who pays for it.

- In this process, one future per key in flight (:class:`gateway.in_flight.InFlight`): the
  first request to miss a key owns its fetch, later ones join it. An answered future is
  remembered a little longer, for lookups that began before the entry was stored.
- Across replicas (a shared store), the owner takes the key's in-flight mark; the same round
  trip reads the entry, in case another replica stored it since the lookup. A key marked by
  another replica is watched through the store until its entry appears (paid there), or its
  mark disappears without one (given up: this process fetches it). Marks are leases, renewed
  by their owner while it fetches, so a dead owner's mark lapses within ``lease_seconds``
  (:class:`gateway.marks.Marks`).
- The owned rest goes to the shield; each answer is stored, then its mark released.

A fetch this request owns that is still running at its deadline goes on: its entry is stored
for the next request, and what it cost is the request's bill still pending
(:attr:`Fetched.pending`), so it is still billed.

Its timings are the miss path's (:class:`gateway.timings.MissTimings`), and time is a
parameter: the clocks and the sleep it waits on are given, the real ones by default.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

from gateway import entries, metrics
from gateway.assembly import Outcome
from gateway.entries import Entry
from gateway.errors import CallsUsedUp, GatewayError, UpstreamError, UpstreamTimeout, Withdrawn
from gateway.hot import HotCache
from gateway.in_flight import InFlight, Landed, succeeded
from gateway.marks import Marks
from gateway.models import EMPTY_COSTS, Cost, Spec
from gateway.quota import TokenEstimator
from gateway.shield import Embedded, Job
from gateway.store import Store, StoreError
from gateway.store.base import Coordinator
from gateway.timings import MissTimings
from gateway.unattributed import Unattributed

log = logging.getLogger(__name__)

POLL_SECONDS = (0.02, 0.05, 0.1, 0.2)  # watching another replica's fetch: quick, then calmer


class Upstream(Protocol):
    """Where the owned misses go (:class:`gateway.shield.Shield`): a future for each job."""

    def submit(self, spec: Spec, jobs: Sequence[Job]) -> list[asyncio.Future[Embedded]]: ...


class Fetched(NamedTuple):
    """An outcome for each key; and, if this request's own fetches were still running at its
    deadline, what they will have cost upstream once they end (:func:`_late_tokens`)."""

    outcomes: dict[str, Outcome]
    pending: asyncio.Future[int] | None = None


class Owner(NamedTuple):
    """Who owns a fetch: its request (a number, which the shield counts resends by) and the
    request's team (which the shield batches apart once Nomic refuses one of its items, and
    whose calls it counts against ``calls_per_minute``)."""

    request: int
    team: str
    costs: Mapping[str, Cost] = EMPTY_COSTS  # its texts' costs by key, worked out once
    calls_per_minute: int | None = None  # the team's upstream_calls_per_minute


class Fetcher:
    def __init__(
        self,
        store: Store,
        upstream: Upstream,
        coordinator: Coordinator,
        hot: HotCache,
        estimator: TokenEstimator,
        timings: MissTimings,
        *,
        shares_fetches: bool,
        unattributed: Unattributed | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._store = store
        self._upstream = upstream
        self._unattributed = unattributed or Unattributed()  # what Nomic billed to no team
        self._hot = hot
        self._estimator = estimator
        self._timings = timings
        self._clock = clock
        self._monotonic = monotonic
        self._sleep = sleep
        self._owners = itertools.count()
        self._inflight = InFlight(
            timings.remember_seconds, clock=clock, monotonic=monotonic, sleep=sleep
        )
        self._marks = Marks(coordinator, timings.lease_seconds, shared=shares_fetches, sleep=sleep)
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def in_flight(self) -> int:
        """Keys being fetched or remembered in this process."""
        return len(self._inflight)

    async def fetch(
        self, spec: Spec, wanted: Mapping[str, bytes], stale: Mapping[str, Entry],
        deadline: float, team: str = "", costs: Mapping[str, Cost] = EMPTY_COSTS,
        calls_per_minute: int | None = None,
    ) -> Fetched:  # fmt: skip
        """An outcome for each key of ``wanted`` (key → content) by ``deadline`` (a
        ``time.monotonic()`` instant), for a request of ``team`` (whose upstream calls a
        minute are limited to ``calls_per_minute``); a key in ``stale`` is served stale if
        its fetch fails. ``costs``: what the texts are expected to cost, by key, if the
        request worked that out already."""
        owner = Owner(next(self._owners), team, costs, calls_per_minute)
        futures, owned = await self._start(spec, wanted, deadline, owner)
        await self._wait(futures.values(), deadline)
        # A fetch it joined that its owner withdrew (the owner's request used up its resends
        # on items Nomic refused, or its team its calls of the minute): this request takes it
        # over, once, on its own account.
        withdrawn = {k: wanted[k] for k, f in futures.items() if k not in owned and _withdrawn(f)}
        if withdrawn and self._monotonic() < deadline:
            again, taken = await self._start(spec, withdrawn, deadline, owner)
            futures.update(again)
            owned |= taken
            await self._wait(again.values(), deadline)
        outcomes: dict[str, Outcome] = {}
        late: list[asyncio.Future[Landed]] = []
        for key, future in futures.items():
            outcome = _outcome(future, key in owned)
            if not future.done() and key in owned:
                late.append(future)  # it goes on: billed when it ends, however this is answered
            if outcome.how == "failed" and key in stale:
                outcome = Outcome("stale", stale[key])
                metrics.STALE_SERVED.inc()
            outcomes[key] = outcome
        return Fetched(outcomes, asyncio.ensure_future(_late_tokens(late)) if late else None)

    async def _wait(self, futures: Iterable[asyncio.Future[Landed]], deadline: float) -> None:
        """Until every future is done, or ``deadline`` (a monotonic instant) comes."""
        pending = [f for f in futures if not f.done()]
        left = deadline - self._monotonic()
        if not pending or left <= 0:
            return
        timer: asyncio.Future[Any] = asyncio.ensure_future(self._sleep(left))
        try:
            while pending and not timer.done():
                await asyncio.wait([*pending, timer], return_when=asyncio.FIRST_COMPLETED)
                pending = [f for f in pending if not f.done()]
        finally:
            timer.cancel()

    async def _start(
        self, spec: Spec, wanted: Mapping[str, bytes], deadline: float, owner: Owner
    ) -> tuple[dict[str, asyncio.Future[Landed]], set[str]]:
        """Join what is in flight and send the rest upstream for ``owner``: each key's
        future, and the keys it owns."""
        futures, owned = self._inflight.join_or_own(wanted)
        if owned:
            try:
                await self._dispatch(
                    spec, {k: c for k, c in wanted.items() if k in owned}, deadline, owner
                )
            except BaseException:  # cancelled before the shield had them: nobody would
                self._fail(owned, UpstreamError("the request was cancelled"))
                raise
        return futures, owned

    async def _dispatch(
        self, spec: Spec, wanted: dict[str, bytes], deadline: float, owner: Owner
    ) -> None:
        """Send what no other replica is fetching to the shield; watch the rest."""
        elsewhere: dict[str, bytes] = {}
        if self._marks.shared:
            wanted, elsewhere = await self._mark(wanted)
        if wanted:
            costs = [owner.costs.get(key) or spec.cost(content) for key, content in wanted.items()]
            team, calls = owner.team, owner.calls_per_minute
            jobs = [
                Job(content, owner.request, deadline, cost.weight, cost.bound, team, calls)
                for content, cost in zip(wanted.values(), costs, strict=True)
            ]
            try:
                answers = self._upstream.submit(spec, jobs)
            except GatewayError as exc:
                self._fail(wanted, exc)
                self._spawn(self._marks.release(list(wanted)))
            else:
                weights = [job.weight for job in jobs]
                self._spawn(self._fill(spec, list(wanted), weights, answers))
        if elsewhere:
            self._spawn(self._watch(spec, elsewhere, deadline, owner))

    async def _mark(self, wanted: dict[str, bytes]) -> tuple[dict[str, bytes], dict[str, bytes]]:
        """Take the marks of ``wanted`` where no other replica holds one: what is now this
        process's to fetch, and what another replica fetches. What another replica stored
        since the lookup is answered here."""
        try:
            marks = await self._marks.claim(list(wanted))
        except StoreError:
            return wanted, {}  # no marks: fetch it here (maybe twice across replicas)
        mine: dict[str, bytes] = {}
        elsewhere: dict[str, bytes] = {}
        done: list[str] = []
        for (key, content), mark in zip(wanted.items(), marks, strict=True):
            entry = self._decode(key, mark.stored)
            if entry is not None:
                self._land(key, entry, here=False)
                if mark.held:
                    done.append(key)
            elif mark.held:
                mine[key] = content
            else:
                elsewhere[key] = content
        if done:
            self._spawn(self._marks.release(done))
        return mine, elsewhere

    async def _watch(
        self, spec: Spec, pending: dict[str, bytes], deadline: float, owner: Owner
    ) -> None:
        """Wait for other replicas' fetches through the store; take over any they drop."""
        metrics.REPLICA_WAITS.inc(len(pending))
        for attempt in itertools.count():
            if not pending:
                return
            if self._monotonic() >= deadline:
                error = UpstreamTimeout(
                    "another replica's upstream call did not finish in time", retry_after=1
                )
                self._fail(pending, error)
                return
            await self._sleep(POLL_SECONDS[min(attempt, len(POLL_SECONDS) - 1)])
            keys = list(pending)
            try:
                marks = await self._marks.read(keys)
            except StoreError:
                continue
            dropped: dict[str, bytes] = {}
            for key, mark in zip(keys, marks, strict=True):
                entry = self._decode(key, mark.stored)
                if entry is not None:
                    self._land(key, entry, here=False)
                    del pending[key]
                elif not mark.held:  # the mark went, and no entry came: given up, or lapsed
                    dropped[key] = pending.pop(key)
            if dropped:
                await self._dispatch(spec, dropped, deadline, owner)

    async def _fill(
        self, spec: Spec, keys: list[str], weights: list[int],
        answers: list[asyncio.Future[Embedded]],
    ) -> None:  # fmt: skip
        """Answer everyone waiting for ``keys`` as the shield answers, then store the entries
        and release the marks."""
        await asyncio.wait(answers)
        # What a URL points at may change: its entry is fresh for a while. An image's bytes or
        # a text are what they are: theirs never expire.
        url = spec.kind == "url"
        fresh_until = math.ceil(self._clock() + self._timings.url_ttl_seconds) if url else 0
        stored: list[tuple[str, bytes]] = []
        for key, weight, answer in zip(keys, weights, answers, strict=True):
            error = answer.exception()
            if error is not None:
                self._fail([key], _gateway_error(error))
                continue
            embedded = answer.result()
            try:
                blob = entries.encode(embedded.vector, embedded.tokens, fresh_until)
            except ValueError:  # billed all the same: charged to no team, counted
                self._unattributed.record("unstorable", tokens=embedded.tokens, items=1)
                self._fail([key], UpstreamError("Nomic answered a malformed embedding"))
                continue
            self._estimator.observe(spec.model, embedded.tokens, weight)
            entry = Entry(entries.vector_json(embedded.vector), embedded.tokens, fresh_until,
                          entries.base64_of(blob))  # fmt: skip
            self._land(key, entry, here=True)
            stored.append((key, blob))
        ttl = self._timings.url_ttl_seconds + self._timings.stale_grace_seconds if url else None
        try:
            await self._store.set_many(stored, ttl)
        except StoreError as exc:
            metrics.STORE_ERRORS.labels(operation="set").inc()
            log.warning("could not store %d fetched embeddings: %s", len(stored), exc)
        await self._marks.release(keys)  # after the store: a free mark and no entry means given up

    def _decode(self, key: str, blob: bytes | None) -> Entry | None:
        """The fresh entry of ``blob``, if it is one."""
        entry = stored_entry(key, blob)
        return entry if entry is not None and entry.fresh(self._clock()) else None

    def _land(self, key: str, entry: Entry, *, here: bool) -> None:
        self._hot.put(key, entry)
        self._inflight.land(key, entry, here=here)

    def _fail(self, keys: Iterable[str], error: GatewayError) -> None:
        self._inflight.fail(keys, error)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait for fills and watches still running (at shutdown: their results get stored)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._marks.stop()
        await self._inflight.stop()


def stored_entry(key: str, blob: bytes | None) -> Entry | None:
    """The entry a store holds under ``key``; None when it holds none, or one this version
    cannot read (logged: it is fetched again)."""
    if blob is None:
        return None
    try:
        return entries.decode(blob)
    except entries.CorruptEntry:
        log.warning("unreadable cache entry %s, fetching it again", key)
        return None


async def _late_tokens(late: Sequence[asyncio.Future[Landed]]) -> int:
    """What a request's fetches that outlived its deadline cost upstream, once they end."""
    await asyncio.wait(late)
    return sum(f.result().entry.tokens for f in late if succeeded(f) and f.result().here)


def _outcome(future: asyncio.Future[Landed], owned: bool) -> Outcome:
    if not future.done():
        # The fetch goes on, and stores its answer: a retry soon is likely a hit.
        timeout = UpstreamTimeout(
            "Nomic did not answer within the request's deadline", retry_after=1
        )
        return Outcome("failed", error=timeout)
    error = future.exception()
    if error is not None:
        return Outcome("failed", error=_gateway_error(error))
    landed = future.result()
    if not owned:
        return Outcome("joined", landed.entry)
    return Outcome("fetched" if landed.here else "replica", landed.entry)


def _gateway_error(error: BaseException) -> GatewayError:
    if isinstance(error, GatewayError):
        return error
    return UpstreamError("the upstream call failed unexpectedly")


def _withdrawn(future: asyncio.Future[Landed]) -> bool:
    """Whether the fetch failed for its owner's sake, not the item's: another may take it."""
    if not future.done() or future.cancelled():
        return False
    return isinstance(future.exception(), Withdrawn | CallsUsedUp)
