"""One connection's answer bytes not sent yet, in the process's budget of unsent answer bytes
(``GATEWAY_UNSENT_BYTES_IN_FLIGHT``), and the room reserved for its answer until they are
counted there (:mod:`gateway.answer_room`).
:class:`gateway.guarded_connection.GuardedConnection` tells it what the transport holds and
when; no I/O, no clock of its own.
"""

from __future__ import annotations

from aiohttp import web

from gateway.answer_room import AnswerRoom, Reservation
from gateway.held_bytes import Held, Owner


class UnsentBytes:
    """What a connection's answer holds while its client has not read it: the bytes waiting
    in the send buffer and the answer they came from, which its handler holds until they are
    sent (asyncio's buffer is a copy); and the answer's reservation until then."""

    __slots__ = ("_leaving", "_reservation", "_room", "answer_bytes", "held")

    def __init__(self, room: AnswerRoom) -> None:
        self._room = room
        self.held = Held()  # answer bytes waiting in the send buffer, and their answer's
        self.answer_bytes = 0  # the answer being written, which its handler holds till sent
        self._reservation: Reservation | None = None  # its room, until it is counted here
        self._leaving: Reservation | None = None  # its bytes, dropped, until its handler ends

    def keep(self, reservation: Reservation) -> None:
        """Hold ``reservation`` (the room of the answer about to be written) until the answer's
        bytes are counted as unsent (:meth:`paused`), or all sent."""
        if self._reservation is not None:
            self._reservation.release()
        self._reservation = reservation

    def writing(self, resp: web.StreamResponse) -> None:
        """``resp`` is being written; its body is held until it is sent."""
        body = resp.body if isinstance(resp, web.Response) else None
        self.answer_bytes = len(body) if isinstance(body, bytes) else 0

    def written(self) -> None:
        """The handler let go of its answer: what was kept for it is free."""
        self.answer_bytes = 0
        for reservation in (self._reservation, self._leaving):
            if reservation is not None:
                reservation.release()
        self._reservation = self._leaving = None

    def paused(self, buffered: int, now: float, owner: Owner) -> None:
        """``buffered`` bytes wait unsent at ``now``: counted in the unsent budget (with the
        answer they came from), the answer's reservation no more."""
        self._room.budget.set(self.held, buffered + self.answer_bytes, now, owner)
        self.held.since = now
        if self._reservation is not None:  # counted here from now on
            self._reservation.release()
            self._reservation = None

    def unread_for(self, buffered: int, now: float, owner: Owner) -> float:
        """``buffered`` bytes still wait unsent at ``now``: counted again; how long the
        client has read none of them."""
        held = self.held
        count = buffered + self.answer_bytes
        if count < held.bytes:
            held.since = now  # the client read some
        self._room.budget.set(held, count, now, owner)
        return now - held.since

    def keep_budget(self, now: float) -> None:
        """Keep the unsent budget: over it, the heaviest holders go."""
        budget = self._room.budget
        if budget.total > budget.max_bytes:
            budget.make_room(0, now)

    def sent(self) -> None:
        """Nothing waits unsent any more."""
        self._room.budget.release(self.held)

    def let_go(self) -> int:
        """The connection closes: its bytes leave the budget, but for an answer its handler
        still holds, counted (reserved) until the handler lets go of it (:meth:`written`), a
        few loop turns after the connection closes, so the room it leaves is not taken before
        it is free. Returns the bytes it held."""
        freed = self.held.bytes
        if self.answer_bytes and self._reservation is None and self._leaving is None:
            self._leaving = self._room.take(self.answer_bytes)
        return freed
