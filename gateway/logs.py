"""Logging: one JSON object per line (or plain text), and one line per request.

Nothing here ever logs a header, a body or a setting's value: a request line carries the
request id, the team, the model, counts and times, never a key, an image or a URL.
"""

from __future__ import annotations

import datetime
import logging
import sys
from typing import Any

import orjson

ACCESS = logging.getLogger("gateway.access")
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message", ...extra fields}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update((k, v) for k, v in vars(record).items() if k not in _STANDARD)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def configure(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def request_line(fields: dict[str, Any], level: int = logging.INFO) -> None:
    """The one line a request leaves: what it asked, what it cost, how long it took."""
    ACCESS.log(
        level,
        "%s %s %s %.1fms",
        fields.get("method"),
        fields.get("route"),
        fields.get("status"),
        fields.get("duration_ms", 0.0),
        extra=fields,
    )
