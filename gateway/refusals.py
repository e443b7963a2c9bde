"""Answers to requests aiohttp's parser refuses, and answers written straight to the socket.

A request aiohttp's parser refuses (a control byte in a header, a header line over 8 KiB, a bad
Content-Length, line folding, a bad request line) is answered in Nomic's JSON error shape with a
message in general terms, never the request's bytes (aiohttp's own answer and log line quote the
offending line: a team key with it). Pure.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import NamedTuple

import orjson
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

from gateway.errors import GatewayError
from gateway.middlewares import DECODED_ENCODINGS

MAX_REQUEST_LINE = 8190  # aiohttp's default
# A header line (name and value) may be 8 KiB. Two bytes more than the request line's limit
# so a LineTooLong tells which of the two it was: it carries the limit it hit.
MAX_HEADER_LINE = 8192


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
