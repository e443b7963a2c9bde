"""Room for an answer before it is built: what it will hold is reserved in the process's budget
of unsent answer bytes (``GATEWAY_UNSENT_BYTES_IN_FLIGHT``) first.

The budget counts what waits in send buffers and the answers it came from; answers being built
were in no budget, and a hundred requests for a cached 7.7 MB answer arriving together were
all built in one stretch of the event loop (2.7 s, every other client waiting) holding them all
(+766 MiB) before the budget saw the first. Now a request reserves, before its answer is built,
what the answer and its copy in the send buffer will hold (:func:`held_for`):

- it fits: built at once;
- it does not: the connections holding the most unsent bytes for the longest are dropped (the
  budget's rule, so an attacker holding the budget cannot keep others out of it); if answers
  being built, or let go of by their handlers, still fill it, the request waits for them
  (``GATEWAY_ANSWER_WAIT_SECONDS``: a real suspension, the loop serves others meanwhile), then
  gets ``503`` with ``Retry-After``. Whoever fits goes first: a small answer never waits
  behind large ones.

A hit's answer is bounded before it is built, by its entries' JSON (:func:`hit_bound`, which
bounds Nomic's shape and OpenAI's alike); a request with misses knows its answer's size once
its fetch is done and its answer built (paid for by then): it is counted, never refused. A
reservation ends when the connection's own count takes the answer over (its bytes wait
unsent), when the answer is all sent, or when the handler fails; a connection dropped while its
handler still holds its answer keeps that answer counted until the handler lets go of it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Protocol, cast

from aiohttp import web

from gateway import metrics
from gateway.assembly import Lookup
from gateway.errors import Overloaded
from gateway.held_bytes import ByteBudget

PER_INPUT = 64  # an input's bytes in an answer beyond its vector's JSON (OpenAI's shape)
PER_ANSWER = 1024  # the answer's own: its usage, its model's name
RETRY_AFTER_SECONDS = 1


def held_for(body_bytes: int) -> int:
    """What an answer of ``body_bytes`` holds while it is written: itself, its copy joined to
    its headers (aiohttp joins them on Pythons before 3.12.9), the copy in the send buffer of
    what the socket does not take at once, and what the heap keeps of those copies once freed
    until it is trimmed. Reserving two sizes, 100 unread 7.7 MB answers took the process to
    1.6 to 1.7 times the budget; three, 1.4 to 1.6; five, 1.1 to 1.2, the rest being the
    hundred requests' own parsing (six did no better). Pure."""
    return 5 * body_bytes


def hit_bound(lookup: Lookup) -> int:
    """What the answer to ``lookup``, all of it found, will hold at most (:func:`held_for`), in
    any shape: its vectors' JSON, base64 being shorter. Pure."""
    found = lookup.found
    vectors = sum(len(found[key].embedding_json) for key in lookup.cache_keys)
    return held_for(vectors + PER_INPUT * len(lookup.cache_keys) + PER_ANSWER)


class Reservation:
    """``count`` bytes of a room's budget, until :meth:`release` (idempotent)."""

    __slots__ = ("_room", "count")

    def __init__(self, room: AnswerRoom, count: int) -> None:
        self._room = room
        self.count = count

    def release(self) -> None:
        if self.count:
            count, self.count = self.count, 0
            self._room.budget.unreserve(count)


class AnswerRoom:
    """Reservations for answers in ``budget``; a request that finds no room waits up to
    ``wait_seconds`` for it. ``clock`` is the one the budget's holders are timed by."""

    def __init__(self, budget: ByteBudget, wait_seconds: float, clock: Callable[[], float]) -> None:
        self.budget = budget
        self.wait_seconds = wait_seconds
        self._clock = clock
        self._waiting: deque[tuple[int, asyncio.Future[Reservation]]] = deque()
        budget.on_freed = self._grant

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def fits(self, count: int) -> bool:
        """Whether ``count`` more bytes fit now (any answer fits a budget holding nothing)."""
        budget = self.budget
        return budget.total + count <= budget.max_bytes or budget.total <= 0

    def take(self, count: int) -> Reservation:
        """Reserve ``count`` bytes now, room or not: an answer built already."""
        self.budget.reserve(count)
        return Reservation(self, count)

    async def reserve(self, count: int) -> Reservation:
        """Reserve ``count`` bytes, making room by dropping the heaviest holders and then
        waiting for it; raises :class:`Overloaded` if none comes in time."""
        if self.fits(count):
            return self.take(count)
        self.budget.make_room(count, self._clock())
        if self.fits(count):
            return self.take(count)
        granted = asyncio.get_running_loop().create_future()
        self._waiting.append((count, granted))
        try:
            async with asyncio.timeout(self.wait_seconds):
                reservation: Reservation = await granted
        except BaseException as exc:  # the wait ran out, or the handler was cancelled
            if granted.done() and not granted.cancelled():
                granted.result().release()  # granted as it was given up on
            granted.cancel()
            self._waiting = deque(w for w in self._waiting if w[1] is not granted)
            if not isinstance(exc, TimeoutError):
                raise
        else:
            metrics.child(metrics.ANSWER_ROOM_WAITS, "served").inc()
            return reservation
        metrics.child(metrics.ANSWER_ROOM_WAITS, "refused").inc()
        raise Overloaded(
            "the gateway is sending too many large answers at once; retry shortly",
            loc=(),
            retry_after=RETRY_AFTER_SECONDS,
        )

    def _grant(self) -> None:
        """Bytes were freed: reserve them for the requests waiting that fit now, first come
        first."""
        for count, granted in list(self._waiting):
            if granted.done():
                continue
            if self.fits(count):
                granted.set_result(self.take(count))
        if self._waiting:
            self._waiting = deque(w for w in self._waiting if not w[1].done())


class Keeper(Protocol):
    """The connection a request came on, when it keeps a reservation until its answer is
    handed over (:class:`gateway.guarded_connection.GuardedConnection`)."""

    @property
    def answer_room(self) -> AnswerRoom: ...

    def keep(self, reservation: Reservation) -> None:
        """Release ``reservation`` once the answer's bytes are counted as unsent or sent."""
        ...


@contextlib.asynccontextmanager
async def reserved(request: web.Request, count: int, *, built: bool = False) -> AsyncIterator[None]:
    """Room for an answer of ``count`` bytes held (:func:`held_for`) while it is built and
    until it is handed over; ``built``: made already (and paid for), counted without waiting
    or refusal. Served without the gateway's connections (a test's server): no budget."""
    room: AnswerRoom | None = getattr(request.protocol, "answer_room", None)
    if room is None:  # (not isinstance(..., Keeper): a runtime Protocol check took 40 µs a hit)
        yield
        return
    keeper = cast(Keeper, request.protocol)
    reservation = room.take(count) if built else await room.reserve(count)
    try:
        yield
    except BaseException:
        reservation.release()
        raise
    keeper.keep(reservation)
