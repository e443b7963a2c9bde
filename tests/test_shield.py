"""The shield's parts on a fake clock: the pure policy (who is to blame for a refused item,
what to do after a failed call), the lanes (what their queues admit, the batches), and the
upstream caller and lanes at work (batching, pacing, retries, the breaker, refusals).

Nothing here waits for real: the shield, its coordinator and its breaker read
:class:`FakeClock`, and sleep on it; the test moves it. So the times asserted are exact."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import shield as shield_module
from gateway.breaker import Breaker
from gateway.errors import (
    GatewayError,
    InvalidRequest,
    ItemRejected,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamServerError,
    UpstreamUnavailable,
    Withdrawn,
)
from gateway.lanes import Job, Lanes, Waiting
from gateway.models import Spec, TextOptions
from gateway.shield import Embedded, Shield
from gateway.shield_policy import (
    APART_SECONDS,
    MAX_REJECTIONS_PER_OWNER,
    MAX_REQUESTS_REMEMBERED,
    Policy,
    Refusals,
    Sent,
    Verdict,
    after_failure,
    calls_for,
    judge,
)
from gateway.store.memory_coordinator import MemoryCoordinator
from gateway.upstream import UpstreamItemRejected, UpstreamResult
from tests.fake_clock import START, FakeClock
from tests.helpers import policy as make_policy

IMAGES = Spec("nomic-embed-vision-v1.5", "image")
TEXTS = Spec("nomic-embed-text-v1.5", "text", TextOptions("search_document", None, "mean", None))


class Fixed(random.Random):
    """Jitter pinned to its highest: a backoff's delay is its ceiling."""

    def uniform(self, a: float, b: float) -> float:
        return b


class Nomic:
    """An :class:`~gateway.shield.Embedder` that records each call (when, what) and answers
    as the test scripted: an exception to raise, or else a vector per item and a token each.
    A call takes ``latency`` on the fake clock."""

    def __init__(self, clock: FakeClock, latency: float = 0.0) -> None:
        self.clock = clock
        self.latency = latency
        self.calls: list[tuple[float, list[bytes]]] = []
        self.script: list[BaseException] = []

    async def embed(self, spec: Spec, items: Sequence[bytes]) -> UpstreamResult:
        self.calls.append((self.clock(), list(items)))
        if self.latency:
            await self.clock.sleep(self.latency)
        if self.script:
            raise self.script.pop(0)
        return UpstreamResult([[float(len(item))] for item in items], len(items))

    @property
    def times(self) -> list[float]:
        return [at - START for at, _ in self.calls]


def shield_policy(**changes: Any) -> Policy:
    base: dict[str, Any] = dict(linger_seconds=0.01, rate_calls=4, rate_period_seconds=1.0,
                                rate_burst=1, max_attempts=4)  # fmt: skip
    return make_policy(**(base | changes))


def make_shield(clock: FakeClock, nomic: Nomic, **changes: Any) -> Shield:
    breaker = Breaker(changes.pop("failures_to_open", 5), 5.0, 60.0, clock=clock)
    return Shield(
        nomic, MemoryCoordinator(clock), shield_policy(**changes), breaker=breaker,
        lease_seconds=3.0, clock=clock, sleep=clock.sleep, wall_clock=clock, rng=Fixed(),
    )  # fmt: skip


def job(content: bytes, owner: int = 0, team: str = "a", deadline: float = 60.0) -> Job:
    return Job(content, owner, START + deadline, team=team)


async def outcome(future: asyncio.Future[Embedded]) -> Embedded | GatewayError:
    try:
        return await future
    except GatewayError as error:
        return error


# The policy: who is to blame for a refused item (pure).

A1, A2, B1 = Sent(1, "a"), Sent(2, "a"), Sent(3, "b")


@pytest.mark.parametrize(
    ("batch", "index", "refusals", "shared", "verdict"),
    [
        ([A1, B1], 5, 1, True, Verdict(None)),  # Nomic named an item it was not sent
        ([A1, A1, B1], 0, 1, False, Verdict(0, resend=(1, 2))),  # a team's own lane
        ([A1, A1, B1], 0, 1, True, Verdict(0, apart=(1,), resend=(2,), team="a")),
        ([A1, A2, B1], 1, 1, True, Verdict(1, apart=(0,), resend=(2,), team="a")),
        ([A1, A1, A2], 0, 1, True, Verdict(0, resend=(1, 2), team="a")),  # theirs alone left
        ([A1, A1, B1], 0, 3, False, Verdict(0, withdrawn=(1,), resend=(2,))),  # resends used up
        ([A1, A1, A2, B1], 0, 3, True, Verdict(0, (1,), apart=(2,), resend=(3,), team="a")),
        ([A1, A1], 1, 3, True, Verdict(1, withdrawn=(0,), team="a")),
        ([Sent(1, ""), Sent(2, "")], 0, 1, True, Verdict(0, resend=(1,))),  # no team known
    ],
)
def test_the_policy_decides_who_a_refused_item_costs(
    batch: list[Sent], index: int, refusals: int, shared: bool, verdict: Verdict
) -> None:
    assert judge(batch, index, refusals, shared=shared) == verdict


