"""A process-wide budget of request body bytes in flight, so memory does not follow uploads.

Every embedding request claims the bytes of its body before they are read (its
``Content-Length``, or chunk by chunk when the length is not given or the body is
compressed) and holds them until it is answered. A body that does not fit gets 503 with
``Retry-After`` at once, before it is read: a hundred clients uploading 20 MB each cannot take
the process to gigabytes, whichever teams they belong to.
"""

from __future__ import annotations

from types import TracebackType

from gateway import malloc, metrics
from gateway.errors import Overloaded

RETRY_AFTER_SECONDS = 2  # bodies in flight are answered within seconds, as a rule


class BodyBudget:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.in_flight = 0

    def claim(self) -> Claim:
        """A claim on the budget, empty until :meth:`Claim.cover` grows it; a context manager
        that gives it back on exit."""
        return Claim(self)


class Claim:
    __slots__ = ("_budget", "bytes")

    def __init__(self, budget: BodyBudget) -> None:
        self._budget = budget
        self.bytes = 0

    def cover(self, total: int) -> None:
        """Make the claim ``total`` bytes (never smaller); raises :class:`Overloaded` if the
        budget cannot take the difference."""
        more = total - self.bytes
        if more <= 0:
            return
        budget = self._budget
        if budget.in_flight + more > budget.max_bytes:
            metrics.BODIES_REFUSED.inc()
            raise Overloaded(
                "the gateway is receiving too many request bodies at once; retry shortly",
                loc=("body",),
                retry_after=RETRY_AFTER_SECONDS,
            )
        budget.in_flight += more
        self.bytes = total

    def __enter__(self) -> Claim:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        budget = self._budget
        metrics.BODY_BYTES_IN_FLIGHT.set(budget.in_flight)  # once a request: its peak, lately
        budget.in_flight -= self.bytes
        if self.bytes >= malloc.TRIM_AFTER_BYTES:
            malloc.release_freed_memory()  # the body's buffers, freed by now
        self.bytes = 0
