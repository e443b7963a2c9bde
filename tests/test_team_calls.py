"""A team's upstream calls a minute (``upstream_calls_per_minute``, gateway/team_calls.py): the
count in the store on every store, the decisions on a fake clock, and the shield passing over
a team whose calls of the minute are made."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import CallsUsedUp
from gateway.models import Spec, TextOptions
from gateway.shield import Embedded, Job, Shield
from gateway.store import StoreError
from gateway.store.base import Coordinator
from gateway.store.memory_coordinator import MemoryCoordinator
from gateway.store.redis_coordinator import RedisCoordinator
from gateway.team_calls import TeamCalls, must_fail
from gateway.upstream import UpstreamResult
from tests.conftest import flush, open_redis_backend
from tests.helpers import policy as make_policy
from tests.helpers import shield as make_shield

MINUTE = 29_500_000  # a UTC minute, counted from the epoch
IMAGES = Spec("nomic-embed-vision-v1.5", "image")


class Clock:
    """Wall-clock seconds, set by the test."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Counting:
    """A coordinator that counts the round trips asking it for team calls, and fails those
    of ``failing`` teams."""

    def __init__(self, failing: Sequence[str] = ()) -> None:
        self.inner = MemoryCoordinator()
        self.asked: list[str] = []
        self.failing = set(failing)

    async def take_team_call(self, team_id: str, minute: int, limit: int) -> bool:
        self.asked.append(team_id)
        if team_id in self.failing:
            raise StoreError("down")
        return await self.inner.take_team_call(team_id, minute, limit)

    async def give_back_team_call(self, team_id: str, minute: int) -> None:
        await self.inner.give_back_team_call(team_id, minute)


def test_a_miss_fails_at_once_only_if_its_deadline_comes_before_the_minute_ends() -> None:
    assert must_fail(deadline=10.0, now=5.0, minute_left=6.0)
    assert must_fail(deadline=11.0, now=5.0, minute_left=6.0)
    assert not must_fail(deadline=11.5, now=5.0, minute_left=6.0)  # it waits for the next


async def test_a_teams_calls_are_counted_up_to_its_limit_in_each_minute(
    coordinator: Coordinator,
) -> None:
    taken = [await coordinator.take_team_call("a", MINUTE, 3) for _ in range(4)]
    assert taken == [True, True, True, False]
    assert await coordinator.take_team_call("b", MINUTE, 3)  # another team: a count of its own
    await coordinator.give_back_team_call("a", MINUTE)  # a call counted that never went
    assert await coordinator.take_team_call("a", MINUTE, 3)
    assert not await coordinator.take_team_call("a", MINUTE, 3)
    assert await coordinator.take_team_call("a", MINUTE + 1, 3)  # the next minute: anew
    assert not await coordinator.take_team_call("c", MINUTE, 0)  # a limit of 0: no calls


async def test_a_give_back_never_counts_below_zero(coordinator: Coordinator) -> None:
    await coordinator.give_back_team_call("a", MINUTE)
    await coordinator.give_back_team_call("a", MINUTE)
    assert [await coordinator.take_team_call("a", MINUTE, 1) for _ in range(2)] == [True, False]


async def test_replicas_racing_never_count_more_than_the_limit(coordinator: Coordinator) -> None:
    """200 takes at once (on Redis, pipelined from one client: as many replicas at once)."""
    taken = await asyncio.gather(*(coordinator.take_team_call("a", MINUTE, 7) for _ in range(200)))
    assert sum(taken) == 7


# A take (with a limit) or a give-back, by a team, after the clock moves on a minute (one
# time in five) or not.
TAKE_OR_GIVE_BACK = st.none() | st.sampled_from((0, 1, 3, 5))
FORWARD = st.sampled_from((0, 0, 0, 0, 1))
TEAM_CALLS = st.lists(
    st.tuples(FORWARD, st.sampled_from(("a", "b", "c")), TAKE_OR_GIVE_BACK),
    max_size=60,
)


