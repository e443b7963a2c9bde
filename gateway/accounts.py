"""Accounting around the pipeline: admit a request against its team's limits (reserving the
expected cost of its misses), then settle it with what Nomic billed.

A request answered from the cache is admitted with its usage in one step
(:meth:`Accounts.admit_answered`). One with misses is one transaction
(:meth:`Accounts.answer_misses`): it reserves their expected cost (:meth:`Accounts.reserve`),
runs the work that answers it, and settles the bill that work returns
(:class:`gateway.assembly.Bill`: what was paid, what is still pending) with
:meth:`Accounts.settle`, whatever becomes of the handler that asked.

Only a decision goes to the store on the request path: a request that no limit of its team
applies to (say, all hits for a team without per-minute limits) is counted in an in-process
buffer that is written once a second, one ``settle`` per team and day, and at shutdown.
Every settle carries an id and the store applies each id once, so a settle or a buffer
write that failed (or timed out after it ran) is simply retried later: nothing is lost,
nothing counted twice, and a reservation is always released. What a store failure means
for a decision (decide in the process, or refuse) is the ledger's to say
(:class:`gateway.store.fallback.FallbackLedger`).

A miss reserves what inputs of its model cost lately (:class:`gateway.quota.TokenEstimator`):
an image, the most an image cost; a text, the most a text cost per token of its estimate,
times its own estimate, and never more than the most the text itself can cost
(:meth:`gateway.models.Spec.bound`, which is also all it reserves before any answer). So
another team's texts can raise what a text reserves only up to that bound. Before an
image's cost is known, a team with a token budget sends its image misses one request at a
time (:mod:`gateway.cost_lessons`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NamedTuple, TypeVar

from gateway import metrics, quota, tags
from gateway.assembly import Answer, Bill, Completed, FetchFailed, Lookup
from gateway.cost_lessons import CostLessons
from gateway.errors import GatewayError, QuotaExceeded, StoreUnavailable
from gateway.models import Kind
from gateway.quota import TokenEstimator, Window
from gateway.store import StoreError
from gateway.store.base import Ledger, QuotaLedger, Settlement, StoreFull
from gateway.store.pending import PendingSettles
from gateway.teams import LimitName, Team
from gateway.unattributed import TEAM_ID as UNATTRIBUTED
from gateway.unattributed import Unattributed

log = logging.getLogger(__name__)
T = TypeVar("T")
MOST_OPEN = 10_000  # counts a usage buffer keeps per team, day and tag between two flushes


class Reservation(NamedTuple):
    """A request with misses, admitted: what its settle needs."""

    team: Team
    model: str
    kind: Kind
    at: Window
    request_id: str | None  # its id in the ledger; None: no limit applied, it is buffered
    learner: bool  # this request teaches the model's cost; the others wait for it
    inputs: int = 0  # what a failed request counts (see failed_usage)
    hits: int = 0
    tag: str = tags.UNTAGGED  # the job it names (gateway.tags)


def answered_usage(answer: Answer, kind: Kind) -> dict[str, int]:
    """A request's usage: its inputs (hits and misses) under ``texts`` for texts, under
    ``images`` for images and URLs."""
    return {
        "requests": 1,
        "texts" if kind == "text" else "images": answer.hits + answer.misses,
        "hits": answer.hits,
        "misses": answer.misses,
        "saved_tokens": answer.usage_tokens - answer.billed_tokens,
    }


def failed_usage(reservation: Reservation, rejected: bool) -> dict[str, int]:
    """A request admitted that failed: counted as a request with its inputs, as an answered
    one is (``misses``: those not found in the cache), and in ``upstream_errors``, or in
    ``rejected`` if it failed for a limit of its team."""
    return {
        "requests": 1,
        "texts" if reservation.kind == "text" else "images": reservation.inputs,
        "hits": reservation.hits,
        "misses": reservation.inputs - reservation.hits,
        "rejected" if rejected else "upstream_errors": 1,
    }


class UsageBuffer:
    """Usage counted in the process, and settles that failed (:attr:`pending`, merged),
    written by :meth:`flush`.

    It writes to the store's own ledger, never through a :class:`FallbackLedger` (which
    hands what fails to :attr:`pending`)."""

    def __init__(
        self, ledger: QuotaLedger, unattributed: Unattributed | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:  # fmt: skip
        self._ledger = ledger
        self.unattributed = unattributed or Unattributed()
        self._clock = clock
        self._open: dict[tuple[str, str, str, str], Settlement] = {}
        self.pending = PendingSettles()

    def add(
        self, team_id: str, at: Window, billed: int, usage: dict[str, int],
        tag: str = tags.UNTAGGED,
    ) -> None:  # fmt: skip
        """Count ``billed`` and ``usage`` to the team's day under ``tag`` (past
        :data:`MOST_OPEN` counts open, a new tag's go under ``other``: the store bounds the
        tags it keeps, this bounds what waits for it)."""
        key = (team_id, at.day, at.month, tag)
        if key not in self._open and len(self._open) >= MOST_OPEN:
            key, tag = (team_id, at.day, at.month, tags.OTHER), tags.OTHER
        entry = self._open.get(key)
        if entry is None:
            entry = Settlement(team_id, at.day, at.month, secrets.token_hex(16), 0, Counter(), tag)
        entry.usage.update(usage)
        self._open[key] = entry._replace(billed=entry.billed + billed)

    async def flush(self) -> None:
        """Write everything; what fails stays (merged, see :class:`PendingSettles`) for the
        next flush."""
        billed, usage = self.unattributed.take()
        if billed or usage:
            self.add(UNATTRIBUTED, quota.window(self._clock()), billed, usage)
        for entry in self._open.values():
            self.pending.add(entry)
        self._open = {}
        await self.pending.write(self._ledger)

    async def run(self, every_seconds: float) -> None:
        while True:
            await asyncio.sleep(every_seconds)
            await self.flush()


class Accounts:
    """Admits and settles requests on ``ledger``; ``buffer`` counts what needs no decision.

    Over Redis the ledger is a :class:`FallbackLedger`: it hands a settle the store failed
    to ``buffer`` to retry, and raises :class:`StoreError` only for a decision it will not
    make in the store's stead (answered 503)."""

    def __init__(
        self,
        ledger: QuotaLedger,
        buffer: UsageBuffer,
        estimator: TokenEstimator,
        learn_wait_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._ledger = ledger
        self._estimator = estimator
        self._clock = clock
        self._lessons = CostLessons(ledger, estimator, learn_wait_seconds)
        self.buffer = buffer
        self._settling: set[asyncio.Task[Any]] = set()  # and the requests run to their end
        self._prompt: set[asyncio.Task[None]] = set()  # the settles that wait for nothing
        # (team, per-minute limit) → the refusal that used it up, and its minute
        self._used_up: dict[tuple[str, LimitName], tuple[quota.Decision, int]] = {}

    def refuse_early(self, team: Team, kind: Kind, tag: str = tags.UNTAGGED) -> None:
        """Raise :class:`QuotaExceeded` if this process saw a per-minute limit that a request
        of ``kind`` counts toward used up this minute (see
        :func:`quota.refuses_every_request`): the request is then refused before its body is
        read, and counted as rejected (under ``tag``, the header's). Images and URLs count
        toward the same limits."""
        if not self._used_up:
            return
        for limit in quota.minute_limits(kind):
            known = self._used_up.get((team.id, limit))
            if known is None:
                continue
            decision, minute = known
            at = quota.window(self._clock())
            if at.minute != minute or not quota.refuses_every_request(team, decision):
                del self._used_up[(team.id, limit)]
                continue
            self.buffer.add(team.id, at, 0, {"rejected": 1}, tag)
            raise _exceeded(team, decision, at, None)

    async def admit_answered(self, team: Team, lookup: Lookup, answer: Answer) -> None:
        """Admit a request answered from the cache, its usage recorded with the decision, or
        raise :class:`QuotaExceeded` (or :class:`StoreUnavailable`). Nothing is left to
        settle."""
        at = quota.window(self._clock())
        request = lookup.request
        want = quota.demand(team, request.kind, len(lookup.cache_keys), lookup.cached_inputs, 0)
        usage = answered_usage(answer, request.kind)
        if quota.applies(team, want):
            await self._decide(team, want, at, usage, request.tag)
        else:
            self.buffer.add(team.id, at, 0, usage, request.tag)
        _count_tokens(team, request.model, request.kind, answer)

    async def reserve(self, team: Team, lookup: Lookup) -> Reservation:
        """Admit a request with misses, reserving their expected cost, or raise
        :class:`QuotaExceeded` (or :class:`StoreUnavailable`); :meth:`settle` it once it
        is answered or has failed."""
        model, kind, tag = lookup.request.model, lookup.request.kind, lookup.request.tag
        if kind == "text":  # within the text's own bound, whatever other texts cost
            learner = False
            costs = list(map(lookup.cost, lookup.missing))
            reserve = sum(self._estimator.text_cost(model, c.weight, c.bound or 1) for c in costs)
            most = sum(c.bound or 1 for c in costs)
        else:
            learner = _has_budget(team) and await self._lessons.known_or_my_turn(model)
            reserve = len(lookup.missing) * self._estimator.per_item(model)
            most = -1  # an image's cost is known once learned: no more than expected
        at = quota.window(self._clock())
        inputs, hits = len(lookup.cache_keys), lookup.cached_inputs
        want = quota.demand(team, kind, inputs, hits, reserve, most)
        if not quota.applies(team, want):
            return Reservation(team, model, kind, at, None, learner, inputs, hits, tag)
        try:
            request_id = await self._decide(team, want, at, {}, tag)
        except BaseException:  # refused, or cancelled: the next request learns the cost
            self._lessons.end(model, learner)
            raise
        return Reservation(team, model, kind, at, request_id, learner, inputs, hits, tag)

    async def _decide(
        self, team: Team, want: quota.Demand, at: Window, usage: dict[str, int], tag: str
    ) -> str:
        """Admit ``want`` (adding ``usage``, under ``tag`` too) in the ledger under a new
        request id, returned; raise what a refusal or a store that cannot decide is answered
        with."""
        request_id = secrets.token_hex(16)  # a fifth of what uuid4().hex costs
        try:
            decision = await self._ledger.admit(team, want, at, usage, request_id, tag)
        except StoreError as exc:
            why = "full" if isinstance(exc, StoreFull) else "unavailable"
            message = f"the usage store is {why}; retry shortly"
            raise StoreUnavailable(message, retry_after=1) from exc
        if not decision.allowed:
            assert decision.limit is not None
            if quota.refuses_every_request(team, decision):
                self._used_up[(team.id, decision.limit)] = (decision, at.minute)
            raise _exceeded(team, decision, at, decision.asked, want.reserve_tokens)
        return request_id

    async def answer_misses(
        self, team: Team, lookup: Lookup, complete: Callable[[], Awaitable[Completed]]
    ) -> Answer:
        """Answer a request with misses as one transaction: admit it (reserving their
        expected cost, or raise :class:`QuotaExceeded`), ``complete`` it (the work that
        fetches and answers), and settle its bill; return its answer, or raise the error it
        failed with. It runs in a task of its own, so that what it reserves is released and
        what it fetches is billed even if the handler awaiting it is cancelled (a client
        that hung up, a shutdown's grace run out): the final drain waits for it."""
        task = asyncio.create_task(self._transact(team, lookup, complete))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)
        return await asyncio.shield(task)

    async def _transact(
        self, team: Team, lookup: Lookup, complete: Callable[[], Awaitable[Completed]]
    ) -> Answer:
        """Settled after the answer if it succeeds; before raising if it fails (a client
        retrying at once finds its reservation released), unless a fetch of it outlives
        it, to be billed when it ends."""
        reservation = await self.reserve(team, lookup)
        try:
            completed = await complete()
        except FetchFailed as failed:
            await self._settle_failed(reservation, failed.bill, failed.error)
            raise failed.error from None
        except BaseException:  # cancelled, or a bug: released all the same
            await self._settle_failed(reservation, Bill(), None)
            raise
        self.settle(reservation, completed.answer, completed.bill)
        return completed.answer

    async def _settle_failed(
        self, reservation: Reservation, bill: Bill, failure: GatewayError | None
    ) -> None:
        settled = self.settle(reservation, None, bill, failure)
        if bill.pending is None:
            await settled

    def settle(
        self, reservation: Reservation, answer: Answer | None, bill: Bill,
        failure: GatewayError | None = None,
    ) -> asyncio.Task[None]:  # fmt: skip
        """Settle in a task of its own (it must finish even if the request is cancelled);
        the final usage flush at shutdown waits for it. What is pending of the ``bill``
        (fetches of the request that outlived it) is billed too, once they end. A request
        with no answer failed with ``failure``: counted as a request with its inputs
        (:func:`failed_usage`), and ``rejected`` if that is a limit of its team (its upstream
        calls a minute, counted where the calls are made), else ``upstream_errors``."""
        rejected = isinstance(failure, QuotaExceeded)
        task = asyncio.create_task(self._settle(reservation, answer, bill, rejected))
        for tasks in (self._settling, self._prompt if bill.pending is None else set()):
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        return task

    async def flush(self) -> None:
        """Write this process's latest counts: the settles under way (but those waiting for
        a fetch that outlived its request), then the buffer."""
        if self._prompt:
            await asyncio.gather(*self._prompt, return_exceptions=True)
        await self.buffer.flush()

    async def _settle(
        self, reservation: Reservation, answer: Answer | None, bill: Bill, rejected: bool
    ) -> None:
        late = await bill.pending_tokens()  # fetches of it that outlived it
        billed = bill.paid
        team, at, model = reservation.team, reservation.at, reservation.model
        if answer is not None:
            usage = answered_usage(answer, reservation.kind)
            _count_tokens(team, model, reservation.kind, answer)
            metrics.child(metrics.BILLED_TOKENS, team.id, model).inc(late)
        else:
            usage = failed_usage(reservation, rejected)
            metrics.child(metrics.BILLED_TOKENS, team.id, model).inc(billed + late)
        billed += late
        try:
            if reservation.kind != "text":  # a text's cost needs no other replica's
                await self._lessons.share(model)
        finally:
            self._lessons.end(model, reservation.learner)
        request_id, tag = reservation.request_id, reservation.tag
        if request_id is None:
            self.buffer.add(team.id, at, billed, usage, tag)
        else:
            await self._ledger.settle(team.id, at.day, at.month, request_id, billed, usage, tag)

    async def drain(self) -> None:
        """Wait for the settles under way, and the requests run to their end."""
        while self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)