@given(
    st.lists(st.tuples(st.integers(0, 3), st.sampled_from(["a", "b", ""])), min_size=1),
    st.data(),
    st.integers(1, 5),
    st.booleans(),
)
def test_a_verdict_places_every_item_once_and_blames_only_the_refused_one(
    items: list[tuple[int, str]], data: st.DataObject, refusals: int, shared: bool
) -> None:
    batch = [Sent(owner, team) for owner, team in items]
    index = data.draw(st.integers(0, len(batch) - 1))
    verdict = judge(batch, index, refusals, shared=shared)
    assert verdict.refused == index
    placed = [index, *verdict.withdrawn, *verdict.apart, *verdict.resend]
    assert sorted(placed) == list(range(len(batch)))  # each item once
    bad = batch[index]
    assert all(batch[i].owner == bad.owner for i in verdict.withdrawn)
    assert bool(verdict.withdrawn) <= (refusals >= MAX_REJECTIONS_PER_OWNER)
    assert all(batch[i].team == bad.team for i in verdict.apart)
    assert verdict.team == (bad.team if shared else "")
    assert not verdict.apart or verdict.resend  # set apart only what shares a call with others


def test_a_requests_refusals_are_counted_over_batches_and_the_oldest_forgotten() -> None:
    refusals = Refusals()
    for _ in range(MAX_REJECTIONS_PER_OWNER - 1):
        assert refusals.refused([A1, A1], 0, shared=False, now=0).withdrawn == ()
    assert refusals.refused([A1, A1], 0, shared=False, now=0).withdrawn == (1,)
    for owner in range(100, 100 + MAX_REQUESTS_REMEMBERED):  # then many other requests'
        refusals.refused([Sent(owner, "x")], 0, shared=False, now=0)
    assert refusals.refused([A1, A1], 0, shared=False, now=0).withdrawn == ()  # counted anew


def test_a_refused_team_is_batched_apart_for_its_time_and_no_longer() -> None:
    refusals = Refusals()
    refusals.refused([A1, B1], 0, shared=True, now=10.0)
    assert refusals.apart("a", 10.0)
    assert not refusals.apart("b", 10.0)
    assert refusals.apart("a", 10.0 + APART_SECONDS - 0.001)
    assert not refusals.apart("a", 10.0 + APART_SECONDS)
    refusals.refused([A1, B1], 1, shared=False, now=10.0)  # in its own lane: nobody set apart
    assert not refusals.apart("b", 10.0)


# The policy: what to do after a failed call (pure).

POLICY = shield_policy(max_attempts=3)


@pytest.mark.parametrize(
    ("error", "attempt", "breaker_wait", "time_left", "expected"),
    [
        (UpstreamServerError("5xx"), 0, 0.0, 10.0, 0.25),  # backoff's ceiling, jitter pinned
        (UpstreamServerError("5xx"), 1, 0.0, 10.0, 0.5),
        (UpstreamServerError("5xx", retry_after=3), 0, 0.0, 10.0, 3.0),  # Nomic's Retry-After
        (UpstreamServerError("5xx", retry_after=3), 0, 0.0, 2.0, "error"),  # past the deadline
        (UpstreamServerError("5xx"), 2, 0.0, 10.0, "error"),  # attempts used up
        (InvalidRequest("no"), 0, 0.0, 10.0, "error"),  # not worth retrying
        (UpstreamServerError("5xx", retry_after=1), 0, 7.0, 10.0, "breaker"),
    ],
)
def test_the_policy_decides_when_a_failed_call_is_retried(
    error: GatewayError, attempt: int, breaker_wait: float, time_left: float, expected: object
) -> None:
    decided = after_failure(error, attempt, POLICY, breaker_wait=breaker_wait,
                            time_left=time_left, rng=Fixed())  # fmt: skip
    if expected == "error":
        assert decided is error
    elif expected == "breaker":  # told to come back once the breaker closes, in a copy
        assert isinstance(decided, UpstreamServerError)
        assert decided is not error
        assert (decided.retry_after, decided.msg) == (7.0, error.msg)
        assert error.retry_after == 1  # the error every item of the batch shares: unchanged
    else:
        assert decided == expected


