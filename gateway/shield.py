"""The upstream shield: many small, bursty misses become few, well-formed upstream calls.

Misses of every request (any team) wait in one lane per (model, kind). A lane's sender takes
a batch when it is full, or when the first miss in it has waited ``linger``; before it sends,
it takes a slot of the global concurrency cap and the next call of the global rate, both
shared by all replicas through the store, so misses that arrive meanwhile join the batch.
Failed calls are retried with exponential backoff and jitter, honouring Nomic's Retry-After,
within the batch's deadline; a circuit breaker stops calling a Nomic that keeps failing.

A batch Nomic rejects because of one item is sent again without it: only the request that
sent the item gets the error. Each request may cost at most ``MAX_REJECTIONS_PER_OWNER``
such resends; past that its other items fail too, so one request of undecodable images
cannot spend Nomic's rate limit item by item.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import random
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from gateway import metrics
from gateway.breaker import Breaker
from gateway.errors import (
    GatewayError,
    ItemRejected,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamServerError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.forms import Kind
from gateway.store import StoreError
from gateway.store.base import Coordinator
from gateway.upstream import UpstreamItemRejected, UpstreamResult

log = logging.getLogger(__name__)

MAX_REJECTIONS_PER_OWNER = 3
RETRYABLE = (UpstreamServerError, UpstreamUnavailable, UpstreamTimeout)


class Embedder(Protocol):
    async def embed(self, model: str, kind: Kind, items: Sequence[bytes]) -> UpstreamResult: ...


class Job(NamedTuple):
    """One item to fetch: its cache key, content, the request that asked, and by when."""

    key: str
    content: bytes
    owner: int
    deadline: float


class Sink(Protocol):
    """Where results go (the pipeline: it resolves waiting requests and fills the cache)."""

    async def filled(
        self, model: str, kind: Kind, jobs: list[Job], result: UpstreamResult
    ) -> None: ...

    def failed(self, jobs: list[Job], error: GatewayError) -> None: ...


class Policy(NamedTuple):
    batch_items: int = 64
    batch_bytes: int = 32 * 1024 * 1024
    linger_seconds: float = 0.005
    rate_calls: int = 1200
    rate_period_seconds: float = 300.0
    rate_burst: int = 1
    concurrency: int = 8
    queue_items: int = 10_000
    call_timeout_seconds: float = 30.0
    max_attempts: int = 6
    backoff_base_seconds: float = 0.25
    backoff_max_seconds: float = 8.0

    @property
    def interval_ms(self) -> int:
        return max(1, math.ceil(self.rate_period_seconds * 1000 / self.rate_calls))


def backoff(attempt: int, policy: Policy, retry_after: float | None, rng: random.Random) -> float:
    """Seconds before retry ``attempt`` (0-based): exponential with equal jitter, never less
    than what Nomic asked for in Retry-After."""
    ceiling = min(policy.backoff_max_seconds, policy.backoff_base_seconds * 2.0**attempt)
    delay = ceiling / 2 + rng.uniform(0, ceiling / 2)
    return max(delay, retry_after or 0.0)


def drain_seconds(items: int, size: int, policy: Policy, call_seconds: float) -> float:
    """About how long until the last of ``items`` queued misses (``size`` bytes in all) is
    answered: the calls they need (a call takes as many items of their average size as the
    batch limits allow, so large images go one a call), spaced by the rate past its burst,
    overlapping as the concurrency cap lets calls of ``call_seconds`` each."""
    if items <= 0:
        return 0.0
    per_call = policy.batch_items
    if size:
        per_call = max(1, min(per_call, policy.batch_bytes * items // size))
    calls = -(-items // per_call)
    by_rate = max(0, calls - policy.rate_burst) * policy.interval_ms / 1000 + call_seconds
    by_concurrency = -(-calls // policy.concurrency) * call_seconds
    return max(by_rate, by_concurrency)


@dataclass
class _Lane:
    model: str
    kind: Kind
    jobs: deque[Job] = field(default_factory=deque)
    bytes: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class Shield:
    def __init__(
        self,
        upstream: Embedder,
        coordinator: Coordinator,
        sink: Sink,
        policy: Policy,
        *,
        breaker: Breaker | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._upstream = upstream
        self._coordinator = coordinator
        self._sink = sink
        self.policy = policy
        self.breaker = breaker or Breaker()
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 (jitter, not secrets)
        self._lanes: dict[tuple[str, Kind], _Lane] = {}
        self._sends: set[asyncio.Task[None]] = set()
        self._holder = uuid.uuid4().hex
        self._slot_ids = itertools.count()
        self._call_seconds = 0.0  # how long upstream calls took lately (a moving average)
        self.queued = 0
        self.queued_bytes = 0

    def submit(self, model: str, kind: Kind, jobs: list[Job]) -> None:
        """Queue ``jobs``; raises :class:`UpstreamUnavailable` at once when the breaker is
        open, the queue is full, or the queue ahead of them cannot drain before their
        deadline (the jobs are then not queued). Retry-After says when the queue will have
        drained."""
        wait = self.breaker.retry_after()
        if wait > 0:
            raise UpstreamUnavailable("Nomic is failing; retry later", retry_after=wait)
        size = sum(len(job.content) for job in jobs)
        if self.queued + len(jobs) > self.policy.queue_items:
            raise UpstreamUnavailable(
                "the upstream queue is full; retry shortly",
                retry_after=self._drain_seconds(self.queued, self.queued_bytes),
            )
        expected = self._drain_seconds(self.queued + len(jobs), self.queued_bytes + size)
        if self._clock() + expected > min(job.deadline for job in jobs):
            raise UpstreamUnavailable(
                "Nomic's rate cannot take these misses before the request's deadline",
                retry_after=expected,
            )
        lane = self._lanes.get((model, kind))
        if lane is None:
            lane = self._lanes[(model, kind)] = _Lane(model, kind)
            lane.task = asyncio.create_task(self._run(lane))
        lane.jobs.extend(jobs)
        lane.bytes += size
        self.queued += len(jobs)
        self.queued_bytes += size
        metrics.UPSTREAM_QUEUE.set(self.queued)
        lane.arrived.set()

    def _drain_seconds(self, items: int, size: int) -> float:
        """About how long until the last of ``items`` queued misses (``size`` bytes) has
        been answered: see :func:`drain_seconds`."""
        return drain_seconds(items, size, self.policy, self._call_seconds)

    async def _run(self, lane: _Lane) -> None:
        while True:
            await lane.arrived.wait()
            if not lane.jobs:
                lane.arrived.clear()
                continue
            # A concurrency slot is taken while the batch lingers: a lone miss waits for the
            # linger or the slot, whichever is longer, not for both. The rate's next call is
            # taken last, so calls leave as evenly spaced as the rate grants them.
            taking = asyncio.create_task(self._take_slot(lane))
            try:
                await self._linger(lane)
                slot = await taking
            except BaseException:
                taking.cancel()
                raise
            if slot is None or not await self._paced(lane, slot):
                continue
            batch = self._take_batch(lane)
            if not lane.jobs:
                lane.arrived.clear()
            task = asyncio.create_task(self._send(lane, batch, slot))
            self._sends.add(task)
            task.add_done_callback(self._sends.discard)

    async def _linger(self, lane: _Lane) -> None:
        """Give other requests' misses ``linger`` to join, unless the batch is full."""
        until = self._clock() + self.policy.linger_seconds
        while not self._full(lane) and (left := until - self._clock()) > 0:
            lane.arrived.clear()
            try:
                await asyncio.wait_for(lane.arrived.wait(), left)
            except TimeoutError:
                break
        lane.arrived.set()

    def _full(self, lane: _Lane) -> bool:
        return len(lane.jobs) >= self.policy.batch_items or lane.bytes >= self.policy.batch_bytes

    async def _take_slot(self, lane: _Lane) -> str | None:
        """A concurrency slot; None (and the lane's jobs failed) if their deadline passes
        first or the store fails."""
        holder = f"{self._holder}:{next(self._slot_ids)}"
        deadline = max(job.deadline for job in lane.jobs)
        # The slot is held through retries and pauses until the batch's deadline at most.
        lease_ms = round((deadline - self._clock() + self.policy.call_timeout_seconds + 5) * 1000)
        try:
            while not await self._coordinator.acquire_slot(
                holder, self.policy.concurrency, lease_ms
            ):
                if self._clock() > deadline:
                    raise UpstreamUnavailable("too many upstream calls in flight", retry_after=1)
                await asyncio.sleep(0.005 + self._rng.uniform(0, 0.01))
        except (GatewayError, StoreError) as exc:
            await self._give_up(lane, holder, exc)
            return None
        return holder

    async def _paced(self, lane: _Lane, holder: str) -> bool:
        """The rate's next call for the lane's batch; False (the jobs failed) if it comes
        after their deadline or the store fails."""
        try:
            await self._pace(max(job.deadline for job in lane.jobs))
        except (GatewayError, StoreError) as exc:
            await self._give_up(lane, holder, exc)
            return False
        return True

    async def _give_up(self, lane: _Lane, holder: str, exc: GatewayError | StoreError) -> None:
        error = (
            exc
            if isinstance(exc, GatewayError)
            else UpstreamUnavailable(
                "the store that paces upstream calls is unavailable", retry_after=1
            )
        )
        await self._release(holder)
        self._fail(self._take_batch(lane, everything=True), error)
        lane.arrived.clear()

    async def _pace(self, deadline: float) -> None:
        """Wait for the next call the global rate allows, or raise if it comes too late."""
        left_ms = max(0, round((deadline - self._clock()) * 1000))
        wait_ms = await self._coordinator.pace(
            self.policy.interval_ms, self.policy.rate_burst, left_ms
        )
        if wait_ms < 0:
            raise UpstreamUnavailable(
                "Nomic's rate is used up for now", retry_after=left_ms / 1000 or 1
            )
        if wait_ms:
            metrics.UPSTREAM_PACED_SECONDS.observe(wait_ms / 1000)
            await asyncio.sleep(wait_ms / 1000)

    def _take_batch(self, lane: _Lane, everything: bool = False) -> list[Job]:
        batch: list[Job] = []
        size = 0
        while lane.jobs and (everything or len(batch) < self.policy.batch_items):
            job = lane.jobs[0]
            if batch and not everything and size + len(job.content) > self.policy.batch_bytes:
                break
            batch.append(lane.jobs.popleft())
            size += len(job.content)
        lane.bytes -= size
        self.queued -= len(batch)
        self.queued_bytes -= size
        metrics.UPSTREAM_QUEUE.set(self.queued)
        return batch

    async def _release(self, holder: str) -> None:
        try:
            await self._coordinator.release_slot(holder)
        except StoreError as exc:
            log.warning("could not release an upstream slot (its lease will end): %s", exc)

    async def _send(self, lane: _Lane, jobs: list[Job], holder: str) -> None:
        """Call Nomic for ``jobs`` until they are all answered or failed."""
        rejections: dict[int, int] = {}
        attempt = 0
        paced = True  # the first call's rate slot was taken before the batch
        try:
            while jobs:
                if not paced:
                    await self._pace(max(job.deadline for job in jobs))
                paced = False
                started = self._clock()
                try:
                    result = await self._upstream.embed(
                        lane.model, lane.kind, [job.content for job in jobs]
                    )
                except UpstreamItemRejected as rejected:
                    self.breaker.record_success()  # Nomic answered: it is up
                    jobs = self._reject(jobs, rejected, rejections)
                    continue
                except GatewayError as exc:
                    retry_in = await self._retry_in(exc, attempt, jobs)
                    if retry_in is None:
                        raise
                    metrics.UPSTREAM_RETRIES.labels(reason=type(exc).__name__).inc()
                    await asyncio.sleep(retry_in)
                    attempt += 1
                    continue
                self.breaker.record_success()
                self._call_seconds += (self._clock() - started - self._call_seconds) / 8
                await self._sink.filled(lane.model, lane.kind, jobs, result)
                return
        except GatewayError as exc:
            self._fail(jobs, exc)
        except Exception:
            log.exception("unexpected error calling Nomic for %d items", len(jobs))
            self._fail(jobs, UpstreamError("the upstream call failed unexpectedly"))
        finally:
            metrics.BREAKER_STATE.set(("closed", "half_open", "open").index(self.breaker.state))
            await self._release(holder)

    async def _hold(self, seconds: float | None) -> None:
        if seconds:
            try:
                await self._coordinator.hold(round(seconds * 1000))
            except StoreError as exc:
                log.warning("could not pause the shared upstream rate: %s", exc)

    async def _retry_in(self, error: GatewayError, attempt: int, jobs: list[Job]) -> float | None:
        """Seconds before retrying after ``error``, or None: not retryable, the breaker is
        open, or the retry could not finish before the batch's deadline."""
        if isinstance(error, UpstreamRateLimited):
            await self._hold(error.retry_after)  # Nomic's pause holds for every replica
        elif isinstance(error, RETRYABLE):
            self.breaker.record_failure()  # a rate limit is Nomic working, not failing
        if not isinstance(error, RETRYABLE) or attempt + 1 >= self.policy.max_attempts:
            return None
        if self.breaker.retry_after() > 0:
            error.retry_after = max(error.retry_after or 0, self.breaker.retry_after())
            return None
        delay = backoff(attempt, self.policy, error.retry_after, self._rng)
        if self._clock() + delay >= max(job.deadline for job in jobs):
            return None
        return delay

    def _reject(
        self, jobs: list[Job], rejected: UpstreamItemRejected, rejections: dict[int, int]
    ) -> list[Job]:
        """The batch without the item Nomic refused (and without the rest of the items of a
        request that has used up its resends)."""
        if not 0 <= rejected.index < len(jobs):
            self._fail(jobs, UpstreamError("Nomic rejected an item it was not sent"))
            return []
        bad = jobs[rejected.index]
        self._fail([bad], ItemRejected(f"rejected by Nomic: {rejected.msg}"))
        rest = jobs[: rejected.index] + jobs[rejected.index + 1 :]
        rejections[bad.owner] = rejections.get(bad.owner, 0) + 1
        if rejections[bad.owner] < MAX_REJECTIONS_PER_OWNER:
            return rest
        same_owner = [job for job in rest if job.owner == bad.owner]
        self._fail(same_owner, UpstreamError("Nomic rejected several items sent with this one"))
        return [job for job in rest if job.owner != bad.owner]

    def _fail(self, jobs: list[Job], error: GatewayError) -> None:
        if jobs:
            self._sink.failed(jobs, error)

    async def drain(self) -> None:
        """Wait for what is queued and in flight (at shutdown), then stop the lanes."""
        while self.queued or self._sends:
            if self._sends:
                await asyncio.gather(*self._sends, return_exceptions=True)
            else:
                await asyncio.sleep(0.01)
        for lane in self._lanes.values():
            if lane.task is not None:
                lane.task.cancel()
        await asyncio.gather(
            *(lane.task for lane in self._lanes.values() if lane.task is not None),
            return_exceptions=True,
        )
