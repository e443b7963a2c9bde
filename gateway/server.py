"""Serving: aiohttp's HTTP/1 protocol with its guards, the listening socket, SIGTERM.

``run`` replaces ``web.run_app``: an :class:`GatewayRunner` (aiohttp's ``AppRunner`` whose
server makes :class:`GatewayRequestHandler` protocols) and a ``TCPSite``, served until SIGTERM
or SIGINT, then stopped as ``run_app`` stops: no new connections, in-flight requests finish
(up to the shutdown timeout), the app's cleanup runs.

The guards, all on the protocol (a few attribute checks per read on the request path), bound
what one client can make the process hold by sending slowly, or not at all, or reading
nothing:

- a request aiohttp's parser refuses (a control byte in a header, a header line over 8 KiB,
  a bad Content-Length, line folding, a bad request line) is answered in Nomic's JSON error
  shape with a message in general terms, never the request's bytes, and leaves one generic
  log line (aiohttp's own answer and log line quote the offending line: a team key with it);
- a request's line and headers together are at most ``GATEWAY_MAX_HEADER_BYTES`` (nginx's
  default, 32 KiB; then 431), counted before the parser sees them, and all connections'
  unfinished ones together at most ``GATEWAY_HEADER_BYTES_IN_FLIGHT``: aiohttp alone lets each
  connection hold 128 lines of 8 KiB (1 MiB, about 2 MiB of parser objects) for as long as it
  likes;
- a connection must send its request line and headers within the header timeout (from when
  it opens, or from its first byte after a keep-alive pause, which aiohttp's keep-alive
  timeout bounds): aiohttp itself lets a silent or one-byte-at-a-time client hold a
  descriptor for its keep-alive timeout;
- an answer waits in the send buffer at most the write timeout without the client reading any
  of it, and all answers' unsent bytes together are at most ``GATEWAY_UNSENT_BYTES_IN_FLIGHT``:
  asyncio keeps whatever a client does not read, for as long as its connection stays open,
  and closing such a connection waits for the client to read it first;
- open connections are bounded (:mod:`gateway.connections`): at the bound the longest-idle or
  slowest one is closed (idle, headers not in after a short time, a body slower than a floor,
  an answer not read), or the new one if none may go.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import signal
import socket
import struct
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any, NamedTuple, cast

import orjson
from aiohttp import hdrs, web
from aiohttp.http import RawRequestMessage
from aiohttp.http_exceptions import (
    BadHttpMethod,
    BadStatusLine,
    ContentEncodingError,
    HttpProcessingError,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
    PayloadEncodingError,
)
from aiohttp.streams import StreamReader

from gateway import metrics
from gateway.answer_room import AnswerRoom, Reservation
from gateway.app import create_app
from gateway.config import Settings
from gateway.connections import LISTEN_BACKLOG, ConnectionGuard, Patience
from gateway.errors import GatewayError, HandlerTimeout, InternalError, Overloaded
from gateway.held_bytes import ByteBudget, Held, Trim
from gateway.middlewares import DECODED_ENCODINGS, answer_for, error_response

log = logging.getLogger(__name__)

KEEPALIVE_SECONDS = 75.0  # web.run_app's default, kept
MAX_REQUEST_LINE = 8190  # aiohttp's default
# A header line (name and value) may be 8 KiB. Two bytes more than the request line's limit
# so a LineTooLong tells which of the two it was: it carries the limit it hit.
MAX_HEADER_LINE = 8192
Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


class Refusal(NamedTuple):
    """The answer to a request aiohttp's parser refused."""

    status: int
    loc: tuple[str, ...]
    what: str  # what was wrong, in general terms
    not_http: bool = False  # junk or TLS on the port: scanners, logged at debug only

    def detail(self) -> list[dict[str, object]]:
        msg = f"malformed HTTP request: {self.what}"
        return [{"loc": list(self.loc), "msg": msg, "type": "protocol_error"}]


