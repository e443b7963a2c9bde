"""Teams in turn (gateway/turns.py): the order turns and queued items are given in."""

from __future__ import annotations

import asyncio

from gateway.turns import TeamQueue, Turns


async def take_turns(turns: Turns, teams: list[str], cancelled: int | None = None) -> list[str]:
    """Every one of ``teams`` (in the order they ask) asks for a turn while another holds it
    (the waiter at index ``cancelled`` is cancelled meanwhile); the order they were served in."""
    served: list[str] = []
    release = asyncio.Event()

    async def holder() -> None:
        async with turns.turn("holder"):
            await release.wait()

    async def one(team: str) -> None:
        async with turns.turn(team):
            served.append(team)

    first = asyncio.create_task(holder())
    await asyncio.sleep(0)
    waiters = [asyncio.create_task(one(team)) for team in teams]
    await asyncio.sleep(0)
    if cancelled is not None:
        waiters.pop(cancelled).cancel()
    release.set()
    await asyncio.gather(first, *waiters)
    return served


async def test_a_team_with_many_waiters_is_served_once_a_round() -> None:
    bulk = ["bulk"] * 6
    served = await take_turns(Turns(), [*bulk, "victim", "other"])
    assert served[:3] == ["bulk", "victim", "other"]  # the victim waits for one call, not six
    assert served[3:] == ["bulk"] * 5


async def test_a_free_turn_is_taken_at_once_and_given_back() -> None:
    turns = Turns()
    async with turns.turn("a"):
        assert turns.waiting == 0
    async with turns.turn("b"):  # nobody holds it: no wait
        pass
    assert turns.waiting == 0


async def test_a_waiter_cancelled_leaves_the_turn_to_the_next() -> None:
    turns = Turns()
    assert await take_turns(turns, ["gone", "stays"], cancelled=0) == ["stays"]
    assert turns.waiting == 0
    async with turns.turn("after"):  # nothing left held
        pass


def test_a_team_queue_takes_one_item_of_each_team_in_turn() -> None:
    queue: TeamQueue[tuple[str, int]] = TeamQueue(lambda item: item[0], lambda item: item[1])
    queue.extend(("bulk", n) for n in range(5))
    queue.extend([("victim", 0), ("other", 0), ("victim", 1)])
    assert len(queue) == 8
    assert queue.count("victim") == 2
    assert (queue.size("victim"), queue.size("bulk")) == (1, 10)
    assert queue.first() == ("bulk", 0)
    taken = [queue.popleft() for _ in range(6)]
    assert taken == [("bulk", 0), ("victim", 0), ("other", 0), ("bulk", 1), ("victim", 1),
                     ("bulk", 2)]  # fmt: skip
    assert list(queue) == [("bulk", 3), ("bulk", 4)]
    assert not queue.count("victim")
    assert (queue.size("victim"), queue.size("bulk")) == (0, 7)
