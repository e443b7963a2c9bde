"""One client connection's guards, as far as the connection as a whole and its answers go:
what every connection of a process shares (:class:`Bounds`), and :class:`GuardedConnection`,
aiohttp's protocol admitted at the connection bound, timed for its headers, closed at once when
a guard says so, and its answers' unsent bytes counted. What it reads is guarded by its
subclass, :class:`gateway.server.GatewayRequestHandler`, which calls into it (never the other
way round).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
import struct
from typing import Any, cast

from aiohttp import web

from gateway import metrics
from gateway.answer_room import AnswerRoom, Reservation
from gateway.config import Settings
from gateway.connections import ConnectionGuard, Patience
from gateway.errors import Overloaded
from gateway.held_bytes import ByteBudget, Trim
from gateway.refusals import Refusal, raw_answer
from gateway.request_body import RequestBody
from gateway.request_head import RequestHead
from gateway.unsent import UnsentBytes

log = logging.getLogger(__name__)

SEND_TICK_SECONDS = 1.0  # how often a connection with unsent answer bytes looks at them
RESET_ON_CLOSE = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close drops what is unsent


@dataclasses.dataclass(frozen=True)
class Bounds:
    """What every connection of a process shares: the guard on their number, the budgets of
    bytes they hold for their clients, their timeouts, and the answers of refusals."""

    guard: ConnectionGuard
    patience: Patience
    headers: ByteBudget  # header bytes of requests whose headers are not all in
    unsent: ByteBudget  # answer bytes waiting in send buffers, and reserved for answers
    room: AnswerRoom  # reservations in it, made before an answer is built
    trim: Trim
    header_timeout: float
    max_header_bytes: int
    write_timeout: float
    too_large: bytes  # the answer to a request line and headers over max_header_bytes
    too_many: bytes  # the answer to one that finds the header budget full

    @classmethod
    def of(cls, settings: Settings, bound: int, loop: asyncio.AbstractEventLoop) -> Bounds:
        limit = settings.max_header_bytes
        unsent = ByteBudget(settings.unsent_bytes_in_flight, "unsent_budget")
        return cls(
            guard=ConnectionGuard(bound),
            patience=Patience.of(settings),
            headers=ByteBudget(settings.header_bytes_in_flight, "header_budget"),
            unsent=unsent,
            room=AnswerRoom(unsent, settings.answer_wait_seconds, loop.time),
            trim=Trim(loop),
            header_timeout=settings.header_timeout_seconds,
            max_header_bytes=limit,
            write_timeout=settings.write_timeout_seconds,
            too_large=raw_answer(
                Refusal(431, ("header",), f"the request line and headers are over {limit} bytes")
            ),
            too_many=raw_answer(
                Overloaded(
                    "the gateway is receiving too many request headers at once; retry shortly",
                    loc=("header",),
                    retry_after=1,
                )
            ),
        )

    @property
    def send_tick(self) -> float:
        return min(SEND_TICK_SECONDS, self.write_timeout / 4, self.patience.slow_seconds / 2)


class GuardedConnection(web.RequestHandler):
    """aiohttp's HTTP/1 protocol with the guards of :class:`Bounds` on the connection and its
    answers. It keeps the transport and the timers, and carries out what its parts decide: a
    :class:`RequestHead`, a :class:`RequestBody` and an :class:`UnsentBytes` per connection,
    none of which calls back into it. It reads the protocol's own attributes (``_waiter``:
    waiting for a request; ``_force_close``; ``writing_paused``), which
    ``tests/test_slow_clients_functional.py`` exercises against the installed aiohttp.

    Writes: the transport pauses the protocol whenever any answer byte waits unsent (its high
    water mark is 0), so every connection holding unsent bytes is known, and looks at them
    every second: the write timeout, its place in the unsent budget, and how long its client
    has read none of them (see :meth:`shed_reason`).
    """

    __slots__ = (
        "_answered",
        "_body",
        "_bounds",
        "_head",
        "_header_timer",
        "_pending",
        "_refused",
        "_send_timer",
        "_unsent",
        "_wire",
    )

    def __init__(self, manager: web.Server, *, bounds: Bounds, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._bounds = bounds
        self._wire: asyncio.Transport | None = None  # aiohttp forgets it at force_close
        self._header_timer: asyncio.TimerHandle | None = None
        self._head = RequestHead(bounds.headers, bounds.max_header_bytes)
        self._pending = b""  # bytes past a body, kept while aiohttp does not read
        self._refused = False  # answered a refusal: no more bytes are taken
        self._body = RequestBody()
        self._answered = False  # the request being read was answered (aiohttp lingers)
        self._unsent = UnsentBytes(bounds.room)
        self._send_timer: asyncio.TimerHandle | None = None

    # --- the connection ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        wire = self._wire = cast(asyncio.Transport, transport)
        # Paused (and told) whenever an answer byte waits unsent, resumed when none does.
        wire.set_write_buffer_limits(high=0)
        now = self._loop.time()
        if not self._bounds.guard.admit(self, now):
            self.force_close()
            return
        self._start_header_timer(now)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_header_timer()
        self._stop_send_timer()
        self._release_held()
        self._bounds.guard.forget(self)
        self._wire = None
        self._body.reader = None
        self._pending = b""
        super().connection_lost(exc)

    def shed_reason(self, now: float) -> str | None:
        """Why this connection may go for a new one at the bound, or None while in use."""
        if self._wire is None or self._force_close:
            return "idle"  # closing already: only its unsent bytes keep it
        body = self._body
        reading = body.reader is not None and not self._reading_paused
        patience = self._bounds.patience
        return patience.stall(
            now,
            idle=self.is_idle(),
            lingering=self._answered and body.reader is not None,
            headers_since=self._head.since,
            unread_since=self._unsent.held.since if self.writing_paused else None,
            body_rate=body.judge(now, patience) if reading else None,
        )

    def is_idle(self) -> bool:
        """Waiting for a request of which no byte has come."""
        return (
            self._wire is not None
            and not self._head.coming
            and self._body.reader is None
            and self._waiting_for_request()
        )

    def shed(self) -> None:
        """Close at once for a new connection (the guard has forgotten it)."""
        self._close_now()

    def drop(self, reason: str) -> None:
        """Close at once, dropping what it holds: a budget's choice, or a timeout."""
        if self._wire is None:
            return
        metrics.child(metrics.CONNECTIONS_SHED, reason).inc()
        log.debug("closed a connection (%s)", reason)
        self._close_now()

    def _close_now(self) -> None:
        """Close, dropping any answer bytes not sent yet: ``close`` would wait for the client
        to read them first, for ever if it reads none."""
        wire = self._wire
        if wire is None:
            return
        if self.writing_paused:  # the kernel's send buffer is full too: reset, to drop it
            sock = wire.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET_ON_CLOSE)
        self._stop_header_timer()
        self._stop_send_timer()
        self._release_held()
        self._bounds.guard.forget(self)
        wire.abort()
        self._wire = None
        self.force_close()

    def _release_held(self) -> None:
        """Its bytes leave the budgets, but for an answer its handler still holds
        (:meth:`UnsentBytes.let_go`)."""
        freed = self._head.held.bytes + self._unsent.let_go()
        self._head.release()
        self._unsent.sent()
        self._bounds.trim.freed(freed)

    def _refuse(self, answer: bytes, reason: str) -> None:
        """Answer ``answer`` and close, taking no more bytes; at once and without it while
        another answer is on its way on this connection."""
        wire = self._wire
        if wire is None:
            return
        metrics.child(metrics.CONNECTIONS_SHED, reason).inc()
        self._refused = True
        if not self._waiting_for_request() or wire.get_write_buffer_size():
            self._close_now()
            return
        self._release_held()
        self._bounds.guard.forget(self)
        wire.write(answer)
        if wire.get_write_buffer_size():  # it does not read even this
            self._close_now()
        else:
            self.force_close()

    # --- answering -----------------------------------------------------------------------

    @property
    def answer_room(self) -> AnswerRoom:
        """Where a request reserves room for its answer before building it."""
        return self._bounds.room

    def keep(self, reservation: Reservation) -> None:
        """Hold ``reservation`` (the room of the answer about to be written) until the answer's
        bytes are counted as unsent (:meth:`pause_writing`), or all sent."""
        self._unsent.keep(reservation)

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        if request.message.chunked:
            resp.force_close()  # no request after a chunked body: see _end_chunked
        self._unsent.writing(resp)
        try:
            finished = await super().finish_response(request, resp, start_time)
        finally:
            self._unsent.written()
        self._answered = True
        self._bounds.guard.active(self)  # idle from now, until its next request
        return finished

    def pause_writing(self) -> None:
        """Answer bytes wait unsent: counted in the unsent budget (with the answer they came
        from, which its handler holds until they are sent: asyncio's buffer is a copy),
        looked at every tick."""
        super().pause_writing()
        wire = self._wire
        if wire is None:
            return
        now = self._loop.time()
        self._unsent.paused(wire.get_write_buffer_size(), now, self)
        self._check_unsent(now)

    def resume_writing(self) -> None:
        """All sent."""
        super().resume_writing()
        self._stop_send_timer()
        self._unsent.sent()

    def _tick_unsent(self) -> None:
        self._send_timer = None
        wire = self._wire
        if wire is None or not self.writing_paused:
            return
        now = self._loop.time()
        unread = self._unsent.unread_for(wire.get_write_buffer_size(), now, self)
        if unread >= self._bounds.write_timeout:
            self.drop("write_timeout")
            return
        self._check_unsent(now)

    def _check_unsent(self, now: float) -> None:
        """Keep the unsent budget (the heaviest holders go) and look again in a tick."""
        self._unsent.keep_budget(now)
        if self._wire is not None and self._send_timer is None:
            self._send_timer = self._loop.call_at(now + self._bounds.send_tick, self._tick_unsent)

    def _stop_send_timer(self) -> None:
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    def _waiting_for_request(self) -> bool:
        waiter = self._waiter
        return waiter is not None and not waiter.done()

    def _start_header_timer(self, now: float) -> None:
        if self._header_timer is None:
            self._header_timer = self._loop.call_at(
                now + self._bounds.header_timeout, self._headers_late
            )

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self._wire is not None and not self._force_close:
            log.debug("closed a connection that sent no complete request line and headers")
            self.drop("header_timeout")