# Words of aiohttp's or llhttp's fixed reason (the first line of the parser's message; the
# request's bytes, which follow, are never looked at) and what they mean, first match wins.
_REASONS = (
    ("too many headers", Refusal(431, ("header",), "too many header lines")),
    (
        "transfer-encoding",
        Refusal(400, ("header", "transfer-encoding"), "Transfer-Encoding is invalid"),
    ),
    ("content-length", Refusal(400, ("header", "content-length"), "Content-Length is invalid")),
    ("chunk", Refusal(400, ("body",), "the chunked body is invalid")),
    ("'host'", Refusal(400, ("header", "host"), "the Host header is missing or repeated")),
    ("duplicate", Refusal(400, ("header",), "a header that may appear once is repeated")),
)
_HEADER_LINE = Refusal(400, ("header",), "a header line is invalid")
_UNDECODED = f"the body's Content-Encoding is not one of {', '.join(DECODED_ENCODINGS)}"
_REQUEST_LINE = Refusal(400, ("request",), "the request line is invalid")


def refusal(exc: HttpProcessingError) -> Refusal:
    """What to answer for ``exc``, from its class and its fixed reason text only: its message
    quotes the offending bytes (a header line with a key in it), which must never be echoed."""
    if isinstance(exc, ContentEncodingError):  # at parse time: one aiohttp cannot decode
        return Refusal(415, ("header", "content-encoding"), _UNDECODED)
    if isinstance(exc, LineTooLong):
        if exc.args[1:2] == (MAX_HEADER_LINE,):
            return Refusal(431, ("header",), "a header line is too long")
        return Refusal(414, ("request",), "the request line is too long")
    if isinstance(exc, BadHttpMethod):
        return _REQUEST_LINE._replace(not_http=True)
    if isinstance(exc, (BadStatusLine, InvalidURLError)):
        return _REQUEST_LINE
    if isinstance(exc, InvalidHeader):
        return _HEADER_LINE
    reason = str(exc.message).partition("\n")[0].lower()
    for words, answer in _REASONS:
        if words in reason:
            return answer
    if isinstance(exc, PayloadEncodingError):
        return Refusal(400, ("body",), "the body does not match its framing")
    return _HEADER_LINE if "header" in reason or "whitespace" in reason else _REQUEST_LINE


BLANK_LINE = b"\r\n\r\n"  # where a request line and headers end (llhttp takes CRLF only)
SEND_TICK_SECONDS = 1.0  # how often a connection with unsent answer bytes looks at them
RESET_ON_CLOSE = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close drops what is unsent


def end_of_head(tail: bytes, data: bytes) -> int:
    """The offset in ``data`` just past the blank line that ends a request's line and headers,
    or -1 if it is not in ``data``; ``tail`` is the last (up to 3) bytes of them before
    ``data``, so a blank line split between two reads is found. Pure."""
    if tail:
        found = (tail + data[:3]).find(BLANK_LINE)
        if found >= 0:
            return found + len(BLANK_LINE) - len(tail)
    found = data.find(BLANK_LINE)
    return -1 if found < 0 else found + len(BLANK_LINE)


def raw_answer(error: GatewayError | Refusal) -> bytes:
    """A whole HTTP answer, in Nomic's JSON error shape, that closes the connection: written
    straight to the transport for bytes the parser never gets to see."""
    if isinstance(error, Refusal):
        status, detail, retry_after = error.status, error.detail(), None
    else:
        status, detail, retry_after = error.status, error.detail(), error.retry_after
    body = orjson.dumps({"detail": detail})
    head = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        "Content-Type: application/json; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if retry_after is not None:
        head.append(f"Retry-After: {max(1, round(retry_after))}")
    return "\r\n".join([*head, "", ""]).encode() + body


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