def _has_budget(team: Team) -> bool:
    return team.limits.tokens_per_day is not None or team.limits.tokens_per_month is not None


def _exceeded(
    team: Team, decision: quota.Decision, at: Window, asked: int | None, expected: int = 0
) -> QuotaExceeded:
    """The refusal of a request that asked ``asked`` of the limit (None: not known, for a
    refusal before the body is read, which is only ever of a limit with nothing left), its
    tokens expected to cost ``expected``."""
    assert decision.limit is not None
    metrics.QUOTA_REJECTIONS.labels(team=team.id, limit=decision.limit).inc()
    reset = quota.retry_after(decision, at)
    return QuotaExceeded(
        _refusal(team.id, decision, asked, expected),
        loc=("limits", decision.limit),
        retry_after=reset,
        headers={
            "X-RateLimit-Limit": str(decision.limit_value),
            "X-RateLimit-Remaining": str(decision.remaining),
            "X-RateLimit-Reset": str(reset),
        },
    )


_UNITS: dict[LimitName, tuple[str, str]] = {  # what a limit counts, and over what time
    "requests_per_minute": ("requests", "this minute"),
    "images_per_minute": ("images", "this minute"),
    "texts_per_minute": ("texts", "this minute"),
    "tokens_per_day": ("tokens", "today"),
    "tokens_per_month": ("tokens", "this month"),
}


