"""A connection's parts, which decide and hold no transport: its request head as it arrives
(gateway.request_head), its body's end and pace (gateway.request_body) and its answers' unsent
bytes (gateway.unsent), against real byte budgets and answer rooms, on a clock of numbers."""

from __future__ import annotations

from gateway.answer_room import AnswerRoom
from gateway.connections import Patience
from gateway.held_bytes import ByteBudget
from gateway.request_body import RequestBody
from gateway.request_head import RequestHead
from gateway.unsent import UnsentBytes

PATIENCE = Patience(slow_seconds=2.0, body_bytes_per_second=100, body_window_seconds=5.0)


class Dropped:
    def __init__(self) -> None:
        self.reasons: list[str] = []

    def drop(self, reason: str) -> None:
        self.reasons.append(reason)


def test_a_head_split_over_reads_is_held_until_parsed_and_found_across_the_split() -> None:
    budget = ByteBudget(1000, "header_budget")
    head, owner = RequestHead(budget, max_bytes=40), Dropped()
    assert head.since is None
    head.begin(10.0)
    head.hold(b"GET / HTTP/1.1\r\nHost: gw\r", owner)
    assert (head.since, head.held.bytes, budget.total) == (10.0, 25, 25)
    assert head.end(b"\n\r\nbody") == 3  # the blank line began in the read before
    assert head.too_large(16)
    assert not head.too_large(15)
    head.parsed()
    assert (head.coming, head.since, budget.total, head.tail) == (False, None, 0, b"")


def test_a_head_gets_room_only_by_dropping_others_not_itself() -> None:
    budget = ByteBudget(100, "header_budget")
    other, others = RequestHead(budget, 1000), Dropped()
    other.begin(0.0)
    other.hold(b"x" * 90, others)
    head = RequestHead(budget, 1000)
    head.begin(5.0)
    assert head.room_for(10, 5.0)
    assert others.reasons == []
    assert head.room_for(20, 5.0)  # 110: the other one goes
    assert (others.reasons, budget.total) == (["header_budget"], 0)
    head.hold(b"y" * 95, Dropped())
    assert not head.room_for(20, 6.0)  # the heaviest is itself
    assert budget.total == 0


def test_bytes_kept_past_a_body_are_held_until_released() -> None:
    budget = ByteBudget(1000, "header_budget")
    head = RequestHead(budget, 100)
    head.keep(30, 7.0, Dropped())
    assert (budget.total, head.held.since, head.since) == (30, 7.0, None)
    head.release()
    head.release()  # idempotent
    assert budget.total == 0


def test_a_body_is_cut_at_its_length_and_judged_over_whole_windows() -> None:
    body = RequestBody()
    body.left = 4
    assert body.split(b"abcdefg") == (b"abcd", b"efg")
    assert body.split(b"ab") == (b"ab", b"")
    body.left = -1  # chunked: its end is the parser's to find
    assert body.split(b"abcdefg") == (b"abcdefg", b"")
    body.restart_window(100.0)
    body.window_bytes = 400
    assert body.judge(103.0, PATIENCE) is None  # too soon
    assert body.judge(105.0, PATIENCE) == 80.0
    assert (body.window_start, body.window_bytes) == (105.0, 0)
    assert body.judge(107.0, PATIENCE) == 80.0  # the last window judged, till the next


def test_an_answers_room_is_kept_until_its_bytes_are_counted_unsent_then_sent() -> None:
    budget = ByteBudget(10_000, "unsent_budget")
    room = AnswerRoom(budget, 1.0, lambda: 0.0)
    unsent, owner = UnsentBytes(room), Dropped()
    unsent.keep(room.take(5000))
    assert budget.total == 5000
    unsent.answer_bytes = 1000
    unsent.paused(300, 1.0, owner)  # the reservation gives way to what is counted
    assert (budget.total, budget.reserved, unsent.held.since) == (1300, 0, 1.0)
    assert unsent.unread_for(300, 4.0, owner) == 3.0  # nothing read
    assert unsent.unread_for(200, 5.0, owner) == 0.0  # some read
    assert budget.total == 1200
    unsent.sent()
    unsent.written()
    assert (budget.total, unsent.answer_bytes) == (0, 0)


def test_an_answer_its_connection_dropped_is_counted_until_its_handler_lets_go() -> None:
    budget = ByteBudget(10_000, "unsent_budget")
    unsent = UnsentBytes(AnswerRoom(budget, 1.0, lambda: 0.0))
    unsent.answer_bytes = 1000
    unsent.paused(300, 1.0, Dropped())
    assert unsent.let_go() == 1300
    unsent.sent()
    assert (budget.total, budget.reserved) == (1000, 1000)
    unsent.written()
    assert budget.total == 0