async def count_both(url: str, steps: list[tuple[int, str, int | None]]) -> list[Any]:
    """What each take answered: (on Redis, in the embedded store)."""
    backend = open_redis_backend(url)
    try:
        shared, embedded = RedisCoordinator(backend), MemoryCoordinator()
        minute, answers = MINUTE, []
        for forward, team, limit in steps:
            minute += forward
            if limit is None:
                await shared.give_back_team_call(team, minute)
                await embedded.give_back_team_call(team, minute)
            else:
                answers.append((await shared.take_team_call(team, minute, limit),
                                await embedded.take_team_call(team, minute, limit)))  # fmt: skip
        return answers
    finally:
        await backend.close()


@pytest.mark.parametrize("store_url", ["redis", "cluster"], indirect=True)
# store_url names a store, flushed below for each example
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(TEAM_CALLS)
def test_lua_counts_as_the_embedded_store_does(
    store_url: str, steps: list[tuple[int, str, int | None]]
) -> None:
    """team_call.lua and untake_team_call.lua against MemoryCoordinator's rule, fed the same
    random sequences of takes and give-backs over teams, limits and minutes (never going
    back: the embedded store keeps the latest minute only)."""
    flush(store_url)
    answers = asyncio.run(count_both(store_url, steps))
    assert [on_redis for on_redis, _ in answers] == [in_memory for _, in_memory in answers]


async def test_a_team_is_charged_to_its_limit_then_refused_without_asking_again() -> None:
    clock, store = Clock(MINUTE * 60 + 45.0), Counting()
    calls = TeamCalls(store, clock)  # type: ignore[arg-type]
    calls.note("a", 2)
    calls.note("free", None)
    assert (await calls.charge(["a", "free"])).teams == {"a"}
    assert (await calls.charge(["a"])).teams == {"a"}
    assert calls.used_up("a") is None  # not known yet: its count is in the store
    assert (await calls.charge(["a"])).teams == set()
    assert calls.used_up("a") == 15.0  # the seconds left of the minute
    asked = len(store.asked)
    assert (await calls.charge(["a", "free"])).teams == set()
    assert len(store.asked) == asked  # known out: no round trip; an unlimited team: none ever
    assert "free" not in store.asked
    calls.note("a", 2)  # the same limit: still known out
    assert calls.used_up("a") == 15.0
    calls.note("a", 3)  # raised by an admin: the store is asked again
    assert (await calls.charge(["a"])).teams == {"a"}
    clock.now += 15.0  # the next minute
    assert calls.used_up("a") is None
    assert (await calls.charge(["a"])).teams == {"a"}


async def test_a_refusal_names_the_limit_and_when_the_minute_ends() -> None:
    calls = TeamCalls(MemoryCoordinator(), Clock(MINUTE * 60 + 50.5))
    calls.note("a", 5)
    refused = calls.refusal("a")
    assert isinstance(refused, CallsUsedUp)
    assert (refused.status, refused.loc, refused.retry_after) == (
        429, ("limits", "upstream_calls_per_minute"), 10)  # fmt: skip
    assert refused.headers == {
        "X-RateLimit-Limit": "5", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "10",
    }  # fmt: skip
    assert "upstream_calls_per_minute" in refused.msg


async def test_a_store_failure_gives_back_the_calls_it_counted() -> None:
    store = Counting(failing=["b"])
    calls = TeamCalls(store, Clock(MINUTE * 60))  # type: ignore[arg-type]
    calls.note("a", 1)
    calls.note("b", 1)
    with pytest.raises(StoreError):
        await calls.charge(["a", "b"])
    assert await store.inner.take_team_call("a", MINUTE, 1)  # a's one call was given back


# The shield: a fake upstream, the embedded coordinator and a wall clock set by the test.


class Nomic:
    """A fake upstream that notes each call's items."""

    def __init__(self, wall: Clock | Any) -> None:
        self.wall = wall
        self.calls: list[list[bytes]] = []

    async def embed(self, spec: Spec, items: Sequence[bytes]) -> UpstreamResult:
        self.calls.append(list(items))
        return UpstreamResult([[0.5] * 4 for _ in items], len(items))


def text_spec(max_tokens: int) -> Spec:
    return Spec("nomic-embed-text-v1.5", "text", TextOptions("search_document", None, "mean",
                                                             max_tokens))  # fmt: skip


def shield_for(nomic: Nomic, wall: Any, coordinator: Coordinator | None = None) -> Shield:
    policy = make_policy(linger_seconds=0, rate_calls=100_000, rate_period_seconds=1,
                         rate_burst=1000)  # fmt: skip
    return make_shield(nomic, coordinator or MemoryCoordinator(), policy, wall_clock=wall)