def _refusal(team_id: str, decision: quota.Decision, asked: int | None, expected: int) -> str:
    """What the client is told: that its team has nothing left of the limit, or that this
    request asks more than is left (the header says what is left: the message says why that
    is not enough)."""
    assert decision.limit is not None
    limit, value, left = decision.limit, decision.limit_value, decision.remaining
    unit, period = _UNITS[limit]
    if asked is None or left == 0:
        # A budget's use counts what requests under way reserved, beside what Nomic billed.
        how = " (billed, or reserved by requests under way)" if unit == "tokens" else ""
        return f"team {team_id!r} has used all {value} {unit} of its {limit} limit {period}{how}"
    if unit == "tokens" and asked > expected:
        wants = (f"this request can cost up to {asked} tokens (held in full while other "
                 f"requests of the team are under way), which is")  # fmt: skip
    elif unit == "tokens":
        wants = f"this request's expected cost, {asked} tokens, is"
    else:
        wants = f"this request's {asked} {unit} are"
    whole = "; that is more than the whole limit" if asked > value else ""
    return (f"team {team_id!r}: {wants} more than the {left} that remain {period} of its "
            f"{limit} limit ({value}){whole}")  # fmt: skip


def _count_items(model: str, answer: Answer) -> None:
    """The answer's inputs in ``gateway_items_total`` (once the request is admitted)."""
    for outcome, count in (("hit", answer.cached), ("miss", answer.misses),
                           ("coalesced", answer.coalesced), ("stale", answer.stale)):  # fmt: skip
        metrics.child(metrics.ITEMS, model, outcome).inc(count)


