"""The error tree. Raised deep, mapped to Nomic-shaped HTTP answers in one middleware.

Every answer that is not a 200 carries ``{"detail": [{"loc": [...], "msg": ..., "type": ...}]}``,
the shape Nomic (FastAPI) uses, so clients parse the gateway's errors like Nomic's.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Any

Loc = tuple[str | int, ...]


class GatewayError(Exception):
    """Base of every error the gateway answers on purpose."""

    status = 500
    kind = "gateway_error"

    def __init__(
        self,
        msg: str,
        *,
        loc: Loc = ("body",),
        retry_after: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(msg)
        self.msg = msg
        self.loc = loc
        self.retry_after = retry_after
        self.headers = headers or {}

    def detail(self) -> list[dict[str, Any]]:
        return [{"loc": list(self.loc), "msg": self.msg, "type": self.kind}]


class InternalError(GatewayError):
    """A bug of ours: answered without a word of what went wrong."""

    status = 500
    kind = "internal_error"

    def __init__(self) -> None:
        super().__init__("internal gateway error", loc=())


class HandlerTimeout(GatewayError):
    """aiohttp's handler timeout ran out before an answer began."""

    status = 504
    kind = "timeout"


class InvalidRequest(GatewayError):
    """The client's request is malformed; ``loc`` points at the offending input."""

    status = 422
    kind = "value_error"


class UnknownModel(InvalidRequest):
    """A model the gateway does not serve (a 404 in OpenAI's shape, as OpenAI answers)."""


class ItemRejected(InvalidRequest):
    """Upstream refused one item; re-pointed at that item's place in each client request."""

    kind = "value_error.upstream"


class Unauthorized(GatewayError):
    """No team key, or one that is malformed, unknown, revoked or expired."""

    status = 401
    kind = "authentication_error"

    def __init__(self, msg: str) -> None:
        super().__init__(
            msg, loc=("header", "authorization"), headers={"WWW-Authenticate": "Bearer"}
        )


class HttpError(GatewayError):
    """aiohttp's own refusal of a request (no such path, a method the path does not take)."""

    def __init__(self, status: int, msg: str) -> None:
        super().__init__(msg, loc=("path",))
        self.status = status
        self.kind = f"http_{status}"


class NotFound(GatewayError):
    status = 404
    kind = "not_found"


class Conflict(GatewayError):
    status = 409
    kind = "conflict"


class QuotaExceeded(GatewayError):
    """A team limit would be passed; ``loc`` names the limit."""

    status = 429
    kind = "rate_limit_exceeded"


class CallsUsedUp(QuotaExceeded):
    """The team has made its ``upstream_calls_per_minute`` calls to Nomic this minute, and
    the item cannot wait for the next before its request's deadline. A request of another
    team that joined the item's fetch takes it over (:class:`gateway.fetch.Fetcher`)."""


class BodyTimeout(GatewayError):
    status = 408
    kind = "value_error.body_timeout"


class PayloadTooLarge(GatewayError):
    status = 413
    kind = "value_error.body_too_large"


class MalformedBody(GatewayError):
    """The body could not be read as sent: bad compressed data, a broken framing."""

    status = 400
    kind = "value_error.body"


class UnsupportedEncoding(GatewayError):
    """A ``Content-Encoding`` the gateway does not decode."""

    status = 415
    kind = "value_error.content_encoding"


class Overloaded(GatewayError):
    """This process has no room for the request now (bodies in flight, descriptors, memory);
    retry shortly."""

    status = 503
    kind = "gateway_overloaded"


class UpstreamError(GatewayError):
    """Nomic answered something unusable, or could not be reached."""

    status = 502
    kind = "upstream_error"


class Withdrawn(UpstreamError):
    """Nomic was never asked for this item: the request that sent it used up its resends on
    items Nomic refused, and the rest of its items went with it. A request that joined the
    item's fetch takes it over (:class:`gateway.fetch.Fetcher`)."""


class UpstreamServerError(UpstreamError):
    """Nomic answered 5xx, or could not be reached: worth retrying."""


class UpstreamCredentialsRefused(UpstreamError):
    kind = "upstream_error.credentials"


class UpstreamUnavailable(UpstreamError):
    """Nomic is rate limiting or overloaded; the client should come back later."""

    status = 503
    kind = "upstream_error.unavailable"


class UpstreamRateLimited(UpstreamUnavailable):
    """Nomic answered 429: every replica pauses for its Retry-After."""


class UpstreamTimeout(UpstreamError):
    status = 504
    kind = "upstream_error.timeout"


class StoreUnavailable(GatewayError):
    status = 503
    kind = "store_error"


class LocalResourceError(Overloaded):
    """The gateway itself ran out of descriptors, buffers or memory on the way to Nomic.

    Not Nomic failing: the shield does not retry it and the circuit breaker does not count it.
    """

    ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

    def __init__(
        self,
        msg: str = "the gateway is short of descriptors or memory to reach Nomic; retry shortly",
        *,
        loc: Loc = (),
        retry_after: float | None = 1.0,
    ) -> None:
        super().__init__(msg, loc=loc, retry_after=retry_after)

    @classmethod
    def behind(cls, exc: BaseException) -> bool:
        """Whether ``exc`` (an OSError, or an aiohttp error made of one) is a local shortage.

        A name lookup that fails for want of a descriptor says so in no errno (glibc answers
        "Name or service not known" when it cannot open /etc/hosts or a socket): a lookup
        failure counts as local when no descriptor can be opened just after it."""
        causes = (exc, getattr(exc, "os_error", None), exc.__cause__)
        for error in causes:
            if isinstance(error, OSError) and error.errno in cls.ERRNOS:
                return True
        return any(isinstance(error, socket.gaierror) for error in causes) and _no_descriptor()


def _no_descriptor() -> bool:
    """Whether this process cannot open one more descriptor now."""
    try:
        os.close(os.open(os.devnull, os.O_RDONLY))
    except OSError as exc:
        return exc.errno in LocalResourceError.ERRNOS
    return False