async def outcomes(answers: Sequence[asyncio.Future[Embedded]]) -> list[str]:
    done = await asyncio.gather(*answers, return_exceptions=True)
    return [type(result).__name__ for result in done]


async def test_a_team_out_of_calls_is_refused_while_another_team_goes() -> None:
    """20 one-text requests of team a, each with options of its own (20 lanes, 20 calls),
    on a limit of 5, their deadline 10 s away and the minute's end 30 s: 5 calls go, the
    other 15 are refused 429 without a call; team b's miss, sent after them, goes."""
    wall = Clock(MINUTE * 60 + 30.0)
    nomic = Nomic(wall)
    shield = shield_for(nomic, wall)
    try:
        deadline = time.monotonic() + 10
        answers = [
            shield.submit(text_spec(n), [Job(b"a %d" % n, n, deadline, team="a",
                                             calls_per_minute=5)])[0]
            for n in range(1, 21)
        ]  # fmt: skip
        [victim] = shield.submit(text_spec(1), [Job(b"b", 99, deadline, team="b")])
        results = await outcomes(answers)
        assert results.count("Embedded") == 5
        assert results.count("CallsUsedUp") == 15
        assert isinstance(await victim, Embedded)
        assert len(nomic.calls) == 6  # a's five, b's one
        with pytest.raises(CallsUsedUp):  # known out: refused as it comes, not queued
            shield.submit(text_spec(1), [Job(b"a again", 100, deadline, team="a",
                                             calls_per_minute=5)])  # fmt: skip
        assert shield.queued == 0
    finally:
        await shield.drain()


async def test_a_team_out_of_calls_waits_for_the_next_minute_when_its_deadline_allows() -> None:
    """The same 20 requests, the minute ending 2 s after they are sent and their deadline
    30 s away: 5 go this minute, 5 the next, and the last 10 are refused once the next
    minute's calls are made (their deadline comes before it ends)."""
    offset = MINUTE * 60 + 58.0 - time.monotonic()
    coordinator = MemoryCoordinator()
    nomic = Nomic(lambda: time.monotonic() + offset)
    shield = shield_for(nomic, nomic.wall, coordinator)
    try:
        deadline = time.monotonic() + 30
        answers = [
            shield.submit(text_spec(n), [Job(b"a %d" % n, n, deadline, team="a",
                                             calls_per_minute=5)])[0]
            for n in range(1, 21)
        ]  # fmt: skip
        results = await outcomes(answers)
        assert results.count("Embedded") == 10
        assert results.count("CallsUsedUp") == 10
        assert len(nomic.calls) == 10
        assert coordinator._team_calls["a"] == (MINUTE + 1, 5)  # five counted in the next
    finally:
        await shield.drain()


async def test_a_call_shared_by_teams_counts_for_each_and_the_team_out_of_calls_is_left_out() -> (
    None
):
    """Images of teams a (a limit of 1), b (unlimited) and c (a limit of 2) share calls:
    each call counts one for each limited team in it; once a's call is made, its images stay
    out of the calls that b's and c's go on in."""
    wall = Clock(MINUTE * 60 + 10.0)
    nomic = Nomic(wall)
    shield = shield_for(nomic, wall)
    deadline = time.monotonic() + 10
    limits = {"a": 1, "b": None, "c": 2}

    def send(team: str, n: int) -> asyncio.Future[Embedded]:
        job = Job(b"%s %d" % (team.encode(), n), n, deadline, team=team,
                  calls_per_minute=limits[team])  # fmt: skip
        return shield.submit(IMAGES, [job])[0]

    try:
        first = [send(team, 1) for team in "abc"]  # one call, counted for a and c
        assert await outcomes(first) == ["Embedded"] * 3
        second = [send(team, 2) for team in "abc"]  # a has made its call
        assert await outcomes(second) == ["CallsUsedUp", "Embedded", "Embedded"]
        third = [send(team, 3) for team in "bc"]  # c its two: b goes alone
        assert await outcomes(third) == ["Embedded", "CallsUsedUp"]
        held = [sorted(item.split()[0].decode() for item in items) for items in nomic.calls]
        assert held == [["a", "b", "c"], ["b", "c"], ["b"]]
    finally:
        await shield.drain()