def _count_tokens(team: Team, model: str, kind: Kind, answer: Answer) -> None:
    _count_items(model, answer)
    counted_as = "text" if kind == "text" else "image"  # as in usage: URLs are images
    metrics.child(metrics.TEAM_ITEMS, team.id, counted_as, "hit").inc(answer.hits)
    metrics.child(metrics.TEAM_ITEMS, team.id, counted_as, "miss").inc(answer.misses)
    metrics.child(metrics.BILLED_TOKENS, team.id, model).inc(answer.billed_tokens)
    saved = answer.usage_tokens - answer.billed_tokens
    metrics.child(metrics.SAVED_TOKENS, team.id, model).inc(saved)


@contextlib.asynccontextmanager
async def flushing(buffer: UsageBuffer, every_seconds: float) -> AsyncIterator[None]:
    """Write buffered usage every ``every_seconds`` while the app runs, and once more at the
    end (after the last request and the last settle: the app drains them first)."""
    task = asyncio.create_task(buffer.run(every_seconds))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await buffer.flush()


async def usage_rows(
    ledger: Ledger, team_ids: list[str], days: list[str]
) -> list[dict[str, object]]:
    """Usage of each team and day with any activity, ordered by team then day."""
    rows: list[dict[str, object]] = []
    for team_id in team_ids:
        counts = await _read_usage(ledger.usage(team_id, days))
        rows.extend(
            {"team": team_id, "day": day, **row}
            for day, row in zip(days, counts, strict=True)
            if any(row.values())
        )
    return rows


async def tag_usage_rows(
    ledger: Ledger, team_ids: list[str], days: list[str]
) -> list[dict[str, object]]:
    """Usage of each team, day and tag with any activity, ordered by team, day, then tag
    (:mod:`gateway.tags`): the rows of a team's day add up to its row of
    :func:`usage_rows`."""
    rows: list[dict[str, object]] = []
    for team_id in team_ids:
        by_day = await _read_usage(ledger.tag_usage(team_id, days))
        rows.extend(
            {"team": team_id, "day": day, "tag": tag, **counts}
            for day, by_tag in zip(days, by_day, strict=True)
            for tag, counts in sorted(by_tag.items())
        )
    return rows


async def _read_usage(read: Awaitable[T]) -> T:
    """What ``read`` returns; a store that fails is answered 503, retry shortly."""
    try:
        return await read
    except StoreError as exc:
        why = "full" if isinstance(exc, StoreFull) else "unavailable"
        raise StoreUnavailable(f"the usage store is {why}; retry shortly", retry_after=1) from exc
