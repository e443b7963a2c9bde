"""The upstream shield: many small, bursty misses become few, well-formed upstream calls.

Three parts, each its own module, and this one running them:

- the lanes (:mod:`gateway.lanes`): where misses wait, what the queues admit, the batches;
- the upstream caller (:mod:`gateway.upstream_caller`): slots, the rate, retries, breaker;
- the policy (:mod:`gateway.shield_policy`): pure decisions, among them who is to blame when
  Nomic refuses an item (resend these, fail those, set that team apart).

A miss that finds its lane quiet (no call of the lane in flight, no other miss within the
last ``linger``) goes at once; otherwise the lane's sender takes a batch when it is full, or
when its first miss has waited ``linger``. Before it sends, it takes a slot of the global
concurrency cap and the next call of the global rate, so misses that arrive meanwhile join
the batch.

Teams take turns for the rate's calls (:mod:`gateway.turns`), and in its turn a team with an
``upstream_calls_per_minute`` limit has the call counted (:mod:`gateway.team_calls`): once its
calls of the minute are made, its lanes sit the minute out, its turns go to the other teams,
and its misses that cannot wait for the next minute fail with a 429.

:meth:`Shield.submit` returns a future per item, answered with its vector and its share of
the call's tokens, or failed with the error; the slot is let go as soon as Nomic answers.
What to do with an answer (store it, answer requests) is the caller's. The clock and the
sleep are given from outside (the real ones by default), so the shield runs on a test's.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence

from gateway import metrics
from gateway.breaker import Breaker
from gateway.errors import (
    GatewayError,
    ItemRejected,
    UpstreamError,
    UpstreamUnavailable,
    Withdrawn,
)
from gateway.lane_calls import LaneCalls, SitOut
from gateway.lanes import (
    Embedded,
    Job,
    Lane,
    LaneKey,
    Lanes,
    Waiting,
    deadline_of,
    wait_event,
)
from gateway.models import Spec, split_tokens
from gateway.shield_policy import Policy, Refusals, Sent, Verdict
from gateway.store import StoreError
from gateway.store.base import Coordinator
from gateway.team_calls import TeamCalls, must_fail
from gateway.upstream import UpstreamResult
from gateway.upstream_caller import Embedder, Refused, UpstreamCaller, store_down

__all__ = ["Embedded", "Embedder", "Job", "Policy", "Shield"]

log = logging.getLogger(__name__)

# A lane with nothing queued or in flight this long goes (the next miss makes it again): teams
# choose a text's options, so lanes kept for good would grow without bound.
LANE_IDLE_SECONDS = 60.0

Results = list[tuple[Waiting, "Embedded | GatewayError"]]


class Shield:
    def __init__(
        self,
        upstream: Embedder,
        coordinator: Coordinator,
        policy: Policy,
        *,
        breaker: Breaker,
        lease_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        wall_clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.policy = policy
        self.breaker = breaker
        self._clock = clock
        self._sleep = sleep
        self._caller = UpstreamCaller(
            upstream, coordinator, policy, self.breaker, lease_seconds=lease_seconds,
            clock=clock, sleep=sleep, rng=rng,
        )  # fmt: skip
        self._queues = Lanes(policy)
        self._lanes = self._queues.lanes
        self._refusals = Refusals()
        self._calls = LaneCalls(TeamCalls(coordinator, wall_clock), self._queues)
        self._sends: set[asyncio.Task[None]] = set()
        self._stopped = False  # drained at shutdown: its lanes send nothing more

    @property
    def queued(self) -> int:
        """Misses queued, over all lanes."""
        return self._queues.queued

    def submit(self, spec: Spec, jobs: Sequence[Job]) -> list[asyncio.Future[Embedded]]:
        """Queue ``jobs`` (one team's): a future for each, in order. Raises
        :class:`UpstreamUnavailable` at once when the breaker is open, the queue is full, or
        the queue ahead of them cannot drain before their deadline (the jobs are then not
        queued). Retry-After says when the queue will have drained. Once :meth:`drain`
        stopped the lanes, it raises :class:`UpstreamUnavailable` too: nothing would send the
        jobs. It raises :class:`CallsUsedUp` when the jobs' team has made its calls this
        minute and their deadline comes before the minute ends."""
        if self._stopped:
            raise UpstreamUnavailable("the gateway is shutting down", retry_after=1)
        wait = self.breaker.retry_after()
        if wait > 0:
            raise UpstreamUnavailable("Nomic is failing; retry later", retry_after=wait)
        team = jobs[0].team if jobs else ""
        if jobs:
            self._calls.calls.note(team, jobs[0].calls_per_minute)
        now = self._clock()
        left = self._calls.calls.used_up(team)
        if left is not None and must_fail(min(j.deadline for j in jobs), now,
                                          left + self._caller.call_seconds):  # fmt: skip
            raise self._calls.calls.refusal(team)
        key = self._lane_key(spec, team, now)
        refused = self._queues.refusal(key, jobs, self._caller.call_seconds, now)
        if refused is not None:
            raise refused
        loop = asyncio.get_running_loop()
        waiting = [Waiting(job, loop.create_future()) for job in jobs]
        self._queues.enqueue(self._lane(key), waiting, now)
        return [item.answer for item in waiting]

    def _lane_key(self, spec: Spec, team: str, now: float) -> LaneKey:
        """The lane of ``team``'s misses of ``spec``. A text call's tokens are shared over its
        texts by estimate, which a text of rare words beats: texts of different teams never
        share a call, so no team is billed for another's tokens. Images and URLs cost the
        same each and share calls, but those of a team Nomic refused lately (set apart)."""
        if spec.kind == "text" or self._refusals.apart(team, now):
            return (spec, team)
        return (spec, "")

    def _lane(self, key: LaneKey) -> Lane:
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._queues.make(key)
            lane.task = asyncio.create_task(self._run(lane))
        return lane

    async def _run(self, lane: Lane) -> None:
        while await self._arrival(lane):
            if not lane.jobs:
                lane.arrived.clear()
                continue
            holder = self._caller.holder()
            try:
                self._calls.check_left(lane)
                await self._start(lane, holder)
            except SitOut as out:  # every team of the lane has made its calls this minute
                self._fail_due(lane)
                await self._sit_out(lane, out.seconds)
                continue
            except (GatewayError, StoreError) as exc:  # the lane's jobs cannot go in time
                await self._give_up(lane, holder, exc)
                continue
            batch = self._queues.take_batch(lane, self._calls.may_send(lane))
            await self._calls.charged(lane, batch)
            self._fail_due(lane)
            if not lane.jobs:
                lane.arrived.clear()
            lane.sending += 1
            task = asyncio.create_task(self._send(lane, batch, holder))
            self._sends.add(task)
            task.add_done_callback(self._sends.discard)

    async def _arrival(self, lane: Lane) -> bool:
        """Wait for the lane's next misses; False, the lane gone, once it has had nothing
        queued or in flight for ``LANE_IDLE_SECONDS``."""
        if await wait_event(lane.arrived, LANE_IDLE_SECONDS, self._sleep):
            return True
        if lane.jobs or lane.sending:
            return True
        del self._lanes[lane.key]  # no await since the check: submit makes a new one
        return False

    async def _start(self, lane: Lane, holder: str) -> None:
        """Take, for ``holder``, a slot of the concurrency cap and the rate's next call for
        the lane's next batch; raises if they come after its deadline, or the store fails.

        A quiet lane's batch, or a full one, takes both in one round trip and goes (a lane of
        full batches, as texts at 10 a call, starts one a round trip). Otherwise the slot is
        taken while the batch lingers (it waits for the linger or the slot, whichever is
        longer, not for both), and the rate's next call last, so calls leave as evenly
        spaced as the rate grants them."""
        if lane.quiet or self._queues.full(lane):
            async with self._caller.turns.turn(lane.turn_of):
                await self._calls.charge(lane)
                if await self._caller.start_at_once(holder, deadline_of(lane.jobs)):
                    return  # nothing to wait for: the batch goes at once
        taking = asyncio.create_task(self._caller.take_slot(holder, deadline_of(lane.jobs)))
        try:
            if not lane.quiet:
                await self._linger(lane)
            await taking
        except BaseException:
            taking.cancel()
            raise
        try:
            async with self._caller.turns.turn(lane.turn_of):
                await self._calls.charge(lane)
                await self._caller.pace(deadline_of(lane.jobs))
        except SitOut:
            await self._caller.release(holder)
            raise

    async def _linger(self, lane: Lane) -> None:
        """Give other requests' misses ``linger`` to join, unless the batch is full."""
        until = self._clock() + self.policy.linger_seconds
        while not self._queues.full(lane) and (left := until - self._clock()) > 0:
            lane.arrived.clear()
            if not await wait_event(lane.arrived, left, self._sleep):
                break
        lane.arrived.set()

    async def _give_up(self, lane: Lane, holder: str, exc: GatewayError | StoreError) -> None:
        """Fail every job of the lane (they could not go) with ``exc``, as clients see it."""
        error = exc if isinstance(exc, GatewayError) else store_down()
        await self._caller.release(holder)
        await self._calls.give_back(lane)
        _answer([(item, error) for item in self._queues.take_all(lane)])
        lane.arrived.clear()

    def _fail_due(self, lane: Lane, everything: bool = False) -> None:
        """Fail the misses of teams that made their calls this minute that cannot wait for
        the next (:meth:`~gateway.lane_calls.LaneCalls.due`)."""
        answered = self._clock() + self._caller.call_seconds  # a call made now, as lately
        _answer(self._calls.due(lane, answered, everything))

    async def _sit_out(self, lane: Lane, seconds: float) -> None:
        """Wait out the minute (``seconds``), or until misses arrive (another team's may go)."""
        lane.arrived.clear()
        await wait_event(lane.arrived, seconds, self._sleep)
        lane.arrived.set()

    async def _send(self, lane: Lane, batch: list[Waiting], holder: str) -> None:
        """Call Nomic for ``batch``, answer every item, then let go of the slot."""
        try:
            results = await self._call(lane, batch)
        except Exception:
            log.exception("unexpected error calling Nomic for %d items", len(batch))
            results = [(item, UpstreamError("the upstream call failed unexpectedly"))
                       for item in batch]  # fmt: skip
        except BaseException:
            await self._caller.release(holder)
            raise
        finally:
            lane.sending -= 1
            metrics.BREAKER_STATE.set(("closed", "half_open", "open").index(self.breaker.state))
        _answer(results)
        await self._caller.release(holder)

    async def _call(self, lane: Lane, batch: list[Waiting]) -> Results:
        """Each item's answer: calls Nomic (again without the items the policy takes out
        when Nomic refuses one) until every item is answered or failed."""
        results: Results = []
        attempts, paced = 0, True  # the first call's rate slot was taken before the batch
        while batch:
            contents = [item.job.content for item in batch]
            called = await self._caller.call(
                lane.spec, contents, deadline_of(batch), lane.turn_of,
                paced=paced, attempts=attempts,
            )  # fmt: skip
            attempts, paced, outcome = called.attempts, False, called.outcome
            if isinstance(outcome, UpstreamResult):
                return results + _shares(batch, outcome)
            if isinstance(outcome, GatewayError):
                return results + [(item, outcome) for item in batch]
            batch = self._judged(lane, batch, outcome, results)
        return results

    def _judged(
        self, lane: Lane, batch: list[Waiting], refused: Refused, results: Results
    ) -> list[Waiting]:
        """Carry out the policy's verdict on ``batch`` one item of which Nomic refused: the
        failed items go to ``results``, those set apart to their team's lane; what is to be
        resent is returned."""
        now = self._clock()
        sent = [Sent(item.job.owner, item.job.team) for item in batch]
        verdict = self._refusals.refused(sent, refused.position, shared=lane.shared, now=now)
        results.extend(_failures(batch, verdict, refused.msg))
        if verdict.apart:
            apart = [batch[i] for i in verdict.apart]
            self._queues.enqueue(self._lane((lane.spec, verdict.team)), apart, now)
        return [batch[i] for i in verdict.resend]

    async def drain(self) -> None:
        """Wait for what is queued and in flight (at shutdown), then stop the lanes. Misses
        of teams that made their calls this minute fail at once: they would wait for it."""
        while self.queued or self._sends:
            for lane in self._lanes.values():
                self._fail_due(lane, everything=True)
            if self._sends:
                await asyncio.gather(*self._sends, return_exceptions=True)
            else:
                await self._sleep(0.01)
        self._stopped = True
        for lane in self._lanes.values():
            if lane.task is not None:
                lane.task.cancel()
        await asyncio.gather(
            *(lane.task for lane in self._lanes.values() if lane.task is not None),
            return_exceptions=True,
        )
        await self._caller.stop()