# The lanes: what the queues admit, and the batches they hand out.


async def waiting(*jobs: Job) -> list[Waiting]:
    loop = asyncio.get_running_loop()
    return [Waiting(j, loop.create_future()) for j in jobs]


async def test_a_shared_lane_fills_a_batch_with_each_team_in_turn() -> None:
    lanes = Lanes(shield_policy(batch_items=4))
    lane = lanes.make((IMAGES, ""))
    jobs = [job(b"a%d" % i, team="a") for i in range(5)] + [
        job(b"b%d" % i, team="b") for i in range(2)
    ]
    lanes.enqueue(lane, await waiting(*jobs), START)
    assert (lanes.queued, lanes.queued_calls) == (7, 2)
    batch = lanes.take_batch(lane, None)
    assert [item.job.content for item in batch] == [b"a0", b"b0", b"a1", b"b1"]
    assert (lanes.queued, lanes.queued_calls, lane.bytes) == (3, 1, 6)
    assert [item.job.content for item in lanes.take_batch(lane, lambda t: t != "a")] == []
    assert len(lanes.take_all(lane)) == 3
    assert lanes.queued == lanes.queued_calls == 0


KEYS = [(IMAGES, ""), (IMAGES, "a"), (TEXTS, "b")]  # a shared lane, and two teams' own


@given(
    st.lists(
        st.tuples(st.sampled_from(["add", "batch", "all"]), st.integers(0, 2),
                  st.sampled_from("abc"), st.integers(1, 12), st.integers(1, 4000)),
        max_size=30,
    )
)  # fmt: skip
def test_the_lanes_counts_stay_what_their_queues_hold(
    steps: list[tuple[str, int, str, int, int]],
) -> None:
    """The counts the lanes keep as misses come and go (items, bytes, the calls they need,
    by lane and by team) equal what counting their queues afresh gives."""
    policy = shield_policy(batch_items=8, text_batch_items=4, batch_bytes=10_000)
    lanes, loop = Lanes(policy), asyncio.new_event_loop()
    try:
        made = {key: lanes.make(key) for key in KEYS}
        for step, (what, index, team, count, size) in enumerate(steps):
            lane = made[KEYS[index]]
            team = KEYS[index][1] or team
            if what == "add":
                jobs = [Job(b"%d %d " % (step, i) + b"x" * size, step, START + 60, team=team)
                        for i in range(count)]  # fmt: skip
                lanes.enqueue(lane, [Waiting(j, loop.create_future()) for j in jobs], START)
            elif what == "batch":
                lanes.take_batch(lane, None)
            else:
                lanes.take_all(lane)
        for lane in made.values():
            items = list(lane.jobs)
            assert lane.bytes == sum(len(item.job.content) for item in items)
            assert lane.calls == calls_for(len(items), lane.bytes, lane.most, policy)
            teams = {item.job.team for item in items}
            expected = {
                team: lane.calls if not lane.shared else
                calls_for(lane.jobs.count(team), lane.jobs.size(team), lane.most, policy)
                for team in teams
            }  # fmt: skip
            assert lane.team_calls == {team: n for team, n in expected.items() if n}
        assert lanes.queued == sum(len(lane.jobs) for lane in made.values())
        assert lanes.queued_calls == sum(lane.calls for lane in made.values())
    finally:
        loop.close()


async def test_a_batch_keeps_to_its_bytes_but_takes_a_large_first_item() -> None:
    lanes = Lanes(shield_policy(batch_items=10, batch_bytes=10))
    lane = lanes.make((IMAGES, ""))
    lanes.enqueue(lane, await waiting(job(b"x" * 25), job(b"y" * 6), job(b"z" * 6)), START)
    assert [len(item.job.content) for item in lanes.take_batch(lane, None)] == [25]
    assert [len(item.job.content) for item in lanes.take_batch(lane, None)] == [6]


