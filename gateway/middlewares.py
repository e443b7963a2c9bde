"""Middlewares: request ids, Nomic-shaped errors, request metrics."""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable

from aiohttp import web
from aiohttp.http_exceptions import ContentEncodingError, DecompressSizeError

from gateway import logs, metrics, openai_shape
from gateway.appkeys import SETTINGS
from gateway.errors import (
    GatewayError,
    HttpError,
    InternalError,
    MalformedBody,
    UnsupportedEncoding,
)

log = logging.getLogger(__name__)

REQUEST_ID = web.RequestKey("request_id", str)
LOG_FIELDS = web.RequestKey("log_fields", dict[str, object])  # handlers add what they know
QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})  # probes: debug while they succeed
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
DECODED_ENCODINGS = ("identity", "gzip", "deflate")  # what aiohttp inflates without extras
_CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,64}")
_KEY_BODY = re.compile(r"[A-Za-z0-9_-]{43}")  # what follows a team key's nk-


def error_response(
    status: int, detail: list[dict[str, object]], retry_after: float | None = None
) -> web.Response:
    """An error in Nomic's shape: ``{"detail": [{"loc", "msg", "type"}]}``."""
    response = web.json_response({"detail": detail}, status=status)
    if retry_after is not None:
        response.headers["Retry-After"] = retry_after_header(retry_after)
    return response


def retry_after_header(seconds: float) -> str:
    """``Retry-After`` of a wait of ``seconds``: whole seconds, at least one."""
    return str(max(1, round(seconds)))


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give every request an id (the client's ``X-Request-Id`` if sane), time and count it."""
    request_id = request[REQUEST_ID] = _request_id(request)
    fields = request[LOG_FIELDS] = {}
    route = request.match_info.route.resource
    route_name = route.canonical if route is not None else "unmatched"
    started = time.perf_counter()
    response = await _answer_errors(request, handler)
    elapsed = time.perf_counter() - started
    response.headers["X-Request-Id"] = request_id
    metrics.child(metrics.REQUESTS, route_name, f"{response.status // 100}xx").inc()
    metrics.child(metrics.REQUEST_SECONDS, route_name).observe(elapsed)
    fields.update(request_id=request_id, method=request.method, route=route_name,
                  status=response.status, duration_ms=round(elapsed * 1000, 2))  # fmt: skip
    quiet = route_name in QUIET_ROUTES and response.status < 400
    logs.request_line(fields, logging.DEBUG if quiet else logging.INFO)
    return response


def _request_id(request: web.Request) -> str:
    """The client's ``X-Request-Id`` if it may be logged and sent back, else a new one (and
    nothing is said of the one sent: it may be a key pasted in the wrong header)."""
    given = request.headers.get("X-Request-Id")
    settings = request.config_dict.get(SETTINGS)
    hidden = () if settings is None else (settings.admin_token, settings.metrics_token,
                                          settings.nomic_api_key)  # fmt: skip
    if given and acceptable_request_id(given, (s for s in hidden if s)):
        return given
    return secrets.token_hex(16)


def acceptable_request_id(given: str, hidden: Iterable[str]) -> bool:
    """Whether a client's request id may be logged and sent back: 1 to 64 characters of
    A-Z, a-z, 0-9 and ``._:-``, and nothing a secret could be. Not a key (``nk-`` anywhere,
    in any case: team keys and Nomic's; nor a team key's 43 characters without it), nor
    anything holding one of the ``hidden`` tokens. An id refused by mistake (``bank-7``)
    costs nothing: the request gets one of the gateway's own. Only whole tokens are looked
    for: refusing an id that is a piece of one would tell a client, piece by piece, what the
    token holds."""
    return (
        _CLIENT_REQUEST_ID.fullmatch(given) is not None
        and "nk-" not in given.lower()
        and _KEY_BODY.fullmatch(given) is None
        and not any(token in given for token in hidden)
    )


# What teams may call; every other path (Nomic's datasets, maps, ...) is a 404 here.
SERVED = (
    "POST /v1/embedding/image", "POST /v1/embedding/text", "GET /v1/user", "GET /v1/usage",
    "POST /v1/embeddings", "GET /v1/models",
)  # fmt: skip


async def _answer_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    answer = answer_openai if openai_shape.speaks_openai(request.path) else answer_for
    try:
        _check_encoding(request)
        return await handler(request)
    except web.RequestPayloadError as exc:  # the body, found broken while it was read
        return answer(_malformed_body(exc.__cause__))
    except ConnectionError:  # the client left mid-body: nobody reads this answer
        log.debug("%s %s: the client closed the connection", request.method, request.path)
        return answer(MalformedBody("the connection closed before the body was in"))
    except GatewayError as exc:
        if exc.status >= 500:
            log.warning("%s %s: %s", request.method, request.path, exc.msg)
        return answer(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        msg = exc.reason
        if exc.status == 404:  # nothing else of Nomic's is passed on with the org's key
            msg = f"{exc.reason}: the gateway serves {', '.join(SERVED)}"
        response = answer(HttpError(exc.status, msg))
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except Exception:
        log.exception("unexpected error answering %s %s", request.method, request.path)
        return answer(InternalError())


def _malformed_body(cause: BaseException | None) -> MalformedBody:
    if isinstance(cause, (ContentEncodingError, DecompressSizeError)):
        return MalformedBody("the body is not valid data of its Content-Encoding")
    return MalformedBody("the request body is malformed")


def answer_for(error: GatewayError) -> web.Response:
    """The Nomic-shaped answer to ``error``, with its Retry-After and headers."""
    response = error_response(error.status, error.detail(), error.retry_after)
    response.headers.update(error.headers)
    return response


def answer_openai(error: GatewayError) -> web.Response:
    """The OpenAI-shaped answer to ``error``, with its Retry-After and headers."""
    status, body = openai_shape.error_body(error)
    response = web.json_response(body, status=status)
    if error.retry_after is not None:
        response.headers["Retry-After"] = retry_after_header(error.retry_after)
    response.headers.update(error.headers)
    return response


def _check_encoding(request: web.Request) -> None:
    """Refuse a body in a ``Content-Encoding`` the gateway does not decode (415), before it
    is read."""
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding and encoding not in DECODED_ENCODINGS and request.body_exists:
        raise UnsupportedEncoding(
            f"unsupported Content-Encoding {encoding[:40]!r}: send the body as "
            f"{', '.join(DECODED_ENCODINGS)}",
            loc=("header", "content-encoding"),
            headers={"Accept-Encoding": "gzip, deflate"},
        )
