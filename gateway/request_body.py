"""The body of the request a connection is reading, as its bytes arrive, before aiohttp's
parser sees them: where it ends on the wire and how fast it comes (what
:class:`gateway.server.GatewayRequestHandler` judges slow clients by). No I/O: the connection
feeds the parser and keeps the clock.
"""

from __future__ import annotations

from aiohttp import hdrs
from aiohttp.http import RawRequestMessage
from aiohttp.streams import StreamReader

from gateway.connections import Patience


class RequestBody:
    """The body still coming, if any: its bytes left (a ``Content-Length`` body's end is
    known; a chunked body's end only the parser knows) and its pace over a window, judged
    whole windows at a time."""

    __slots__ = ("left", "rate", "reader", "window_bytes", "window_start")

    def __init__(self) -> None:
        self.reader: StreamReader | None = None  # the body still coming
        self.left = -1  # its bytes still to come on the wire; -1: chunked (unknown)
        self.window_start = 0.0  # its pace: bytes since then ...
        self.window_bytes = 0
        self.rate: float | None = None  # ... and over the last window judged

    def start(self, message: RawRequestMessage, payload: StreamReader, now: float) -> None:
        """The parser has the head of a request whose body, ``payload``, is coming."""
        self.reader = payload
        length = message.headers.get(hdrs.CONTENT_LENGTH)
        self.left = -1
        if length is not None and not message.chunked and length.isdigit():
            self.left = int(length)
        self.rate = None
        self.restart_window(now)

    def split(self, data: bytes) -> tuple[bytes, bytes]:
        """``data`` as the piece of the body in it and what follows the body's end."""
        left = self.left
        if 0 <= left < len(data):
            return data[:left], data[left:]
        return data, b""

    def raw_bytes(self) -> int:
        """What the parser has read of a chunked body so far (0 for a ``Content-Length``
        one)."""
        assert self.reader is not None
        return self.reader.total_raw_bytes if self.left < 0 else 0

    def received(self, piece: bytes, before: int) -> int | None:
        """The parser took ``piece`` of the body, having read ``before`` of it before
        (:meth:`raw_bytes`). If a chunked body ended in it: at most how many of its bytes
        came after the end (they are in the parser already); None otherwise."""
        reader = self.reader
        assert reader is not None
        self.window_bytes += len(piece)
        if self.left >= 0:
            self.left -= len(piece)
            if self.left == 0:
                self.reader = None
        elif reader.is_eof() or reader.exception() is not None:
            self.reader = None
            return len(piece) - (reader.total_raw_bytes - before)
        return None

    def restart_window(self, now: float) -> None:
        self.window_start = now
        self.window_bytes = 0

    def judge(self, now: float, patience: Patience) -> float | None:
        """The body's pace over the last whole window (a new one begins when one is judged);
        None before its first."""
        rate = patience.body_rate(now, self.window_start, self.window_bytes)
        if rate is not None:
            self.rate = rate
            self.window_start, self.window_bytes = now, 0
        return self.rate
