"""The upstream shield: many small, bursty misses become few, well-formed upstream calls.

Misses wait in one lane per :class:`~gateway.models.Spec` (model, kind, and a text's
options): images and URLs of every team together, texts one lane per team (a call's tokens are
shared over its texts by estimate, so no call mixes teams' texts). A miss that finds
its lane quiet (no call of the lane in flight, no other miss within the last ``linger``) goes
at once; otherwise the lane's sender takes a batch when it is full, or when its first miss
has waited ``linger``. Before it sends, it takes a slot of the global concurrency cap and the
next call of the global rate, both shared by all replicas through the store, so misses that
arrive meanwhile join the batch.
Failed calls are retried with exponential backoff and jitter, honouring Nomic's Retry-After,
within the batch's deadline; a circuit breaker stops calling a Nomic that keeps failing.

Teams take turns for the rate's calls (:mod:`gateway.turns`), and in its turn a team with an
``upstream_calls_per_minute`` limit has the call counted (:mod:`gateway.team_calls`): once its
calls of the minute are made, its lanes sit the minute out, its turns go to the other teams,
and its misses that cannot wait for the next minute fail with a 429.

A batch Nomic rejects because of one item is sent again without it: only the request that
sent the item gets the error. Each request may cost at most ``MAX_REJECTIONS_PER_OWNER``
such resends; past that its other items fail too, so one request of undecodable images
cannot spend Nomic's rate limit item by item.

:meth:`Shield.submit` returns a future per item, answered with its vector and its share of
the call's tokens, or failed with the error; the slot is let go as soon as Nomic answers.
What to do with an answer (store it, answer requests) is the caller's.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import math
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from gateway import metrics
from gateway.breaker import Breaker
from gateway.config import Settings
from gateway.errors import (
    GatewayError,
    ItemRejected,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamServerError,
    UpstreamTimeout,
    UpstreamUnavailable,
    Withdrawn,
)
from gateway.leases import Heartbeat
from gateway.models import Spec
from gateway.store import StoreError
from gateway.store.base import Coordinator
from gateway.team_calls import Charge, TeamCalls, must_fail
from gateway.turns import Among, TeamQueue, Turns
from gateway.upstream import UpstreamItemRejected, UpstreamResult

log = logging.getLogger(__name__)

MAX_REJECTIONS_PER_OWNER = 3
MAX_REQUESTS_REMEMBERED = 4096  # requests whose refused items are counted, the latest kept
# A lane with nothing queued or in flight this long goes (the next miss makes it again): teams
# choose a text's options, so lanes kept for good would grow without bound.
LANE_IDLE_SECONDS = 60.0
# A team one of whose items Nomic refused has its misses batched apart this long: what else it
# sends may be refused too, and each refusal costs everyone in the batch a resend.
APART_SECONDS = 60.0
RETRYABLE = (UpstreamServerError, UpstreamUnavailable, UpstreamTimeout)
# A team may hold this share of the upstream queue (or a batch, if more), at most: the rest
# stays for the others.
TEAM_QUEUE_SHARE = 4


class Embedder(Protocol):
    async def embed(self, spec: Spec, items: Sequence[bytes]) -> UpstreamResult: ...


class Job(NamedTuple):
    """One item to fetch: its content, the request that asked (an opaque id), by when, its
    weight (its expected share of the call's tokens, relative to the others') and its bound
    (the most tokens it can cost, if that is known); the team that asked, and its
    ``upstream_calls_per_minute`` limit (None: unlimited)."""

    content: bytes
    owner: int
    deadline: float
    weight: int = 1
    bound: int | None = None
    team: str = ""  # who asked: a team whose items Nomic refuses is batched apart for a while
    calls_per_minute: int | None = None


class Embedded(NamedTuple):
    """One item's answer: its vector, and its share of the call's billed tokens (the shares
    of a call add up to exactly what Nomic billed for it)."""

    vector: list[float]
    tokens: int


class Policy(NamedTuple):
    """How the shield batches, paces and retries: the settings' (:meth:`of`)."""

    batch_items: int
    text_batch_items: int  # Nomic takes fewer texts a call than images
    batch_bytes: int
    linger_seconds: float
    rate_calls: int
    rate_period_seconds: float
    rate_burst: int
    concurrency: int
    queue_items: int
    call_timeout_seconds: float
    max_attempts: int
    backoff_base_seconds: float = 0.25
    backoff_max_seconds: float = 8.0

    @classmethod
    def of(cls, settings: Settings) -> Policy:
        return cls(
            batch_items=settings.upstream_batch_size,
            text_batch_items=settings.upstream_text_batch_size,
            batch_bytes=settings.upstream_batch_bytes,
            linger_seconds=settings.upstream_linger_seconds,
            rate_calls=settings.upstream_rate_calls,
            rate_period_seconds=settings.upstream_rate_period_seconds,
            rate_burst=settings.upstream_rate_burst,
            concurrency=settings.upstream_concurrency,
            queue_items=settings.upstream_queue_items,
            call_timeout_seconds=settings.upstream_timeout_seconds,
            max_attempts=settings.upstream_max_attempts,
        )

    @property
    def interval_ms(self) -> int:
        return max(1, math.ceil(self.rate_period_seconds * 1000 / self.rate_calls))


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


