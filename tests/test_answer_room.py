"""Room for answers before they are built (gateway/answer_room.py): reservations in the budget
of unsent bytes, waiting for room and giving up, and the bound of a hit's answer in every
shape. The budget's holders here are stand-ins that record being dropped."""

from __future__ import annotations

import asyncio
import itertools
import random

import pytest

from gateway import entries
from gateway.answer_room import AnswerRoom, held_for, hit_bound
from gateway.answers import Shape
from gateway.assembly import Lookup, assemble
from gateway.errors import Overloaded
from gateway.forms import ParsedRequest
from gateway.held_bytes import ByteBudget, Held

WAIT = 5.0  # long enough never to run out where a test expects room to come


class Dropped:
    def __init__(self, budget: ByteBudget, held: Held) -> None:
        self.budget, self.held = budget, held
        self.reasons: list[str] = []

    def drop(self, reason: str) -> None:
        self.reasons.append(reason)
        self.budget.release(self.held)


def room(max_bytes: int = 100, wait: float = WAIT) -> AnswerRoom:
    return AnswerRoom(ByteBudget(max_bytes, "unsent_budget"), wait, clock=lambda: 10.0)


def holding(answers: AnswerRoom, count: int, since: float = 0.0) -> Dropped:
    """A connection whose client has not read ``count`` bytes since ``since``."""
    held = Held()
    owner = Dropped(answers.budget, held)
    answers.budget.add(held, count, since, owner)
    return owner


async def test_an_answer_that_fits_is_reserved_at_once_and_released_once() -> None:
    answers = room()
    first = await answers.reserve(60)
    second = await answers.reserve(40)
    assert (answers.budget.total, answers.budget.reserved) == (100, 100)
    first.release()
    first.release()  # idempotent
    assert answers.budget.total == 40
    second.release()
    assert (answers.budget.total, answers.budget.reserved) == (0, 0)


async def test_no_room_drops_the_connections_holding_the_most_unread_for_the_longest() -> None:
    answers = room()
    stalled, recent = holding(answers, 50, since=0.0), holding(answers, 30, since=9.0)
    reservation = await answers.reserve(40)  # 120 over 100: down to 75, the stalled one goes
    assert (stalled.reasons, recent.reasons) == (["unsent_budget"], [])
    assert answers.budget.total == 70
    reservation.release()


async def test_answers_being_built_are_waited_for_and_the_room_granted_when_freed() -> None:
    answers = room()
    building = await answers.reserve(80)
    waiting = asyncio.create_task(answers.reserve(50))
    await asyncio.sleep(0)
    assert answers.waiting == 1
    assert not waiting.done()
    building.release()
    granted = await waiting
    assert (answers.budget.total, answers.waiting) == (50, 0)
    granted.release()
    assert answers.budget.total == 0


async def test_a_small_answer_passes_a_large_one_waiting() -> None:
    answers = room()
    building = await answers.reserve(70)
    large = asyncio.create_task(answers.reserve(60))
    await asyncio.sleep(0)
    small = await answers.reserve(20)  # fits beside what is being built: no wait
    assert not large.done()
    small.release()
    building.release()
    (await large).release()
    assert answers.budget.total == 0


async def test_no_room_in_time_is_a_503_with_retry_after_and_leaves_nothing_reserved() -> None:
    answers = room(wait=0.01)
    building = await answers.reserve(90)
    with pytest.raises(Overloaded) as refused:
        await answers.reserve(50)
    assert refused.value.status == 503
    assert refused.value.retry_after == 1
    assert (answers.budget.total, answers.waiting) == (90, 0)
    building.release()
    assert answers.budget.total == 0


async def test_a_handler_cancelled_while_waiting_leaves_nothing_reserved() -> None:
    answers = room()
    building = await answers.reserve(90)
    waiting = asyncio.create_task(answers.reserve(50))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert answers.waiting == 0
    building.release()
    assert answers.budget.total == 0


async def test_room_granted_to_a_handler_cancelled_meanwhile_is_given_back() -> None:
    answers = room()
    building = await answers.reserve(90)
    waiting = asyncio.create_task(answers.reserve(50))
    await asyncio.sleep(0)
    building.release()  # granted: 50 reserved for it ...
    waiting.cancel()  # ... as its client hangs up, before it runs again
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert (answers.budget.total, answers.budget.reserved) == (0, 0)


async def test_an_answer_larger_than_the_budget_is_built_when_nothing_else_is_held() -> None:
    answers = room()
    alone = await answers.reserve(500)
    assert answers.budget.total == 500
    alone.release()


def test_an_answer_built_already_is_counted_room_or_not() -> None:
    answers = room()
    holder = holding(answers, 90)
    taken = answers.take(50)
    assert (answers.budget.total, holder.reasons) == (140, [])
    taken.release()
    assert answers.budget.total == 90


def lookup_of(vectors: list[list[float]], order: list[int], shape: Shape) -> Lookup:
    keys = [f"k{index}" for index in order]
    found = {f"k{n}": entries.decode(entries.encode(v, 5)) for n, v in enumerate(vectors)}
    request = ParsedRequest.of("nomic-embed-vision-v1.5", "image", [b"i"] * len(keys),
                               shape=shape)  # fmt: skip
    return Lookup(request, keys, dict.fromkeys(keys, b"i"), found, [], {})


@pytest.mark.parametrize("shape", ["nomic", "openai", "openai-base64"])
def test_a_hits_bound_holds_its_answer_in_every_shape(shape: Shape) -> None:
    generator = random.Random(7)
    vectors = [[generator.uniform(-1, 1) for _ in range(768)] for _ in range(4)]
    order = list(itertools.islice(itertools.cycle([0, 1, 2, 3, 1]), 1500))  # repeats too
    lookup = lookup_of(vectors, order, shape)
    body = assemble(lookup).body
    assert held_for(len(body)) <= hit_bound(lookup)
    if shape != "openai-base64":  # a third of the JSON's size: the bound is loose for it
        assert hit_bound(lookup) <= held_for(len(body) * 11 // 10)
