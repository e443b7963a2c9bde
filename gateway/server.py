"""Serving: aiohttp's HTTP/1 protocol with three guards, the listening socket, SIGTERM.

``run`` replaces ``web.run_app``: an :class:`GatewayRunner` (aiohttp's ``AppRunner`` whose
server makes :class:`GatewayRequestHandler` protocols) and a ``TCPSite``, served until SIGTERM
or SIGINT, then stopped as ``run_app`` stops: no new connections, in-flight requests finish
(up to the shutdown timeout), the app's cleanup runs.

The guards, all on the protocol (a few attribute checks per read on the request path):

- a request aiohttp's parser refuses (a control byte in a header, a header line over 8 KiB,
  a bad Content-Length, line folding, a bad request line) is answered in Nomic's JSON error
  shape with a message in general terms, never the request's bytes, and leaves one generic
  log line (aiohttp's own answer and log line quote the offending line: a team key with it);
- a connection must send its request line and headers within the header timeout (from when
  it opens, or from its first byte after a keep-alive pause, which aiohttp's keep-alive
  timeout bounds): aiohttp itself lets a silent or one-byte-at-a-time client hold a
  descriptor for its keep-alive timeout;
- open connections are bounded (:mod:`gateway.connections`): at the bound the longest-idle
  one is closed, or the new one if none is idle.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
import socket
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from aiohttp import web
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

from gateway import metrics
from gateway.app import create_app
from gateway.config import Settings
from gateway.connections import LISTEN_BACKLOG, ConnectionGuard
from gateway.errors import HandlerTimeout, InternalError
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


class GatewayRequestHandler(web.RequestHandler):
    """aiohttp's HTTP/1 protocol, with Nomic-shaped protocol errors, a header timeout and a
    place under the :class:`ConnectionGuard`.

    Why a subclass: aiohttp builds a protocol error's answer (and its log line, bytes and
    all) in ``RequestHandler.handle_error``, a public method meant to be overridden; the
    other hooks do not reach it (``handler_args`` only sets the protocol's parameters, a
    middleware never sees a request the parser refused). ``web.Server`` makes the protocols,
    so :class:`GatewayServer` makes these instead, and nothing of aiohttp is monkeypatched.
    The header timeout and the guard read three of the protocol's own attributes
    (``_waiter``: waiting for a request; ``_request_count``: requests parsed;
    ``_force_close``), which ``tests/test_server_functional.py`` exercises against the
    installed aiohttp.
    """

    __slots__ = ("_guard", "_header_timeout", "_header_timer", "_reading")

    def __init__(
        self,
        manager: web.Server,
        *,
        guard: ConnectionGuard,
        header_timeout: float,
        **kwargs: Any,
    ) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._header_timeout = header_timeout
        self._header_timer: asyncio.TimerHandle | None = None
        self._reading = False  # bytes of a request line or headers arrived, not yet parsed

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if not self._guard.admit(self):
            self.force_close()
            return
        self._start_header_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_header_timer()
        self._guard.forget(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if data and not self._reading and self._waiting_for_request():
            self._reading = True  # a request begins (the first, or after a keep-alive pause)
            self._guard.active(self)
            self._start_header_timer()
        parsed = self._request_count
        super().data_received(data)
        if self._request_count != parsed:  # its headers are in (or it was refused)
            self._reading = False
            self._stop_header_timer()

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        finished = await super().finish_response(request, resp, start_time)
        self._guard.active(self)  # idle from now, until its next request
        return finished

    def is_idle(self) -> bool:
        """Waiting for a request of which no byte has come: the guard may close it."""
        return self.transport is not None and not self._reading and self._waiting_for_request()

    def shed(self) -> None:
        self.force_close()

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

    def _start_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self._loop.call_later(self._header_timeout, self._headers_late)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.transport is not None and not self._force_close:
            metrics.child(metrics.CONNECTIONS_SHED, "header_timeout").inc()
            log.debug("closed a connection that sent no complete request line and headers")
            self._guard.forget(self)
            self.force_close()


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

    __slots__ = ("_guard", "_header_timeout")

    def __init__(
        self,
        app: web.Application,
        *,
        guard: ConnectionGuard,
        header_timeout: float,
        shutdown_timeout: float,
    ) -> None:
        super().__init__(app, shutdown_timeout=shutdown_timeout, access_log=None)
        self._guard = guard
        self._header_timeout = header_timeout

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()
        return GatewayServer(
            made.request_handler,
            request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation,
            loop=asyncio.get_running_loop(),
            protocol_kwargs={
                "guard": self._guard,
                "header_timeout": self._header_timeout,
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
        guard=ConnectionGuard(bound),
        header_timeout=settings.header_timeout_seconds,
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