def backoff(attempt: int, policy: Policy, retry_after: float | None, rng: random.Random) -> float:
    """Seconds before retry ``attempt`` (0-based): exponential with equal jitter, never less
    than what Nomic asked for in Retry-After."""
    ceiling = min(policy.backoff_max_seconds, policy.backoff_base_seconds * 2.0**attempt)
    delay = ceiling / 2 + rng.uniform(0, ceiling / 2)
    return max(delay, retry_after or 0.0)


def retry_delay(
    error: GatewayError, attempt: int, policy: Policy, *, breaker_wait: float, time_left: float,
    rng: random.Random,
) -> float | None:  # fmt: skip
    """Seconds before retrying a call that failed with ``error`` on ``attempt`` (0-based), or
    None to give up: the error is not worth retrying, the attempts are used up, the breaker
    is open (``breaker_wait`` > 0), or the retry would come after ``time_left``."""
    if not isinstance(error, RETRYABLE) or attempt + 1 >= policy.max_attempts:
        return None
    if breaker_wait > 0:
        return None
    delay = backoff(attempt, policy, error.retry_after, rng)
    return delay if delay < time_left else None


def calls_for(items: int, size: int, most: int, policy: Policy) -> int:
    """The calls ``items`` queued misses of one lane (``size`` bytes in all) need: a call
    takes at most ``most`` (the lane's batch: images or texts), and as many of their average
    size as the byte limit allows, so large images go one a call."""
    if items <= 0:
        return 0
    per_call = most
    if size:
        per_call = max(1, min(per_call, policy.batch_bytes * items // size))
    return -(-items // per_call)


def drain_seconds(calls: int, policy: Policy, call_seconds: float) -> float:
    """About how long until the last of ``calls`` queued calls (:func:`calls_for`, over all
    lanes: they share the rate) is answered: spaced by the rate past its burst, overlapping
    as the concurrency cap lets calls of ``call_seconds`` each."""
    if calls <= 0:
        return 0.0
    by_rate = max(0, calls - policy.rate_burst) * policy.interval_ms / 1000 + call_seconds
    by_concurrency = -(-calls // policy.concurrency) * call_seconds
    return max(by_rate, by_concurrency)


class _Waiting(NamedTuple):
    job: Job
    answer: asyncio.Future[Embedded]


class _SitOut(Exception):
    """The lane's next batch would be empty: every team with misses in it has made its calls
    this minute, which ends in ``seconds``."""

    def __init__(self, seconds: float) -> None:
        super().__init__(seconds)
        self.seconds = seconds


def _batch_of(items: Iterable[_Waiting], most: int, batch_bytes: int) -> list[_Waiting]:
    """The first of ``items`` that make a batch: at most ``most``, within ``batch_bytes``
    (the first alone may be larger)."""
    batch: list[_Waiting] = []
    size = 0
    for item in items:
        if len(batch) >= most or (batch and size + len(item.job.content) > batch_bytes):
            break
        batch.append(item)
        size += len(item.job.content)
    return batch


Results = list[tuple[_Waiting, "Embedded | GatewayError"]]


LaneKey = tuple[Spec, str]  # the inputs' spec, and the team a lane is kept for ("": every team)


def _team_of(item: _Waiting) -> str:
    return item.job.team


def _size_of(item: _Waiting) -> int:
    return len(item.job.content)


@dataclass
class _Lane:
    key: LaneKey
    spec: Spec
    most: int  # items a call takes
    jobs: TeamQueue[_Waiting] = field(default_factory=lambda: TeamQueue(_team_of, _size_of))
    bytes: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    sending: int = 0  # calls of this lane in flight
    calls: int = 0  # the calls its queued jobs need (calls_for)
    last_arrival: float = -math.inf
    quiet: bool = False  # the batch now queued began with nothing to wait for
    team_calls: dict[str, int] = field(default_factory=dict)  # calls its queue needs, by team
    charge: Charge | None = None  # the teams' calls counted for its next batch

    @property
    def turn_of(self) -> str:
        """Whose turn the lane takes: its team's, or, shared by every team, its own."""
        return self.key[1] or f"\0{self.spec.model}\0{self.spec.kind}"


class Shield:
    def __init__(
        self,
        upstream: Embedder,
        coordinator: Coordinator,
        policy: Policy,
        *,
        breaker: Breaker | None = None,
        lease_seconds: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self._upstream = upstream
        self._coordinator = coordinator
        self.policy = policy
        self.breaker = breaker or Breaker()
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 (jitter, not secrets)
        self._lanes: dict[LaneKey, _Lane] = {}
        self._apart: dict[str, float] = {}  # team → until when its misses are batched apart
        self._refusals: dict[int, int] = {}  # request → its items Nomic refused (recent ones)
        self._sends: set[asyncio.Task[None]] = set()
        self._holder = uuid.uuid4().hex
        self._slot_ids = itertools.count()
        # A slot is a lease, renewed while its batch is paced, called, retried: one that a
        # dead process (or one that lost the store) cannot give back lapses within a lease.
        self._slots = Heartbeat(coordinator.renew_slots, lease_seconds, "upstream call slots")
        self._call_seconds = 0.0  # how long upstream calls took lately (a moving average)
        self.queued = 0
        self.queued_calls = 0  # what the queued misses need, over all lanes
        self._turns = Turns()  # the rate's calls, teams in turn
        self._calls = TeamCalls(coordinator, wall_clock)  # and their calls a minute
        self._team_items: Counter[str] = Counter()  # queued misses by team (none: absent)
        self._team_calls: Counter[str] = Counter()  # the calls they need, by team (likewise)
        self._stopped = False  # drained at shutdown: its lanes send nothing more

    def submit(self, spec: Spec, jobs: Sequence[Job]) -> list[asyncio.Future[Embedded]]:
        """Queue ``jobs``: a future for each, in order. Raises :class:`UpstreamUnavailable` at
        once when the breaker is open, the queue is full, or the queue ahead of them cannot
        drain before their deadline (the jobs are then not queued). Retry-After says when the
        queue will have drained. Once :meth:`drain` stopped the lanes, it raises
        :class:`UpstreamUnavailable` too: nothing would send the jobs. It raises
        :class:`CallsUsedUp` when the jobs' team has made its calls this minute and their
        deadline comes before the minute ends."""
        if self._stopped:
            raise UpstreamUnavailable("the gateway is shutting down", retry_after=1)
        wait = self.breaker.retry_after()
        if wait > 0:
            raise UpstreamUnavailable("Nomic is failing; retry later", retry_after=wait)
        size = sum(len(job.content) for job in jobs)
        team = jobs[0].team if jobs else ""
        if jobs:
            self._calls.note(team, jobs[0].calls_per_minute)
        left = self._calls.used_up(team)
        if left is not None and must_fail(min(j.deadline for j in jobs), self._clock(),
                                          left + self._call_seconds):  # fmt: skip
            raise self._calls.refusal(team)
        if self.queued + len(jobs) > self.policy.queue_items:
            raise UpstreamUnavailable(
                "the upstream queue is full; retry shortly",
                retry_after=self._drain_seconds(self.queued_calls),
            )
        most = self._batch_items(spec)
        team_share = max(self.policy.queue_items // TEAM_QUEUE_SHARE, most)
        if self._team_items[team] + len(jobs) > team_share:
            raise UpstreamUnavailable(
                "this team's upstream queue is full; retry shortly",
                retry_after=self._drain_seconds(self._calls_ahead(team, self._team_calls[team])),
            )
        key = self._lane_key(spec, team)
        lane = self._lanes.get(key)
        calls = self._calls_with(key, len(jobs), size)
        all_calls = self.queued_calls - (0 if lane is None else lane.calls) + calls
        mine = self._team_calls_in(key, team, len(jobs), size)
        mine += self._team_calls[team] - (0 if lane is None else lane.team_calls.get(team, 0))
        expected = self._drain_seconds(min(all_calls, self._calls_ahead(team, mine)))
        now = self._clock()
        if now + expected > min(job.deadline for job in jobs):
            raise UpstreamUnavailable(
                "Nomic's rate cannot take these misses before the request's deadline",
                retry_after=expected,
            )
        loop = asyncio.get_running_loop()
        waiting = [_Waiting(job, loop.create_future()) for job in jobs]
        self._enqueue(self._lane(key), waiting, now)
        return [item.answer for item in waiting]

    def _lane_key(self, spec: Spec, team: str) -> LaneKey:
        """The lane of ``team``'s misses of ``spec``. A text call's tokens are shared over its
        texts by estimate, which a text of rare words beats: texts of different teams never
        share a call, so no team is billed for another's tokens. Images and URLs cost the
        same each and share calls, but those of a team Nomic refused lately (``_set_apart``)."""
        if spec.kind == "text":
            return (spec, team)
        return (spec, self._apart_team(team, self._clock()))

    def _calls_ahead(self, team: str, mine: int) -> int:
        """How many queued calls go before the last of ``mine``, ``team``'s: teams take
        turns, so each of its calls waits for at most one call of every other team that
        has calls queued still (:class:`~gateway.turns.Turns`)."""
        return mine + sum(min(c, mine) for other, c in self._team_calls.items() if other != team)

    def _team_calls_in(self, key: LaneKey, team: str, items: int = 0, size: int = 0) -> int:
        """The calls ``team``'s misses in the lane of ``key`` need, with ``items`` more
        (``size`` bytes): all of the lane's if it is the team's own, else what its items in
        the shared lane need."""
        if key[1]:
            return self._calls_with(key, items, size)
        lane = self._lanes.get(key)
        queued = (0, 0) if lane is None else (lane.jobs.count(team), lane.jobs.size(team))
        return calls_for(
            queued[0] + items, queued[1] + size, self._batch_items(key[0]), self.policy
        )

    def _count_team_calls(self, lane: _Lane, teams: Iterable[str]) -> None:
        """Bring ``teams``' queued calls up to date after ``lane``'s queue changed: all of a
        team's own lane's calls, or, in a lane every team shares, what its items need."""
        for team in teams:
            calls = self._team_calls_in(lane.key, team)
            self._team_calls[team] += calls - lane.team_calls.pop(team, 0)
            if calls:
                lane.team_calls[team] = calls
            if self._team_calls[team] <= 0:
                del self._team_calls[team]

    def _apart_team(self, team: str, now: float) -> str:
        """``team`` if its misses are batched apart now, else ""."""
        until = self._apart.get(team)
        if until is None:
            return ""
        if until > now:
            return team
        del self._apart[team]
        return ""

    def _lane(self, key: LaneKey) -> _Lane:
        lane = self._lanes.get(key)
        if lane is None:
            spec = key[0]
            lane = self._lanes[key] = _Lane(key, spec, self._batch_items(spec))
            lane.task = asyncio.create_task(self._run(lane))
        return lane

    def _calls_with(self, key: LaneKey, items: int, size: int) -> int:
        """The calls the lane of ``key`` would need with ``items`` more misses (``size``
        bytes) queued."""
        lane = self._lanes.get(key)
        if lane is None:
            return calls_for(items, size, self._batch_items(key[0]), self.policy)
        return calls_for(len(lane.jobs) + items, lane.bytes + size, lane.most, self.policy)

    def _enqueue(self, lane: _Lane, waiting: Sequence[_Waiting], now: float) -> None:
        size = sum(len(item.job.content) for item in waiting)
        calls = self._calls_with(lane.key, len(waiting), size)
        self.queued_calls += calls - lane.calls
        lane.calls = calls
        if not lane.jobs:  # a new batch: worth lingering for only if others are coming
            recent = now - lane.last_arrival < self.policy.linger_seconds
            lane.quiet = not recent and not lane.sending
        lane.last_arrival = now
        lane.jobs.extend(waiting)
        lane.bytes += size
        self.queued += len(waiting)
        teams = {item.job.team for item in waiting}
        self._team_items.update(item.job.team for item in waiting)
        self._count_team_calls(lane, teams)
        metrics.UPSTREAM_QUEUE.set(self.queued)
        lane.arrived.set()

    def _drain_seconds(self, calls: int) -> float:
        """About how long until the last of ``calls`` queued calls has been answered: see
        :func:`drain_seconds`."""
        return drain_seconds(calls, self.policy, self._call_seconds)

    def _batch_items(self, spec: Spec) -> int:
        return self.policy.text_batch_items if spec.kind == "text" else self.policy.batch_items

    async def _run(self, lane: _Lane) -> None:
        while await self._arrival(lane):
            if not lane.jobs:
                lane.arrived.clear()
                continue
            holder = f"{self._holder}:{next(self._slot_ids)}"
            try:
                self._check_calls_left(lane)
                await self._start(lane, holder)
            except _SitOut as out:  # every team of the lane has made its calls this minute
                self._fail_due(lane)
                await self._sit_out(lane, out.seconds)
                continue
            except (GatewayError, StoreError) as exc:  # the lane's jobs cannot go in time
                await self._give_up(lane, holder, exc)
                continue
            batch = self._take_batch(lane)
            await self._charged(lane, batch)
            self._fail_due(lane)
            if not lane.jobs:
                lane.arrived.clear()
            lane.sending += 1
            task = asyncio.create_task(self._send(lane, batch, holder))
            self._sends.add(task)
            task.add_done_callback(self._sends.discard)

    async def _arrival(self, lane: _Lane) -> bool:
        """Wait for the lane's next misses; False, the lane gone, once it has had nothing
        queued or in flight for ``LANE_IDLE_SECONDS``."""
        try:
            async with asyncio.timeout(LANE_IDLE_SECONDS):
                await lane.arrived.wait()
        except TimeoutError:
            if lane.jobs or lane.sending:
                return True
            del self._lanes[lane.key]  # no await since the check: submit makes a new one
            return False
        return True

    async def _start(self, lane: _Lane, holder: str) -> None:
        """Take, for ``holder``, a slot of the concurrency cap and the rate's next call for
        the lane's next batch; raises if they come after its deadline, or the store fails.

        A quiet lane's batch, or a full one, takes both in one round trip and goes (a lane of
        full batches, as texts at 10 a call, starts one a round trip). Otherwise the slot is
        taken while the batch lingers (it waits for the linger or the slot, whichever is
        longer, not for both), and the rate's next call last, so calls leave as evenly
        spaced as the rate grants them."""
        if (lane.quiet or self._full(lane)) and await self._start_at_once(lane, holder):
            return  # nothing to wait for: the batch goes at once
        taking = asyncio.create_task(self._take_slot(lane, holder))
        try:
            if not lane.quiet:
                await self._linger(lane)
            await taking
        except BaseException:
            taking.cancel()
            raise
        try:
            await self._pace(lane, _deadline(lane.jobs), charge=True)
        except _SitOut:
            await self._release(holder)
            raise

    async def _start_at_once(self, lane: _Lane, holder: str) -> bool:
        """The slot and the rate's next call in one step, in the lane's turn; False if every
        slot is held."""
        deadline = _deadline(lane.jobs)
        async with self._turns.turn(lane.turn_of):
            await self._charge(lane)
            left_ms = max(0, round((deadline - self._clock()) * 1000))
            wait_ms = await self._coordinator.start_call(
                holder, self.policy.concurrency, self._slots.lease_ms,
                self.policy.interval_ms, self.policy.rate_burst, left_ms,
            )  # fmt: skip
            if wait_ms is None:
                return False
            if wait_ms >= 0:  # taken (else given back already)
                self._slots.hold([holder])
            await self._wait_turn(wait_ms, left_ms)
        return True

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
        return len(lane.jobs) >= lane.most or lane.bytes >= self.policy.batch_bytes

    async def _take_slot(self, lane: _Lane, holder: str) -> None:
        """A concurrency slot for ``holder``; raises if the batch's deadline passes first."""
        deadline = _deadline(lane.jobs)
        while not await self._coordinator.acquire_slot(
            holder, self.policy.concurrency, self._slots.lease_ms
        ):
            if self._clock() > deadline:
                raise UpstreamUnavailable("too many upstream calls in flight", retry_after=1)
            await asyncio.sleep(0.005 + self._rng.uniform(0, 0.01))
        self._slots.hold([holder])

    async def _give_up(self, lane: _Lane, holder: str, exc: GatewayError | StoreError) -> None:
        """Fail every job of the lane (they could not go) with ``exc``, as clients see it."""
        error = (
            exc
            if isinstance(exc, GatewayError)
            else UpstreamUnavailable(
                "the store that paces upstream calls is unavailable", retry_after=1
            )
        )
        await self._release(holder)
        charge, lane.charge = lane.charge, None
        if charge is not None:
            await self._calls.give_back(charge, charge.teams)  # no call went
        _answer([(item, error) for item in self._take_batch(lane, everything=True)])
        lane.arrived.clear()

    async def _pace(self, lane: _Lane, deadline: float, *, charge: bool = False) -> None:
        """Wait, in the lane's turn (:class:`~gateway.turns.Turns`), for the next call the
        global rate allows, or raise if it comes too late. The turn is held until that call
        may go, so the rate's calls are granted to the teams in turn. With ``charge`` (the
        first call of a batch, not a retry), the call is counted first (:meth:`_charge`)."""
        async with self._turns.turn(lane.turn_of):
            if charge:
                await self._charge(lane)
            left_ms = max(0, round((deadline - self._clock()) * 1000))
            wait_ms = await self._coordinator.pace(
                self.policy.interval_ms, self.policy.rate_burst, left_ms
            )
            await self._wait_turn(wait_ms, left_ms)

    async def _wait_turn(self, wait_ms: int, left_ms: int) -> None:
        """Wait the ``wait_ms`` the rate gave, or raise if it gave none (a negative wait:
        the next call comes after the ``left_ms`` the batch has)."""
        if wait_ms < 0:
            raise UpstreamUnavailable(
                "Nomic's rate is used up for now", retry_after=left_ms / 1000 or 1
            )
        if wait_ms:
            metrics.UPSTREAM_PACED_SECONDS.observe(wait_ms / 1000)
            await asyncio.sleep(wait_ms / 1000)

    def _take_batch(self, lane: _Lane, everything: bool = False) -> list[_Waiting]:
        """The lane's next batch, in turn, of the teams that may send (:meth:`_may_send`);
        or, ``everything``, every job queued."""
        among = None if everything else self._may_send(lane)
        count = len(lane.jobs)
        if not everything:
            count = len(_batch_of(lane.jobs.in_turn(among), lane.most, self.policy.batch_bytes))
        batch = [lane.jobs.popleft(among) for _ in range(count)]
        self._dequeued(lane, batch)
        return batch

    def _dequeued(self, lane: _Lane, items: Sequence[_Waiting]) -> None:
        """Keep the counts of what is queued after ``items`` left ``lane``'s queue."""
        lane.bytes -= sum(len(item.job.content) for item in items)
        self.queued -= len(items)
        teams = {item.job.team for item in items}
        self._team_items.subtract(item.job.team for item in items)
        for team in teams:
            if self._team_items[team] <= 0:
                del self._team_items[team]
        calls = calls_for(len(lane.jobs), lane.bytes, lane.most, self.policy)
        self.queued_calls += calls - lane.calls
        lane.calls = calls
        self._count_team_calls(lane, teams)
        metrics.UPSTREAM_QUEUE.set(self.queued)

    def _may_send(self, lane: _Lane) -> Among:
        """Whose items the lane's next batch may hold: teams without a limit on their calls,
        and those whose call it was counted for."""
        charged = frozenset() if lane.charge is None else lane.charge.teams
        return lambda team: team in charged or not self._calls.limited(team)

    def _check_calls_left(self, lane: _Lane) -> None:
        """Raise :class:`_SitOut` if every team with misses in the lane is known to have made
        its calls this minute (no round trip to learn it again)."""
        left = [self._calls.used_up(team) for team in lane.jobs.teams()]
        if left and all(seconds is not None for seconds in left):
            raise _SitOut(max(seconds or 0.0 for seconds in left))

    async def _charge(self, lane: _Lane) -> None:
        """Count the lane's next call for each team with a limit whose items it will hold
        (:class:`~gateway.team_calls.TeamCalls`), once a batch; raise :class:`_SitOut` if
        the batch would hold nothing: every team with misses in the lane has made its calls
        this minute."""
        while lane.charge is None:
            sendable = lane.jobs.in_turn(lambda team: self._calls.used_up(team) is None)
            teams = {
                item.job.team for item in _batch_of(sendable, lane.most, self.policy.batch_bytes)
            }
            if not teams:  # (none queued: drain failed them; the lane waits for arrivals)
                left = (self._calls.used_up(team) or 0.0 for team in lane.jobs.teams())
                raise _SitOut(max(left, default=0.0))
            charge = await self._calls.charge(teams)
            if charge.teams or not all(map(self._calls.limited, teams)):
                lane.charge = charge
            # else every team asked for had made its calls: known now, the batch is made again

    async def _charged(self, lane: _Lane, batch: Sequence[_Waiting]) -> None:
        """The counted calls of ``batch`` are spent: give back those of teams it does not
        hold after all."""
        charge, lane.charge = lane.charge, None
        if charge is not None:
            await self._calls.give_back(charge, charge.teams - {item.job.team for item in batch})

    def _fail_due(self, lane: _Lane, everything: bool = False) -> None:
        """Fail the misses of teams that have made their calls this minute that cannot wait
        for the next: their request's deadline comes before a call made as the minute ends
        would be answered (``everything``: all of those teams' misses)."""
        answered = self._clock() + self._call_seconds  # a call made now, as calls take lately
        failed: Results = []
        for team in lane.jobs.teams():
            left = self._calls.used_up(team)
            if left is None:
                continue
            due = lane.jobs.remove(
                team, functools.partial(_due, math.inf if everything else answered + left)
            )
            if due:
                error = self._calls.refusal(team, len({item.job.owner for item in due}))
                failed += [(item, error) for item in due]
        if failed:
            self._dequeued(lane, [item for item, _ in failed])
            _answer(failed)

    async def _sit_out(self, lane: _Lane, seconds: float) -> None:
        """Wait out the minute (``seconds``), or until misses arrive (another team's may go)."""
        lane.arrived.clear()
        try:
            async with asyncio.timeout(seconds):
                await lane.arrived.wait()
        except TimeoutError:
            pass
        lane.arrived.set()

    async def _release(self, holder: str) -> None:
        self._slots.drop([holder])
        try:
            await self._coordinator.release_slot(holder)
        except StoreError as exc:
            log.warning("could not release an upstream slot (its lease will lapse): %s", exc)

    async def _send(self, lane: _Lane, batch: list[_Waiting], holder: str) -> None:
        """Call Nomic for ``batch``, answer every item, then let go of the slot."""
        try:
            results = await self._call(lane, batch)
        except Exception:
            log.exception("unexpected error calling Nomic for %d items", len(batch))
            results = [(item, UpstreamError("the upstream call failed unexpectedly"))
                       for item in batch]  # fmt: skip
        except BaseException:
            await self._release(holder)
            raise
        finally:
            lane.sending -= 1
            metrics.BREAKER_STATE.set(("closed", "half_open", "open").index(self.breaker.state))
        _answer(results)
        await self._release(holder)

    async def _call(self, lane: _Lane, batch: list[_Waiting]) -> Results:
        """Each item's answer: calls Nomic (again without an item it rejects, and after
        failures worth retrying) until every item is answered or failed."""
        results: Results = []
        attempt = 0
        paced = True  # the first call's rate slot was taken before the batch
        while batch:
            deadline = _deadline(batch)
            try:
                if not paced:
                    await self._pace(lane, deadline)
                paced = False
                started = self._clock()
                answer = await self._upstream.embed(lane.spec, [item.job.content for item in batch])
            except UpstreamItemRejected as rejected:
                self.breaker.record_success()  # Nomic answered: it is up
                refused = batch[rejected.index] if 0 <= rejected.index < len(batch) else None
                batch = self._without_rejected(batch, rejected, results)
                if refused is not None and lane.key[1] == "":
                    batch = self._set_apart(lane.spec, refused.job.team, batch)
                continue
            except GatewayError as exc:
                delay = await self._after_failure(exc, attempt, deadline)
                if delay is None:
                    return results + [(item, exc) for item in batch]
                metrics.UPSTREAM_RETRIES.labels(reason=type(exc).__name__).inc()
                await asyncio.sleep(delay)
                attempt += 1
                continue
            except StoreError:  # the rate could not be paced for a retry
                error = UpstreamUnavailable(
                    "the store that paces upstream calls is unavailable", retry_after=1
                )
                return results + [(item, error) for item in batch]
            self.breaker.record_success()
            self._call_seconds += (self._clock() - started - self._call_seconds) / 8
            costs = split_tokens(answer.total_tokens, [item.job.weight for item in batch],
                                 [item.job.bound for item in batch])  # fmt: skip
            embedded = zip(answer.embeddings, costs, strict=True)
            return results + [(item, Embedded(*e)) for item, e in zip(batch, embedded, strict=True)]
        return results

    async def _after_failure(
        self, error: GatewayError, attempt: int, deadline: float
    ) -> float | None:
        """Record a failed call (Nomic's pause for every replica, or the breaker), and
        decide: seconds before the retry, or None to give up (see :func:`retry_delay`)."""
        if isinstance(error, UpstreamRateLimited):
            await self._hold(error.retry_after)  # a rate limit is Nomic working, not failing
        elif isinstance(error, RETRYABLE):
            self.breaker.record_failure()
        breaker_wait = self.breaker.retry_after()
        delay = retry_delay(
            error, attempt, self.policy, breaker_wait=breaker_wait,
            time_left=deadline - self._clock(), rng=self._rng,
        )  # fmt: skip
        if delay is None and breaker_wait > 0 and isinstance(error, RETRYABLE):
            error.retry_after = max(error.retry_after or 0, breaker_wait)  # what clients are told
        return delay

    async def _hold(self, seconds: float | None) -> None:
        if seconds:
            try:
                await self._coordinator.hold(round(seconds * 1000))
            except StoreError as exc:
                log.warning("could not pause the shared upstream rate: %s", exc)

    def _set_apart(self, spec: Spec, team: str, batch: list[_Waiting]) -> list[_Waiting]:
        """Batch ``team``'s misses apart for :data:`APART_SECONDS`; if ``batch`` holds other
        teams' items too, its items go to its own lane, and the rest of ``batch`` is returned,
        to be resent without them."""
        if not team:
            return batch
        now = self._clock()
        self._apart[team] = now + APART_SECONDS
        theirs = [item for item in batch if item.job.team == team]
        if not theirs or len(theirs) == len(batch):
            return batch
        self._enqueue(self._lane((spec, team)), theirs, now)
        return [item for item in batch if item.job.team != team]

    def _without_rejected(
        self, batch: list[_Waiting], rejected: UpstreamItemRejected, results: Results
    ) -> list[_Waiting]:
        """The batch without the item Nomic refused (and without the rest of the items of a
        request that has used up its resends, counted over every batch its items were in);
        what is left out goes to ``results``."""
        if not 0 <= rejected.index < len(batch):
            error = UpstreamError("Nomic rejected an item it was not sent")
            results.extend((item, error) for item in batch)
            return []
        bad = batch[rejected.index]
        results.append((bad, ItemRejected(f"rejected by Nomic: {rejected.msg}")))
        rest = batch[: rejected.index] + batch[rejected.index + 1 :]
        owner = bad.job.owner
        refusals = self._refusals[owner] = self._refusals.pop(owner, 0) + 1  # now the newest
        if len(self._refusals) > MAX_REQUESTS_REMEMBERED:
            del self._refusals[next(iter(self._refusals))]  # the oldest: long answered
        if refusals < MAX_REJECTIONS_PER_OWNER:
            return rest
        error = Withdrawn("Nomic rejected several items sent with this one")
        results.extend((item, error) for item in rest if item.job.owner == owner)
        return [item for item in rest if item.job.owner != owner]

    async def drain(self) -> None:
        """Wait for what is queued and in flight (at shutdown), then stop the lanes. Misses
        of teams that made their calls this minute fail at once: they would wait for it."""
        while self.queued or self._sends:
            for lane in self._lanes.values():
                self._fail_due(lane, everything=True)
            if self._sends:
                await asyncio.gather(*self._sends, return_exceptions=True)
            else:
                await asyncio.sleep(0.01)
        self._stopped = True
        for lane in self._lanes.values():
            if lane.task is not None:
                lane.task.cancel()
        await asyncio.gather(
            *(lane.task for lane in self._lanes.values() if lane.task is not None),
            return_exceptions=True,
        )
        await self._slots.stop()


def _answer(results: Results) -> None:
    for item, result in results:
        if item.answer.done():
            continue
        if isinstance(result, GatewayError):
            item.answer.set_exception(result)
        else:
            item.answer.set_result(result)


def _due(horizon: float, item: _Waiting) -> bool:
    """Whether ``item``'s request's deadline comes before ``horizon``."""
    return must_fail(item.job.deadline, horizon, 0.0)


def _deadline(items: Iterable[_Waiting]) -> float:
    """When the last of ``items`` must be answered: a batch goes on until then."""
    return max(item.job.deadline for item in items)
