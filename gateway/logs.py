"""Logging: one JSON object per line (or plain text), and one line per request.

Nothing here ever logs a header, a body or a setting's value: a request line carries the
request id, the team, the model, counts and times, never a key, an image or a URL.

With JSON logs, a request line skips the ``logging`` machinery (a record, handler locks, a
formatter: about a tenth of a cache hit's cost) and is written straight to the handler's
stream, as the same object the formatter would make, in order with every other line.

Identical lines (same logger, level and message template) are rate-limited by
:class:`RepeatFilter` on the handler, so a fault that repeats thousands of times a second (an
``accept()`` failing for lack of descriptors, a flood of malformed requests) costs a few lines,
not the disk. Request lines are exempt: each one is a different request.
"""

from __future__ import annotations

import datetime
import functools
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

import orjson

ACCESS = logging.getLogger("gateway.access")
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
REQUEST_MESSAGE = "%s %s %s %.1fms"  # method, route, status, duration
_fast_stream: IO[bytes] | None = None  # where JSON request lines go directly, once configured
_repeats: RepeatFilter | None = None  # the handler's, once configured


def _timestamp(created: float) -> str:
    """``2026-11-24T18:41:16.068+00:00``: UTC, to the millisecond."""
    second = int(created)
    return f"{_second(second)}.{int((created - second) * 1000):03d}+00:00"


@functools.lru_cache(maxsize=4)
def _second(second: int) -> str:
    return datetime.datetime.fromtimestamp(second, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S")


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message", ...extra fields}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update((k, v) for k, v in vars(record).items() if k not in _STANDARD)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


@dataclass
class _Window:
    started: float
    passed: int = 1
    suppressed: int = 0


class RepeatFilter(logging.Filter):
    """Lets through at most ``limit`` identical lines per ``window_seconds``, then drops them.

    Lines are identical when their logger, level and message template are. When a window
    that dropped lines is over, one line says how many (``N similar lines suppressed: ...``),
    written through ``emit`` (the handler's ``handle``) before the line that noticed: the
    next line of the same kind, or any line once the window is over. Thread-safe; ``clock``
    is injectable for tests.
    """

    SWEEP_SECONDS = 1.0
    MAX_KINDS = 1000  # kinds of lines tracked at once; past it, new kinds pass unlimited

    def __init__(
        self,
        emit: Callable[[logging.LogRecord], object],
        limit: int = 10,
        window_seconds: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        exempt: frozenset[str] = frozenset({ACCESS.name}),
    ) -> None:
        super().__init__()
        self._emit = emit
        self._limit = limit
        self._window = window_seconds
        self._clock = clock
        self._exempt = exempt
        self._lock = threading.Lock()
        self._windows: dict[tuple[str, int, str], _Window] = {}
        self._next_sweep = 0.0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name in self._exempt or hasattr(record, "suppressed"):
            return True
        now = self._clock()
        key = (record.name, record.levelno, str(record.msg))
        with self._lock:
            summaries = self._sweep(now) if now >= self._next_sweep else []
            passes = self._count(key, now, summaries)
        for summary in summaries:
            self._emit(summary)
        return passes

    def flush(self) -> None:
        """Write the summaries of lines suppressed so far (at shutdown: no window will end)."""
        with self._lock:
            summaries = []
            for key, window in self._windows.items():
                if window.suppressed:
                    summaries.append(_summary(key, window.suppressed))
                    window.suppressed = 0
        for summary in summaries:
            self._emit(summary)

    def _count(self, key: tuple[str, int, str], now: float, out: list[logging.LogRecord]) -> bool:
        window = self._windows.get(key)
        if window is None or now - window.started >= self._window:
            if window is not None and window.suppressed:
                out.append(_summary(key, window.suppressed))
            if window is not None or len(self._windows) < self.MAX_KINDS:
                self._windows[key] = _Window(now)
            return True
        if window.passed < self._limit:
            window.passed += 1
            return True
        window.suppressed += 1
        return False

    def _sweep(self, now: float) -> list[logging.LogRecord]:
        """Forget the windows that are over; a summary for each that dropped lines."""
        self._next_sweep = now + self.SWEEP_SECONDS
        over = [key for key, w in self._windows.items() if now - w.started >= self._window]
        summaries = []
        for key in over:
            window = self._windows.pop(key)
            if window.suppressed:
                summaries.append(_summary(key, window.suppressed))
        return summaries


def _summary(key: tuple[str, int, str], count: int) -> logging.LogRecord:
    name, level, template = key
    record = logging.LogRecord(
        name, level, __file__, 0, "%d similar lines suppressed: %s", (count, template[:120]), None
    )
    record.suppressed = count
    return record


def configure(level: str, fmt: str, stream: IO[str] | None = None) -> None:
    """Log to ``stream`` (standard error by default) from ``level`` up, as ``json`` or text."""
    stream = sys.stderr if stream is None else stream
    handler = logging.StreamHandler(stream)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    global _repeats
    _repeats = RepeatFilter(handler.handle)
    handler.addFilter(_repeats)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    configure_fast_path(getattr(stream, "buffer", None) if fmt == "json" else None)


def flush_suppressed() -> None:
    """Write how many lines were suppressed, of each kind, since their window began."""
    if _repeats is not None:
        _repeats.flush()


def configure_fast_path(stream: IO[bytes] | None) -> None:
    """Write JSON request lines straight to ``stream`` (None: through ``logging``)."""
    global _fast_stream
    _fast_stream = stream


def request_line(fields: dict[str, Any], level: int = logging.INFO) -> None:
    """The one line a request leaves: what it asked, what it cost, how long it took."""
    if not ACCESS.isEnabledFor(level):
        return
    args = (fields.get("method"), fields.get("route"), fields.get("status"),
            fields.get("duration_ms", 0.0))  # fmt: skip
    stream = _fast_stream
    if stream is None:
        ACCESS.log(level, REQUEST_MESSAGE, *args, extra=fields)
        return
    line = {"time": _timestamp(time.time()), "level": logging.getLevelName(level).lower(),
            "logger": ACCESS.name, "message": REQUEST_MESSAGE % args, **fields}  # fmt: skip
    try:
        stream.write(orjson.dumps(line, default=str, option=orjson.OPT_APPEND_NEWLINE))
        stream.flush()
    except (OSError, ValueError):  # closed or broken: never fail a request for its log line
        configure_fast_path(None)  # from now on through logging, which handles such streams