async def test_the_lanes_refuse_what_they_cannot_serve_with_an_honest_retry_after() -> None:
    lanes = Lanes(shield_policy(queue_items=8, batch_items=2))
    key = (IMAGES, "")
    lanes.enqueue(lanes.make(key), await waiting(job(b"1"), job(b"2")), START)
    full = lanes.refusal(key, [job(b"%d" % i, team="b") for i in range(7)], 0.1, START)
    assert full is not None
    assert "queue is full" in full.msg
    assert full.retry_after == pytest.approx(0.1)  # the one queued call
    share = lanes.refusal(key, [job(b"3", team="a")], 0.1, START)  # a quarter of 8: 2 queued
    assert share is not None
    assert "team's upstream queue" in share.msg
    late = lanes.refusal(key, [job(b"4", team="b", deadline=0.05)], 0.1, START)
    assert late is not None
    assert "deadline" in late.msg
    assert lanes.refusal(key, [job(b"4", team="b", deadline=0.5)], 0.1, START) is None


# The shield at work, on the fake clock.


async def test_a_lone_miss_goes_at_once_and_a_burst_shares_one_call_after_the_linger() -> None:
    clock = FakeClock()
    nomic = Nomic(clock)
    shield = make_shield(clock, nomic, linger_seconds=0.05, rate_calls=1000)
    try:
        [first] = shield.submit(IMAGES, [job(b"first")])
        assert await clock.run(first) == Embedded([5.0], 1)
        await clock.advance(0.01)  # within the linger of the first: others may be coming
        answers = [shield.submit(IMAGES, [job(b"%d" % i, owner=i)])[0] for i in range(3)]
        await clock.run(asyncio.gather(*answers))
        assert nomic.times == [0.0, pytest.approx(0.06)]  # the linger, exactly
        assert [len(items) for _, items in nomic.calls] == [1, 3]
    finally:
        await clock.run(shield.drain())


async def test_full_batches_go_at_once_spaced_by_the_rate() -> None:
    clock = FakeClock()
    nomic = Nomic(clock)
    shield = make_shield(clock, nomic, batch_items=2, rate_calls=4, rate_burst=1)
    try:
        answers = shield.submit(IMAGES, [job(b"%d" % i) for i in range(6)])
        await clock.run(asyncio.gather(*answers))
        assert nomic.times == [0.0, 0.25, 0.5]  # 4 calls a second, one at a time
    finally:
        await clock.run(shield.drain())


async def test_a_call_slot_is_renewed_while_its_call_runs_and_given_back_when_it_ends() -> None:
    clock = FakeClock()
    nomic = Nomic(clock, latency=10.0)  # over three leases of 3 s
    shield = make_shield(clock, nomic, batch_items=1, concurrency=1, rate_calls=1000)
    try:
        answers = shield.submit(IMAGES, [job(b"x"), job(b"y", owner=1)])
        await clock.run(asyncio.gather(*answers))
        assert nomic.times[0] == 0.0
        # the one slot was held for all of the first call, then taken at the next poll for it
        assert 10.0 <= nomic.times[1] < 10.0 + 0.015
    finally:
        await clock.run(shield.drain())


async def test_a_failed_call_is_retried_after_its_backoff_and_nomics_retry_after() -> None:
    clock = FakeClock()
    nomic = Nomic(clock)
    nomic.script = [UpstreamServerError("503"), UpstreamRateLimited("429", retry_after=2.0)]
    shield = make_shield(clock, nomic, rate_calls=1000)
    try:
        [answer] = shield.submit(IMAGES, [job(b"x")])
        assert await clock.run(answer) == Embedded([1.0], 1)
        assert nomic.times == [0.0, 0.25, 2.25]  # backoff 0.25 s; then Nomic's 2 s
    finally:
        await clock.run(shield.drain())


async def test_the_breaker_opens_and_its_wait_is_told_without_changing_nomics_error() -> None:
    clock = FakeClock()
    nomic = Nomic(clock)
    failure = UpstreamServerError("503")
    nomic.script = [failure, failure]
    shield = make_shield(clock, nomic, rate_calls=1000, failures_to_open=2)
    try:
        answers = shield.submit(IMAGES, [job(b"x"), job(b"y", owner=1)])
        errors = await clock.run(asyncio.gather(*map(outcome, answers)))
        assert errors[0] is errors[1]  # one error for the batch, a copy of Nomic's
        assert isinstance(errors[0], UpstreamServerError)
        assert errors[0] is not failure
        assert errors[0].retry_after == 5.0  # the breaker's cool-down
        assert failure.retry_after is None
        assert nomic.times == [0.0, 0.25]
        with pytest.raises(UpstreamUnavailable) as refused:
            shield.submit(IMAGES, [job(b"z")])
        assert refused.value.retry_after == 5.0
        await clock.advance(5.0)
        [answer] = shield.submit(IMAGES, [job(b"z")])  # half-open: it goes, and closes it
        assert await clock.run(answer) == Embedded([1.0], 1)
        assert shield.breaker.state == "closed"
    finally:
        await clock.run(shield.drain())