def _shares(batch: Sequence[Waiting], answer: UpstreamResult) -> Results:
    """Each item's vector and share of the call's tokens (:func:`~gateway.models.split_tokens`)."""
    costs = split_tokens(answer.total_tokens, [item.job.weight for item in batch],
                         [item.job.bound for item in batch])  # fmt: skip
    embedded = zip(answer.embeddings, costs, strict=True)
    return [(item, Embedded(*e)) for item, e in zip(batch, embedded, strict=True)]


def _failures(batch: Sequence[Waiting], verdict: Verdict, msg: str) -> Results:
    """The items a refusal's ``verdict`` fails, each with its error."""
    if verdict.refused is None:
        error = UpstreamError("Nomic rejected an item it was not sent")
        return [(item, error) for item in batch]
    failed: Results = [(batch[verdict.refused], ItemRejected(f"rejected by Nomic: {msg}"))]
    withdrawn = Withdrawn("Nomic rejected several items sent with this one")
    return failed + [(batch[i], withdrawn) for i in verdict.withdrawn]


def _answer(results: Iterable[tuple[Waiting, Embedded | GatewayError]]) -> None:
    for item, result in results:
        if item.answer.done():
            continue
        if isinstance(result, GatewayError):
            item.answer.set_exception(result)
        else:
            item.answer.set_result(result)
