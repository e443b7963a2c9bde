"""Serving: aiohttp's HTTP/1 protocol with its guards, the listening socket, SIGTERM.

``run`` replaces ``web.run_app``: an :class:`GatewayRunner` (aiohttp's ``AppRunner`` whose
server makes :class:`GatewayRequestHandler` protocols) and a ``TCPSite``, served until SIGTERM
or SIGINT, then stopped as ``run_app`` stops: no new connections, in-flight requests finish
(up to the shutdown timeout), the app's cleanup runs.

The guards, all on the protocol (a few attribute checks per read on the request path), bound
what one client can make the process hold by sending slowly, or not at all, or reading
nothing. :class:`GatewayRequestHandler` guards what a connection reads, its base
:class:`gateway.guarded_connection.GuardedConnection` the connection and its answers; what
they decide is decided in :mod:`gateway.request_head`, :mod:`gateway.request_body`,
:mod:`gateway.unsent` and :mod:`gateway.refusals`, which hold no transport and call nothing
back:

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
import errno
import logging
import signal
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.http import RawRequestMessage
from aiohttp.http_exceptions import HttpProcessingError

from gateway.app import create_app
from gateway.config import Settings
from gateway.connections import LISTEN_BACKLOG
from gateway.errors import HandlerTimeout, InternalError
from gateway.guarded_connection import Bounds, GuardedConnection
from gateway.middlewares import answer_for, error_response
from gateway.refusals import MAX_HEADER_LINE, MAX_REQUEST_LINE, refusal

log = logging.getLogger(__name__)

KEEPALIVE_SECONDS = 75.0  # web.run_app's default, kept
Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


class GatewayRequestHandler(GuardedConnection):
    """aiohttp's HTTP/1 protocol, with Nomic-shaped protocol errors and the guards on what a
    connection reads; :class:`GuardedConnection` guards the connection and its answers.

    Why a subclass: aiohttp builds a protocol error's answer (and its log line, bytes and
    all) in ``RequestHandler.handle_error``, a public method meant to be overridden; the
    other hooks do not reach it (``handler_args`` only sets the protocol's parameters, a
    middleware never sees a request the parser refused), nor the bytes before the parser.
    ``web.Server`` makes the protocols, so :class:`GatewayServer` makes these instead, and
    nothing of aiohttp is monkeypatched. The guards read the protocol's own attributes
    (``_request_count`` and ``_messages``: requests parsed; ``_force_close``, ``_close``;
    ``_reading_paused``: the body's reader is full), which ``tests/test_server_functional.py``
    and ``tests/test_slow_clients_functional.py`` exercise against the installed aiohttp.

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
    """

    __slots__ = ()

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
            if self._body.reader is not None:
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
            self._body.restart_window(self._loop.time())
        if self._pending and not self._reading_paused:
            pending, self._pending = self._pending, b""
            self._head.release()  # counted again as it is read now
            self.data_received(pending)

    def _feed(self, data: bytes) -> bool:
        """Hand ``data`` to aiohttp's parser; True if a request came of it (its line and
        headers, or a refusal)."""
        parsed = self._request_count
        super().data_received(data)
        return self._request_count != parsed

    def _resumed(self) -> None:
        if self._body.reader is not None:
            self._body_received(b"")
        elif self._feed(b""):
            self._parsed()

    def _head_received(self, data: bytes) -> bytes:
        """Bytes of a request's line and headers; returns what follows the headers in
        ``data`` (their body, or the next request)."""
        head = self._head
        end = head.end(data)
        if not head.coming:
            if end < 0:
                self._begin_request()
            else:  # all in one read, as most are: no timer, no clock, nothing held
                self._bounds.guard.active(self)
                self._answered = False
        if head.too_large(len(data) if end < 0 else end):
            log.warning("refused a request whose line and headers are over %d bytes",
                        self._bounds.max_header_bytes)  # fmt: skip
            self._refuse(self._bounds.too_large, "headers_too_large")
            return b""
        if end < 0:
            self._partial_head(data)
            return b""
        piece, rest = (data, b"") if end == len(data) else (data[:end], data[end:])
        if self._feed(piece):
            self._parsed()
        else:  # blank lines before a request line, which the parser skips
            if not head.coming:
                self._begin_request()
            head.hold(piece, self)
        return rest

    def _partial_head(self, data: bytes) -> None:
        """Bytes of a request's line and headers that do not end them: held, within the
        process's budget of such bytes."""
        if not self._head.room_for(len(data), self._loop.time()):
            if self._wire is not None:  # not dropped itself: no room could be made
                log.warning("refused a request: %d bytes of unfinished headers are held",
                            self._bounds.headers.total)  # fmt: skip
                self._refuse(self._bounds.too_many, "header_budget")
            return
        if self._feed(data):  # refused by the parser already (a bad request line, say)
            self._parsed()
        else:
            self._head.hold(data, self)

    def _keep_pending(self, data: bytes) -> None:
        """aiohttp stopped reading (a body's reader is full): keep what follows the body
        until it reads again, counted as header bytes held."""
        self._pending += data
        self._head.keep(len(data), self._loop.time(), self)

    def _begin_request(self) -> None:
        """The first byte of a request: the header timer runs (from the connection's opening
        for its first request), the connection moves to the back of the idle order."""
        now = self._loop.time()
        self._head.begin(now)
        self._answered = False
        self._bounds.guard.active(self)
        self._start_header_timer(now)

    def _parsed(self) -> None:
        """aiohttp's parser has a request's line and headers (or refused them)."""
        self._head.parsed()
        if self._header_timer is not None:
            self._stop_header_timer()
        message, payload = self._messages[-1]
        if not isinstance(message, RawRequestMessage):  # refused: answered, then closed
            self._refused = True
        elif not payload.is_eof():
            self._body.start(message, payload, self._loop.time())

    def _body_received(self, data: bytes) -> bytes:
        """Bytes of a body; returns what follows its end in ``data`` (the next request)."""
        body = self._body
        piece, rest = body.split(data)
        before = body.raw_bytes()
        if self._feed(piece) and not isinstance(self._messages[-1][0], RawRequestMessage):
            self._body_refused()
            return b""
        past = body.received(piece, before)
        if past is not None:
            self._end_chunked(past)
        return rest

    def _body_refused(self) -> None:
        """The parser refused the body (its framing, its encoding) and queued a refusal behind
        its request: whoever reads the body hears so (aiohttp leaves it waiting, the lingering
        read for ten seconds, when the body came in a read of its own), the request's answer
        is the connection's last (not followed by one to the queued refusal), and no more
        bytes are taken."""
        reader, self._body.reader = self._body.reader, None
        assert reader is not None
        self._refused = True
        self.close()
        if not reader.is_eof():
            reader.set_exception(web.RequestPayloadError("the request body is malformed"))

    def _end_chunked(self, past: int) -> None:
        """A chunked body ended; ``past``: at most that many of the last read's bytes came
        after it, already in the parser. The connection takes no more requests (aiohttp
        stops reading; the answer says Connection: close) and holds them until it closes."""
        self.close()
        if past > 0:
            self._head.keep(past, self._loop.time(), self)

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
