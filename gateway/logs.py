"""Logging: one JSON object per line (or plain text), and one line per request.

Nothing here ever logs a header, a body or a setting's value: a request line carries the
request id, the team, the model, counts and times, never a key, an image or a URL.

With JSON logs, a request line skips the ``logging`` machinery (a record, handler locks, a
formatter: about a tenth of a cache hit's cost) and is written straight to the handler's
stream, as the same object the formatter would make, in order with every other line.
"""

from __future__ import annotations

import datetime
import functools
import logging
import sys
import time
from typing import IO, Any

import orjson

ACCESS = logging.getLogger("gateway.access")
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
REQUEST_MESSAGE = "%s %s %s %.1fms"  # method, route, status, duration
_fast_stream: IO[bytes] | None = None  # where JSON request lines go directly, once configured


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


def configure(level: str, fmt: str, stream: IO[str] | None = None) -> None:
    """Log to ``stream`` (standard error by default) from ``level`` up, as ``json`` or text."""
    stream = sys.stderr if stream is None else stream
    handler = logging.StreamHandler(stream)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    configure_fast_path(getattr(stream, "buffer", None) if fmt == "json" else None)


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
