"""Accounting around the pipeline: admit a request against its team's limits (reserving the
expected cost of its misses), then settle it with what Nomic billed.

Only a decision goes to the store on the request path: a request that no limit of its team
applies to (say, all hits for a team without per-minute limits) is counted in an in-process
buffer that is written once a second, one atomic ``settle`` per team and day, and at
shutdown. A buffer that cannot be written is kept and written later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import NamedTuple

from gateway import metrics, quota
from gateway.errors import QuotaExceeded, StoreUnavailable
from gateway.pipeline import Answer, Lookup
from gateway.quota import TokenEstimator, Window
from gateway.store import StoreError
from gateway.store.base import Ledger
from gateway.teams import Team

log = logging.getLogger(__name__)


class Reservation(NamedTuple):
    team: Team
    model: str
    at: Window
    tokens: int  # reserved in the store; 0 when no limit applied and the store was not asked


def answered_usage(answer: Answer) -> dict[str, int]:
    return {
        "requests": 1,
        "images": answer.hits + answer.misses,
        "hits": answer.hits,
        "misses": answer.misses,
        "saved_tokens": answer.usage_tokens - answer.billed_tokens,
    }


class UsageBuffer:
    """Usage counted in the process, written to the ledger by :meth:`flush`."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self._pending: dict[tuple[str, str, str], Counter[str]] = {}

    def add(self, team_id: str, at: Window, billed: int, usage: dict[str, int]) -> None:
        counts = self._pending.setdefault((team_id, at.day, at.month), Counter())
        counts.update(usage)
        counts["billed_tokens"] += billed

    async def flush(self) -> None:
        pending, self._pending = self._pending, {}
        for (team_id, day, month), counts in pending.items():
            billed = counts.pop("billed_tokens", 0)
            try:
                await self._ledger.settle(team_id, day, month, 0, billed, counts)
            except StoreError as exc:
                metrics.STORE_ERRORS.labels(operation="usage").inc()
                log.warning("usage of team %s kept in memory, store failed: %s", team_id, exc)
                counts["billed_tokens"] += billed
                self._pending.setdefault((team_id, day, month), Counter()).update(counts)

    async def run(self, every_seconds: float) -> None:
        while True:
            await asyncio.sleep(every_seconds)
            await self.flush()


class Accounts:
    def __init__(
        self,
        ledger: Ledger,
        estimator: TokenEstimator,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._ledger = ledger
        self._estimator = estimator
        self._clock = clock
        self.buffer = UsageBuffer(ledger)

    async def admit(self, team: Team, lookup: Lookup, answer: Answer | None) -> Reservation:
        """Admit the request or raise :class:`QuotaExceeded`. With its ``answer`` already
        known (everything was cached) its usage is recorded at the same time."""
        model = lookup.request.model
        at = quota.window(self._clock())
        per_item = self._estimator.per_item(model) if lookup.missing else 0
        want = quota.demand(
            team, len(lookup.keys), lookup.cached_inputs, len(lookup.missing), per_item
        )
        usage = answered_usage(answer) if answer is not None else {}
        if not quota.applies(team, want):
            if answer is not None:
                self.buffer.add(team.id, at, 0, usage)
                _count_tokens(team, model, answer)
            return Reservation(team, model, at, 0)
        try:
            decision = await self._ledger.admit(team, want, at, usage)
        except StoreError as exc:
            raise StoreUnavailable(
                "the usage store is unavailable; retry shortly", retry_after=1
            ) from exc
        if not decision.allowed:
            raise _exceeded(team, decision, at)
        if answer is not None:
            _count_tokens(team, model, answer)
        return Reservation(team, model, at, want.reserve_tokens)

    async def settle(self, reservation: Reservation, answer: Answer | None, billed: int) -> None:
        """Replace the reservation with what was billed, and record the request's usage (an
        upstream error when there is no answer)."""
        usage = answered_usage(answer) if answer is not None else {"upstream_errors": 1}
        team, at = reservation.team, reservation.at
        if answer is not None:
            _count_tokens(team, reservation.model, answer)
        else:
            metrics.BILLED_TOKENS.labels(team=team.id, model=reservation.model).inc(billed)
        if not reservation.tokens:
            self.buffer.add(team.id, at, billed, usage)
            return
        try:
            await self._ledger.settle(team.id, at.day, at.month, reservation.tokens, billed, usage)
        except StoreError as exc:
            # The reservation expires with its day; the usage is kept and written later.
            log.error("could not settle a request of team %s: %s", team.id, exc)
            self.buffer.add(team.id, at, billed, usage)


def _exceeded(team: Team, decision: quota.Decision, at: Window) -> QuotaExceeded:
    assert decision.limit is not None
    metrics.QUOTA_REJECTIONS.labels(team=team.id, limit=decision.limit).inc()
    reset = quota.retry_after(decision, at)
    return QuotaExceeded(
        f"team {team.id!r} is over its {decision.limit} limit ({decision.limit_value})",
        loc=("limits", decision.limit),
        retry_after=reset,
        headers={
            "X-RateLimit-Limit": str(decision.limit_value),
            "X-RateLimit-Remaining": str(decision.remaining),
            "X-RateLimit-Reset": str(reset),
        },
    )


def _count_tokens(team: Team, model: str, answer: Answer) -> None:
    metrics.BILLED_TOKENS.labels(team=team.id, model=model).inc(answer.billed_tokens)
    saved = answer.usage_tokens - answer.billed_tokens
    metrics.SAVED_TOKENS.labels(team=team.id, model=model).inc(saved)


@contextlib.asynccontextmanager
async def flushing(accounts: Accounts, every_seconds: float) -> AsyncIterator[None]:
    """Write buffered usage every ``every_seconds`` while the app runs, and once more at the
    end, after the last request."""
    task = asyncio.create_task(accounts.buffer.run(every_seconds))
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await accounts.buffer.flush()


async def usage_rows(
    ledger: Ledger, team_ids: list[str], days: list[str]
) -> list[dict[str, object]]:
    """Usage of each team and day with any activity, ordered by team then day."""
    rows: list[dict[str, object]] = []
    for team_id in team_ids:
        try:
            counts = await ledger.usage(team_id, days)
        except StoreError as exc:
            raise StoreUnavailable(
                "the usage store is unavailable; retry shortly", retry_after=1
            ) from exc
        rows.extend(
            {"team": team_id, "day": day, **row}
            for day, row in zip(days, counts, strict=True)
            if any(row.values())
        )
    return rows