class GatewayRequestHandler(web.RequestHandler):
    """aiohttp's HTTP/1 protocol, with Nomic-shaped protocol errors and the guards of
    :class:`Bounds`.

    Why a subclass: aiohttp builds a protocol error's answer (and its log line, bytes and
    all) in ``RequestHandler.handle_error``, a public method meant to be overridden; the
    other hooks do not reach it (``handler_args`` only sets the protocol's parameters, a
    middleware never sees a request the parser refused), nor the bytes before the parser.
    ``web.Server`` makes the protocols, so :class:`GatewayServer` makes these instead, and
    nothing of aiohttp is monkeypatched. The guards read the protocol's own attributes
    (``_waiter``: waiting for a request; ``_request_count`` and ``_messages``: requests parsed;
    ``_force_close``, ``_close``; ``_reading_paused``: the body's reader is full), which
    ``tests/test_server_functional.py`` and ``tests/test_slow_clients_functional.py`` exercise
    against the installed aiohttp.

    How bytes are counted (``data_received``): a read is cut where a request's headers end
    (the first blank line; llhttp takes nothing else) and where a ``Content-Length`` body
    ends, and each piece is handed to the parser on its own, so every byte is known to be a
    header byte or a body byte. Header bytes are counted against the request's limit before
    the parser sees them, and held in the process's budget while the headers are not all in.
    Where a chunked body ends only the parser knows: the connection takes no request after
    one (its answer says ``Connection: close``), and what came after it in its last read is
    held in the header budget until the connection closes. While aiohttp has stopped reading
    for a body nobody reads yet, what a read held past that body waits here (counted) until
    it reads again, so the parser never holds bytes the count does not know of.

    Writes: the transport pauses the protocol whenever any answer byte waits unsent (its high
    water mark is 0), so every connection holding unsent bytes is known, and looks at them
    every second: the write timeout, its place in the unsent budget, and how long its client
    has read none of them (see :meth:`shed_reason`).
    """

    __slots__ = (
        "_answer_bytes",
        "_answered",
        "_body",
        "_body_left",
        "_body_rate",
        "_bounds",
        "_head",
        "_header_timer",
        "_in_head",
        "_leaving",
        "_pending",
        "_refused",
        "_reservation",
        "_send_timer",
        "_tail",
        "_unsent",
        "_window_bytes",
        "_window_start",
        "_wire",
    )

    def __init__(self, manager: web.Server, *, bounds: Bounds, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._bounds = bounds
        self._wire: asyncio.Transport | None = None  # aiohttp forgets it at force_close
        self._header_timer: asyncio.TimerHandle | None = None
        self._in_head = False  # a request's line and headers are coming, not all in yet
        self._head = Held()  # their bytes so far, in the header budget while not all in
        self._tail = b""  # the last 3 of them: a blank line may be split between reads
        self._pending = b""  # bytes past a body, kept while aiohttp does not read
        self._refused = False  # answered a refusal: no more bytes are taken
        self._body: StreamReader | None = None  # the body still coming
        self._body_left = -1  # its bytes still to come on the wire; -1: chunked (unknown)
        self._window_start = 0.0  # its pace: bytes since then ...
        self._window_bytes = 0
        self._body_rate: float | None = None  # ... and over the last window judged
        self._answered = False  # the request being read was answered (aiohttp lingers)
        self._unsent = Held()  # answer bytes waiting in the send buffer, and their answer's
        self._answer_bytes = 0  # the answer being written, which its handler holds till sent
        self._reservation: Reservation | None = None  # its room, until it is counted here
        self._leaving: Reservation | None = None  # its bytes, dropped, until its handler ends
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
        self._body = None
        self._pending = b""
        super().connection_lost(exc)

    def shed_reason(self, now: float) -> str | None:
        """Why this connection may go for a new one at the bound, or None while in use."""
        if self._wire is None or self._force_close:
            return "idle"  # closing already: only its unsent bytes keep it
        reading = self._body is not None and not self._reading_paused
        return self._bounds.patience.stall(
            now,
            idle=self.is_idle(),
            lingering=self._answered and self._body is not None,
            headers_since=self._head.since if self._in_head else None,
            unread_since=self._unsent.since if self.writing_paused else None,
            body_rate=self._judge_body(now) if reading else None,
        )

    def is_idle(self) -> bool:
        """Waiting for a request of which no byte has come."""
        return (
            self._wire is not None
            and not self._in_head
            and self._body is None
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
        """Its bytes leave the budgets, but for an answer its handler still holds: counted
        (reserved) until the handler lets go of it, a few loop turns after the connection
        closes, so the room it leaves is not taken before it is free."""
        bounds = self._bounds
        freed = self._head.bytes + self._unsent.bytes
        if self._answer_bytes and self._reservation is None and self._leaving is None:
            self._leaving = bounds.room.take(self._answer_bytes)
        bounds.headers.release(self._head)
        bounds.unsent.release(self._unsent)
        bounds.trim.freed(freed)

    # --- reading -------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        """The client's bytes, counted before aiohttp's parser sees them (see the class
        docstring)."""
        if self._refused or self._force_close or self._close:
            return
        if not data:  # aiohttp resuming its parser on what it holds
            self._resumed()
            return
        while data and not (self._refused or self._force_close or self._close):
            if self._body is not None:
                data = self._body_received(data)
            elif self._reading_paused:
                self._keep_pending(data)
                return
            else:
                data = self._head_received(data)

    def resume_reading(self, resume_parser: bool = True) -> None:
        """aiohttp reads again (it calls this at every read of a body's reader, paused or
        not): the body's pace is measured afresh after a pause, which was the gateway's."""
        paused = self._reading_paused
        super().resume_reading(resume_parser)
        if paused:
            self._restart_window()
        if self._pending and not self._reading_paused:
            pending, self._pending = self._pending, b""
            self._bounds.headers.release(self._head)  # counted again as it is read now
            self.data_received(pending)

    def _feed(self, data: bytes) -> bool:
        """Hand ``data`` to aiohttp's parser; True if a request came of it (its line and
        headers, or a refusal)."""
        parsed = self._request_count
        super().data_received(data)
        return self._request_count != parsed

    def _resumed(self) -> None:
        if self._body is not None:
            self._body_received(b"")
        elif self._feed(b""):
            self._parsed()

    def _head_received(self, data: bytes) -> bytes:
        """Bytes of a request's line and headers; returns what follows the headers in
        ``data`` (their body, or the next request)."""
        bounds = self._bounds
        end = end_of_head(self._tail, data)
        if not self._in_head:
            if end < 0:
                self._begin_request()
            else:  # all in one read, as most are: no timer, no clock, nothing held
                bounds.guard.active(self)
                self._answered = False
        size = len(data) if end < 0 else end
        if self._head.bytes + size > bounds.max_header_bytes:
            log.warning("refused a request whose line and headers are over %d bytes",
                        bounds.max_header_bytes)  # fmt: skip
            self._refuse(bounds.too_large, "headers_too_large")
            return b""
        if end < 0:
            self._partial_head(data)
            return b""
        piece, rest = (data, b"") if end == len(data) else (data[:end], data[end:])
        if self._feed(piece):
            self._parsed()
        else:  # blank lines before a request line, which the parser skips
            if not self._in_head:
                self._begin_request()
            self._hold_head(piece)
        return rest

    def _partial_head(self, data: bytes) -> None:
        """Bytes of a request's line and headers that do not end them: held, within the
        process's budget of such bytes."""
        budget = self._bounds.headers
        if budget.total + len(data) > budget.max_bytes and not budget.make_room(
            len(data), self._loop.time(), self._head
        ):
            if self._wire is not None:  # not dropped itself: no room could be made
                log.warning("refused a request: %d bytes of unfinished headers are held",
                            budget.total)  # fmt: skip
                self._refuse(self._bounds.too_many, "header_budget")
            return
        if self._feed(data):  # refused by the parser already (a bad request line, say)
            self._parsed()
        else:
            self._hold_head(data)

    def _hold_head(self, piece: bytes) -> None:
        self._bounds.headers.add(self._head, len(piece), self._head.since, self)
        self._tail = piece[-3:] if len(piece) >= 3 else (self._tail + piece)[-3:]

    def _keep_pending(self, data: bytes) -> None:
        """aiohttp stopped reading (a body's reader is full): keep what follows the body
        until it reads again, counted as header bytes held."""
        self._pending += data
        self._bounds.headers.add(self._head, len(data), self._loop.time(), self)

    def _begin_request(self) -> None:
        """The first byte of a request: the header timer runs (from the connection's opening
        for its first request), the connection moves to the back of the idle order."""
        now = self._loop.time()
        self._in_head = True
        self._head.since = now
        self._answered = False
        self._bounds.guard.active(self)
        self._start_header_timer(now)

    def _parsed(self) -> None:
        """aiohttp's parser has a request's line and headers (or refused them)."""
        self._in_head = False
        if self._head.bytes:
            self._bounds.headers.release(self._head)
            self._tail = b""
        if self._header_timer is not None:
            self._stop_header_timer()
        message, payload = self._messages[-1]
        if not isinstance(message, RawRequestMessage):  # refused: answered, then closed
            self._refused = True
        elif not payload.is_eof():
            self._start_body(message, payload)

    def _start_body(self, message: RawRequestMessage, payload: StreamReader) -> None:
        self._body = payload
        length = message.headers.get(hdrs.CONTENT_LENGTH)
        self._body_left = -1
        if length is not None and not message.chunked and length.isdigit():
            self._body_left = int(length)
        self._body_rate = None
        self._restart_window()

    def _body_received(self, data: bytes) -> bytes:
        """Bytes of a body; returns what follows its end in ``data`` (the next request)."""
        body = self._body
        assert body is not None
        left = self._body_left
        piece, rest = data, b""
        if 0 <= left < len(data):
            piece, rest = data[:left], data[left:]
        before = body.total_raw_bytes if left < 0 else 0
        if self._feed(piece) and not isinstance(self._messages[-1][0], RawRequestMessage):
            self._body_refused(body)
            return b""
        self._window_bytes += len(piece)
        if left >= 0:
            self._body_left = left - len(piece)
            if self._body_left == 0:
                self._body = None
        elif body.is_eof() or body.exception() is not None:
            self._end_chunked(len(piece) - (body.total_raw_bytes - before))
        return rest

    def _body_refused(self, body: StreamReader) -> None:
        """The parser refused the body (its framing, its encoding) and queued a refusal behind
        its request: whoever reads the body hears so (aiohttp leaves it waiting, the lingering
        read for ten seconds, when the body came in a read of its own), the request's answer
        is the connection's last (not followed by one to the queued refusal), and no more
        bytes are taken."""
        self._body = None
        self._refused = True
        self.close()
        if not body.is_eof():
            body.set_exception(web.RequestPayloadError("the request body is malformed"))

    def _end_chunked(self, past: int) -> None:
        """A chunked body ended; ``past``: at most that many of the last read's bytes came
        after it, already in the parser. The connection takes no more requests (aiohttp
        stops reading; the answer says Connection: close) and holds them until it closes."""
        self._body = None
        self.close()
        if past > 0:
            self._bounds.headers.add(self._head, past, self._loop.time(), self)

    def _restart_window(self) -> None:
        self._window_start = self._loop.time()
        self._window_bytes = 0

    def _judge_body(self, now: float) -> float | None:
        """The body's pace over the last whole window (a new one begins when one is judged);
        None before its first."""
        rate = self._bounds.patience.body_rate(now, self._window_start, self._window_bytes)
        if rate is not None:
            self._body_rate = rate
            self._window_start, self._window_bytes = now, 0
        return self._body_rate

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
        if self._reservation is not None:
            self._reservation.release()
        self._reservation = reservation

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        if request.message.chunked:
            resp.force_close()  # no request after a chunked body: see _end_chunked
        body = resp.body if isinstance(resp, web.Response) else None
        self._answer_bytes = len(body) if isinstance(body, bytes) else 0
        try:
            finished = await super().finish_response(request, resp, start_time)
        finally:
            self._answer_bytes = 0
            self._end_reservations()
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
        held = wire.get_write_buffer_size() + self._answer_bytes
        self._bounds.unsent.set(self._unsent, held, now, self)
        self._unsent.since = now
        if self._reservation is not None:  # counted here from now on
            self._reservation.release()
            self._reservation = None
        self._check_unsent(now)

    def _end_reservations(self) -> None:
        """The handler let go of its answer: what was kept for it is free."""
        for reservation in (self._reservation, self._leaving):
            if reservation is not None:
                reservation.release()
        self._reservation = self._leaving = None

    def resume_writing(self) -> None:
        """All sent."""
        super().resume_writing()
        self._stop_send_timer()
        self._bounds.unsent.release(self._unsent)

    def _tick_unsent(self) -> None:
        self._send_timer = None
        wire = self._wire
        if wire is None or not self.writing_paused:
            return
        now = self._loop.time()
        unsent = self._unsent
        held = wire.get_write_buffer_size() + self._answer_bytes
        if held < unsent.bytes:
            unsent.since = now  # the client read some
        self._bounds.unsent.set(unsent, held, now, self)
        if now - unsent.since >= self._bounds.write_timeout:
            self.drop("write_timeout")
            return
        self._check_unsent(now)

    def _check_unsent(self, now: float) -> None:
        """Keep the unsent budget (the heaviest holders go) and look again in a tick."""
        budget = self._bounds.unsent
        if budget.total > budget.max_bytes:
            budget.make_room(0, now)
        if self._wire is not None and self._send_timer is None:
            self._send_timer = self._loop.call_at(now + self._bounds.send_tick, self._tick_unsent)

    def _stop_send_timer(self) -> None:
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """A Nomic-shaped answer to a request that failed outside the app's middlewares:
        refused by the parser (``exc`` quotes its bytes: neither answered nor logged), or a
        handler error past them. Closes the connection, as aiohttp's does."""
        if request.writer.output_size > 0:
            raise ConnectionError("an answer was sent already; cannot send the error")
        if isinstance(exc, HttpProcessingError):
            answer = refusal(exc)
            level = logging.DEBUG if answer.not_http else logging.WARNING
            log.log(level, "refused a malformed HTTP request: %s", answer.what)
            response = error_response(answer.status, answer.detail())
            if answer.status == 415:
                response.headers["Accept-Encoding"] = "gzip, deflate"
        elif status == 504:
            response = answer_for(HandlerTimeout("the gateway timed out", loc=()))
        else:
            log.error("unexpected error answering a request", exc_info=exc)
            response = answer_for(InternalError())
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """aiohttp's log of an error outside the handler; a body that turned out malformed
        while aiohttp drained what the handler left unread (it was answered already) is not
        one: a debug line, without a traceback."""
        if isinstance(kw.get("exc_info"), web.RequestPayloadError):
            log.debug("closed a connection whose unread request body was malformed")
            return
        super().log_exception(*args, **kw)

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


