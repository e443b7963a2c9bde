"""The pure decisions behind the guards against slow clients: where a request's headers end,
when a connection may give way at the bound, which holders a byte budget drops, and the
answers written straight to the socket."""

from __future__ import annotations

import json

from gateway.config import Settings
from gateway.connections import ConnectionGuard, Patience
from gateway.errors import Overloaded
from gateway.held_bytes import ByteBudget, Held, choose, weight
from gateway.refusals import Refusal, raw_answer
from gateway.request_head import end_of_head

PATIENCE = Patience(slow_seconds=2.0, body_bytes_per_second=8192, body_window_seconds=5.0)


def test_the_end_of_a_request_head_is_found_even_split_between_reads() -> None:
    head = b"GET / HTTP/1.1\r\nHost: gw\r\n\r\nbody"
    assert end_of_head(b"", head) == len(head) - 4
    assert end_of_head(b"", b"GET / HTTP/1.1\r\nHost: gw\r\n") == -1
    for split in range(1, 4):  # the blank line cut after 1, 2 or 3 of its bytes
        blank = b"\r\n\r\n"
        assert end_of_head((b"gw" + blank[:split])[-3:], blank[split:] + b"next") == 4 - split
    assert end_of_head(b"w\r\n", b"X: 1\r\n\r\n") == 8  # a lone CRLF before is not the end
    assert end_of_head(b"", b"\r\n\r\nGET") == 4  # blank lines before a request: the caller sees


def test_a_connection_may_give_way_only_once_it_stalls() -> None:
    def stall(**state: object) -> str | None:
        values: dict[str, object] = {"idle": False, "lingering": False, "headers_since": None,
                                     "unread_since": None, "body_rate": None, **state}  # fmt: skip
        return PATIENCE.stall(100.0, **values)  # type: ignore[arg-type]

    assert stall() is None  # busy: its handler runs
    assert stall(idle=True) == "idle"
    assert stall(lingering=True) == "lingering"
    assert stall(headers_since=99.0) is None  # headers for a second: patience
    assert stall(headers_since=97.5) == "slow_headers"
    assert stall(unread_since=99.0) is None
    assert stall(unread_since=98.0) == "slow_reader"
    assert stall(body_rate=9000.0) is None
    assert stall(body_rate=100.0) == "slow_body"
    assert PATIENCE.body_rate(100.0, 97.0, 10) is None  # three seconds: too soon to judge
    assert PATIENCE.body_rate(100.0, 95.0, 50_000) == 10_000
    never = Patience(2.0, 0, 5.0)  # a floor of 0: no body is too slow
    assert never.stall(100.0, idle=False, lingering=False, headers_since=None,
                       unread_since=None, body_rate=0.0) is None  # fmt: skip


def test_patience_comes_from_the_settings() -> None:
    settings = Settings(nomic_api_key="nk-x", slow_client_seconds=1.5,
                        min_body_bytes_per_second=100, body_rate_window_seconds=3)  # fmt: skip
    assert Patience.of(settings) == Patience(1.5, 100, 3)


class Stalled:
    def __init__(self, reason: str | None) -> None:
        self.reason = reason
        self.closed = False

    def shed_reason(self, now: float) -> str | None:
        return self.reason

    def shed(self) -> None:
        self.closed = True


def test_at_the_bound_the_first_stalled_connection_gives_way() -> None:
    guard = ConnectionGuard(3)
    busy, dripping, idle = Stalled(None), Stalled("slow_headers"), Stalled("idle")
    assert all(guard.admit(c, 0.0) for c in (busy, dripping, idle))
    assert guard.admit(Stalled(None), 0.0)
    assert (busy.closed, dripping.closed, idle.closed) == (False, True, False)
    assert guard.open == 3


def owners() -> list[Dropped]:
    return [Dropped() for _ in range(4)]


class Dropped:
    def __init__(self) -> None:
        self.reasons: list[str] = []

    def drop(self, reason: str) -> None:
        self.reasons.append(reason)


def test_the_heaviest_holders_are_chosen_the_most_bytes_the_longest() -> None:
    old_small, new_big, old_big = Held(), Held(), Held()
    old_small.bytes, old_small.since = 1000, 0.0
    new_big.bytes, new_big.since = 30_000, 10.0
    old_big.bytes, old_big.since = 30_000, 0.0
    assert weight(old_big, 10.0) == 30_000 * 11
    assert choose([old_small, new_big, old_big], 1, 10.0) == [old_big]
    assert choose([old_small, new_big, old_big], 30_001, 10.0) == [old_big, new_big]
    assert choose([old_small], 10**9, 10.0) == [old_small]  # all there is


def test_a_budget_over_its_bound_drops_down_to_three_quarters() -> None:
    budget = ByteBudget(100, "header_budget")
    holders = [Held() for _ in range(4)]
    connections = owners()
    for at, (held, owner) in enumerate(zip(holders, connections, strict=True)):
        budget.add(held, 25, float(at), owner)
    assert (budget.total, budget.holders) == (100, 4)
    newcomer = Held()
    assert budget.make_room(10, 5.0, newcomer)  # 110 over 75: the two oldest go
    assert [o.reasons for o in connections] == [["header_budget"], ["header_budget"], [], []]
    assert (budget.total, budget.holders, holders[0].bytes) == (50, 2, 0)
    budget.release(holders[0])  # idempotent
    assert budget.total == 50

    greedy = Held()
    budget.add(greedy, 40, 0.0, Dropped())  # 90: the oldest and the most
    assert not budget.make_room(20, 5.0, greedy)  # the asker itself is dropped
    assert greedy.bytes == 0


def test_answers_written_straight_to_the_socket_are_whole_and_nomic_shaped() -> None:
    refusal = Refusal(431, ("header",), "the request line and headers are over 32768 bytes")
    head, _, body = raw_answer(refusal).partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 431 Request Header Fields Too Large"
    assert "Connection: close" in lines
    assert f"Content-Length: {len(body)}" in lines
    assert json.loads(body)["detail"] == refusal.detail()
    busy = Overloaded("busy", loc=("header",), retry_after=1)
    head, _, body = raw_answer(busy).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 Service Unavailable")
    assert b"Retry-After: 1" in head
    assert json.loads(body)["detail"][0]["type"] == "gateway_overloaded"
