"""A process-wide budget of request body bytes in flight, so memory does not follow uploads.

Every embedding request claims its body's bytes before they are read (its ``Content-Length``,
or chunk by chunk when the length is not given or the body is compressed) and holds them until
it is answered, so a request admitted is never cut off for room halfway. A body that does not
fit gets 503 with ``Retry-After`` before it is read: a hundred clients uploading 20 MB each
cannot take the process to gigabytes. One team may hold at most a share of the budget (a
quarter, and never less than one largest body): past it, its own request gets 429, so no team
can keep the others from uploading, not even by declaring large bodies and sending nothing.
"""

from __future__ import annotations

from types import TracebackType

from gateway import metrics
from gateway.errors import Overloaded, QuotaExceeded

RETRY_AFTER_SECONDS = 2  # bodies in flight are answered within seconds, as a rule


class BodyBudget:
    def __init__(self, max_bytes: int, largest_body: int) -> None:
        self.max_bytes = max_bytes
        self.team_share = max(largest_body, max_bytes // 4)
        self.in_flight = 0
        self.by_team: dict[str, int] = {}

    def claim(self, team: str) -> Claim:
        """A claim of ``team`` on the budget, empty until :meth:`Claim.cover` grows it; a
        context manager that gives it back on exit."""
        return Claim(self, team)


class Claim:
    __slots__ = ("_budget", "_team", "bytes", "largest")

    def __init__(self, budget: BodyBudget, team: str) -> None:
        self._budget = budget
        self._team = team
        self.bytes = 0
        self.largest = 0  # what it held at most, kept after it is given back

    def cover(self, total: int) -> None:
        """Make the claim ``total`` bytes (never smaller); raises :class:`QuotaExceeded` past
        the team's share, :class:`Overloaded` past the budget."""
        more = total - self.bytes
        if more <= 0:
            return
        budget = self._budget
        if budget.by_team.get(self._team, 0) + more > budget.team_share:
            metrics.BODIES_REFUSED.labels(reason="team_share").inc()
            raise QuotaExceeded(
                f"team {self._team!r} is sending more than {budget.team_share} bytes of request "
                "bodies at once; wait for its uploads in flight",
                loc=("body",),
                retry_after=RETRY_AFTER_SECONDS,
            )
        if budget.in_flight + more > budget.max_bytes:
            metrics.BODIES_REFUSED.labels(reason="full").inc()
            raise Overloaded(
                "the gateway is receiving too many request bodies at once; retry shortly",
                loc=("body",),
                retry_after=RETRY_AFTER_SECONDS,
            )
        budget.in_flight += more
        budget.by_team[self._team] = budget.by_team.get(self._team, 0) + more
        self.bytes = self.largest = total

    def __enter__(self) -> Claim:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if not self.bytes:
            return
        budget = self._budget
        budget.in_flight -= self.bytes
        left = budget.by_team[self._team] - self.bytes
        if left:
            budget.by_team[self._team] = left
        else:
            del budget.by_team[self._team]
        self.bytes = 0
        metrics.BODY_BYTES_IN_FLIGHT.set(budget.in_flight)