class GatewayServer(web.Server):
    """``web.Server`` making :class:`GatewayRequestHandler` protocols with ``protocol_kwargs``."""

    def __init__(
        self,
        handler: Handler,
        *,
        request_factory: Any,
        handler_cancellation: bool,
        loop: asyncio.AbstractEventLoop,
        protocol_kwargs: dict[str, Any],
    ) -> None:
        super().__init__(
            handler,
            request_factory=request_factory,
            handler_cancellation=handler_cancellation,
            loop=loop,
        )
        self._protocol_loop = loop
        self._protocol_kwargs = protocol_kwargs

    def __call__(self) -> web.RequestHandler:
        return GatewayRequestHandler(self, loop=self._protocol_loop, **self._protocol_kwargs)


class GatewayRunner(web.AppRunner):
    """``web.AppRunner`` whose server is a :class:`GatewayServer`.

    ``AppRunner`` makes its ``web.Server`` in ``_make_server`` (after the app's startup), with
    no parameter for the protocol class: this override keeps that server's request handler
    and request factory (the app's) and hands them to a :class:`GatewayServer`.
    """

    __slots__ = ("_bounds",)

    def __init__(self, app: web.Application, *, bounds: Bounds, shutdown_timeout: float) -> None:
        super().__init__(app, shutdown_timeout=shutdown_timeout, access_log=None)
        self._bounds = bounds

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()
        return GatewayServer(
            made.request_handler,
            request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation,
            loop=asyncio.get_running_loop(),
            protocol_kwargs={
                "bounds": self._bounds,
                "access_log": None,
                "keepalive_timeout": KEEPALIVE_SECONDS,
                "max_line_size": MAX_REQUEST_LINE,
                "max_field_size": MAX_HEADER_LINE,
            },
        )