async def test_a_refused_item_fails_its_request_and_its_team_goes_apart() -> None:
    clock = FakeClock()
    nomic = Nomic(clock)
    shield = make_shield(clock, nomic, rate_calls=1000, linger_seconds=0.05)
    try:
        await clock.run(shield.submit(IMAGES, [job(b"warm", owner=9)])[0])
        await clock.advance(0.01)  # within the linger of the last miss: the next ones batch
        nomic.script = [UpstreamItemRejected(0, "cannot decode")]
        bad = shield.submit(IMAGES, [job(b"bad", 1, "a"), job(b"a2", 1, "a")])
        good = shield.submit(IMAGES, [job(b"b1", 2, "b"), job(b"b2", 2, "b")])
        answers = await clock.run(asyncio.gather(*map(outcome, bad + good)))
        assert isinstance(answers[0], ItemRejected)
        assert answers[1:] == [Embedded([2.0], 1)] * 3
        calls = sorted(items for _, items in nomic.calls[1:])
        assert calls == [[b"a2"], [b"b1", b"b2"], [b"bad", b"b1", b"a2", b"b2"]]
        await clock.advance(0.01)
        later = shield.submit(IMAGES, [job(b"a3", 3, "a")]) + shield.submit(
            IMAGES, [job(b"b3", 4, "b")]
        )
        await clock.run(asyncio.gather(*later))
        assert sorted(items for _, items in nomic.calls[4:]) == [[b"a3"], [b"b3"]]  # apart
    finally:
        await clock.run(shield.drain())


async def test_a_request_whose_items_nomic_keeps_refusing_has_the_rest_withdrawn() -> None:
    clock = FakeClock()
    nomic = Nomic(clock)
    nomic.script = [UpstreamItemRejected(0, "bad")] * MAX_REJECTIONS_PER_OWNER
    shield = make_shield(clock, nomic, rate_calls=1000, batch_items=8)
    try:
        mine = [job(b"m%d" % i, owner=1, team="t") for i in range(5)]
        answers = await clock.run(asyncio.gather(*map(outcome, shield.submit(TEXTS, mine))))
        assert [type(a) for a in answers] == [ItemRejected] * 3 + [Withdrawn] * 2
        assert [len(items) for _, items in nomic.calls] == [5, 4, 3]  # no fourth resend
    finally:
        await clock.run(shield.drain())


async def test_a_batch_that_names_an_item_it_was_not_sent_fails_whole() -> None:
    clock = FakeClock()
    nomic = Nomic(clock)
    nomic.script = [UpstreamItemRejected(7, "bad")]
    shield = make_shield(clock, nomic, rate_calls=1000)
    try:
        answers = shield.submit(IMAGES, [job(b"x"), job(b"y")])
        errors = await clock.run(asyncio.gather(*map(outcome, answers)))
        assert all(type(error) is UpstreamError for error in errors)
    finally:
        await clock.run(shield.drain())


async def test_a_lane_left_idle_goes_and_comes_back_when_needed() -> None:
    clock = FakeClock()
    nomic = Nomic(clock)
    shield = make_shield(clock, nomic, rate_calls=1000)
    try:
        [answer] = shield.submit(TEXTS, [job(b"x", team="t")])
        await clock.run(answer)
        await clock.advance(shield_module.LANE_IDLE_SECONDS - 1)
        assert (TEXTS, "t") in shield._lanes
        await clock.advance(1)
        assert shield._lanes == {}
        [answer] = shield.submit(TEXTS, [job(b"y", team="t")])
        assert await clock.run(answer) == Embedded([1.0], 1)
    finally:
        await clock.run(shield.drain())


async def test_a_deadline_the_rate_cannot_meet_is_refused_at_once() -> None:
    clock = FakeClock()
    nomic = Nomic(clock, latency=0.1)
    shield = make_shield(clock, nomic, batch_items=1, rate_calls=1, rate_period_seconds=10.0)
    try:
        first = shield.submit(IMAGES, [job(b"x", deadline=30)])
        with pytest.raises(UpstreamUnavailable) as refused:
            shield.submit(IMAGES, [job(b"y", owner=1, deadline=5)])
        assert refused.value.retry_after == pytest.approx(10.0)  # the next call of the rate
        await clock.run(asyncio.gather(*first))
    finally:
        await clock.run(shield.drain())
