"""The shield's lanes: where misses wait to be batched, and what their queues admit.

Misses wait in one lane per :class:`~gateway.models.Spec` (model, kind, and a text's options)
and team it is kept for: images and URLs of every team together (but a team set apart, see
:mod:`gateway.shield_policy`), texts one lane per team (a call's tokens are shared over its
texts by estimate, so no call mixes teams' texts). :class:`Lanes` keeps the queues and their
counts (items, bytes, the calls they need, by team), admits misses by them, and hands out
batches; it does no I/O and starts no task: the shield (:mod:`gateway.shield`) runs a lane.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from gateway import metrics
from gateway.errors import UpstreamUnavailable
from gateway.models import Spec
from gateway.shield_policy import Policy, calls_for, drain_seconds
from gateway.team_calls import Charge
from gateway.turns import Among, TeamQueue

# A team may hold this share of the upstream queue (or a batch, if more), at most: the rest
# stays for the others.
TEAM_QUEUE_SHARE = 4

Sleep = Callable[[float], Awaitable[None]]


class Embedded(NamedTuple):
    """One item's answer: its vector, and its share of the call's billed tokens (the shares
    of a call add up to exactly what Nomic billed for it)."""

    vector: list[float]
    tokens: int


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


class Waiting(NamedTuple):
    job: Job
    answer: asyncio.Future[Embedded]


LaneKey = tuple[Spec, str]  # the inputs' spec, and the team a lane is kept for ("": every team)


def _team_of(item: Waiting) -> str:
    return item.job.team


def _size_of(item: Waiting) -> int:
    return len(item.job.content)


@dataclass
class Lane:
    key: LaneKey
    spec: Spec
    most: int  # items a call takes
    jobs: TeamQueue[Waiting] = field(default_factory=lambda: TeamQueue(_team_of, _size_of))
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

    @property
    def shared(self) -> bool:
        """Whether every team's misses wait here (not one team's own lane)."""
        return self.key[1] == ""


def batch_of(items: Iterable[Waiting], most: int, batch_bytes: int) -> list[Waiting]:
    """The first of ``items`` that make a batch: at most ``most``, within ``batch_bytes``
    (the first alone may be larger)."""
    batch: list[Waiting] = []
    size = 0
    for item in items:
        if len(batch) >= most or (batch and size + len(item.job.content) > batch_bytes):
            break
        batch.append(item)
        size += len(item.job.content)
    return batch


def deadline_of(items: Iterable[Waiting]) -> float:
    """When the last of ``items`` must be answered: a batch goes on until then."""
    return max(item.job.deadline for item in items)


async def wait_event(event: asyncio.Event, seconds: float, sleep: Sleep) -> bool:
    """Wait for ``event`` at most ``seconds`` (slept with ``sleep``): whether it is set."""
    if event.is_set():
        return True
    waiter = asyncio.ensure_future(event.wait())
    timer = asyncio.ensure_future(sleep(seconds))
    try:
        await asyncio.wait((waiter, timer), return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        timer.cancel()
    return event.is_set()


class Lanes:
    """Every lane, and the counts of what is queued over them (items, the calls they need,
    by team), kept as misses come and go."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.lanes: dict[LaneKey, Lane] = {}
        self.queued = 0
        self.queued_calls = 0  # what the queued misses need, over all lanes
        self._team_items: Counter[str] = Counter()  # queued misses by team (none: absent)
        self._team_calls: Counter[str] = Counter()  # the calls they need, by team (likewise)

    def batch_items(self, spec: Spec) -> int:
        return self.policy.text_batch_items if spec.kind == "text" else self.policy.batch_items

    def make(self, key: LaneKey) -> Lane:
        """A new, empty lane for ``key`` (the caller runs it)."""
        spec = key[0]
        lane = self.lanes[key] = Lane(key, spec, self.batch_items(spec))
        return lane

    def full(self, lane: Lane) -> bool:
        return len(lane.jobs) >= lane.most or lane.bytes >= self.policy.batch_bytes

    def refusal(
        self, key: LaneKey, jobs: Sequence[Job], call_seconds: float, now: float
    ) -> UpstreamUnavailable | None:
        """Why the lane of ``key`` cannot take ``jobs`` (a team's), or None: the queue is
        full, the team holds its share of it, or what is ahead of them cannot drain before
        their deadline, calls taking ``call_seconds``. Retry-After says when it will have."""
        team = jobs[0].team if jobs else ""
        if self.queued + len(jobs) > self.policy.queue_items:
            return UpstreamUnavailable(
                "the upstream queue is full; retry shortly",
                retry_after=drain_seconds(self.queued_calls, self.policy, call_seconds),
            )
        team_share = max(self.policy.queue_items // TEAM_QUEUE_SHARE, self.batch_items(key[0]))
        if self._team_items[team] + len(jobs) > team_share:
            ahead = self._calls_ahead(team, self._team_calls[team])
            return UpstreamUnavailable(
                "this team's upstream queue is full; retry shortly",
                retry_after=drain_seconds(ahead, self.policy, call_seconds),
            )
        size = sum(len(job.content) for job in jobs)
        lane = self.lanes.get(key)
        all_calls = self.queued_calls - (0 if lane is None else lane.calls)
        all_calls += self._calls_with(key, len(jobs), size)
        mine = self._team_calls_in(key, team, len(jobs), size)
        mine += self._team_calls[team] - (0 if lane is None else lane.team_calls.get(team, 0))
        expected = drain_seconds(
            min(all_calls, self._calls_ahead(team, mine)), self.policy, call_seconds
        )
        if now + expected > min(job.deadline for job in jobs):
            return UpstreamUnavailable(
                "Nomic's rate cannot take these misses before the request's deadline",
                retry_after=expected,
            )
        return None

    def enqueue(self, lane: Lane, waiting: Sequence[Waiting], now: float) -> None:
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
        self._team_items.update(item.job.team for item in waiting)
        self._count_team_calls(lane, {item.job.team for item in waiting})
        metrics.UPSTREAM_QUEUE.set(self.queued)
        lane.arrived.set()

    def take_batch(self, lane: Lane, among: Among) -> list[Waiting]:
        """The lane's next batch, in turn, of the teams ``among`` takes."""
        count = len(batch_of(lane.jobs.in_turn(among), lane.most, self.policy.batch_bytes))
        batch = [lane.jobs.popleft(among) for _ in range(count)]
        self.dequeued(lane, batch)
        return batch

    def take_all(self, lane: Lane) -> list[Waiting]:
        """Every job queued in the lane."""
        batch = [lane.jobs.popleft() for _ in range(len(lane.jobs))]
        self.dequeued(lane, batch)
        return batch

    def dequeued(self, lane: Lane, items: Sequence[Waiting]) -> None:
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
        lane = self.lanes.get(key)
        queued = (0, 0) if lane is None else (lane.jobs.count(team), lane.jobs.size(team))
        return calls_for(queued[0] + items, queued[1] + size, self.batch_items(key[0]), self.policy)

    def _count_team_calls(self, lane: Lane, teams: Iterable[str]) -> None:
        """Bring ``teams``' queued calls up to date after ``lane``'s queue changed: all of a
        team's own lane's calls, or, in a lane every team shares, what its items need."""
        for team in teams:
            calls = self._team_calls_in(lane.key, team)
            self._team_calls[team] += calls - lane.team_calls.pop(team, 0)
            if calls:
                lane.team_calls[team] = calls
            if self._team_calls[team] <= 0:
                del self._team_calls[team]

    def _calls_with(self, key: LaneKey, items: int, size: int) -> int:
        """The calls the lane of ``key`` would need with ``items`` more misses (``size``
        bytes) queued."""
        lane = self.lanes.get(key)
        if lane is None:
            return calls_for(items, size, self.batch_items(key[0]), self.policy)
        return calls_for(len(lane.jobs) + items, lane.bytes + size, lane.most, self.policy)