class CannotListen(Exception):
    """The address and port cannot be listened on; the message says why, in one line."""


def check_bindable(host: str, port: int, *, reuse_port: bool) -> None:
    """Raise :class:`CannotListen` if ``host:port`` cannot be bound now (a port in use, an
    address not of this machine): said in one line before start-up rather than as a
    traceback after it."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)  # fmt: skip
    except socket.gaierror as exc:
        raise CannotListen(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                why = exc.strerror or str(exc)
                if exc.errno == errno.EADDRINUSE:
                    why = "the port is in use by another program (choose --port or GATEWAY_PORT)"
                raise CannotListen(f"cannot listen on {host}:{port}: {why}") from None


def run(settings: Settings, bound: int, listening: Callable[[], None]) -> None:
    """Serve ``create_app(settings)`` until SIGTERM or SIGINT, then stop gracefully;
    ``listening`` is called once the port is bound."""
    asyncio.run(_serve(settings, bound, listening))


async def _serve(settings: Settings, bound: int, listening: Callable[[], None]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    runner = GatewayRunner(
        create_app(settings),
        bounds=Bounds.of(settings, bound, loop),
        shutdown_timeout=settings.shutdown_timeout_seconds,
    )
    await runner.setup()
    try:
        site = web.TCPSite(
            runner, settings.host, settings.port,
            backlog=LISTEN_BACKLOG, reuse_port=settings.workers > 1,
        )  # fmt: skip
        await site.start()
        listening()
        await stop.wait()
    finally:
        await runner.cleanup()
