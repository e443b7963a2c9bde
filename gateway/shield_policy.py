"""The shield's decisions, pure: numbers and what Nomic answered in, what to do out.

The shield (:mod:`gateway.shield`) carries these out; nothing here waits, calls or reads a
clock (the time is passed in). A reader follows a batch by reading the returns:

- :func:`calls_for` and :func:`drain_seconds`: how many calls a lane's queue needs and about
  how long the queue takes to drain, which the lanes admit misses by;
- :func:`after_failure`: a call failed; retry after so long, or answer this error;
- :func:`judge` and :class:`Refusals`: Nomic refused one item of a batch; who is to blame.
  The item's request gets the ``422``; the rest is resent without it. A request may cost at
  most ``MAX_REJECTIONS_PER_OWNER`` such resends (counted over every batch its items were in),
  then its other items are withdrawn too, so one request of undecodable images cannot spend
  Nomic's rate item by item. A team one of whose items Nomic refused has its misses batched
  apart for ``APART_SECONDS``: what else it sends may be refused too, and each refusal costs
  everyone in the batch a resend.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Sequence
from typing import NamedTuple

from gateway.config import Settings
from gateway.errors import (
    GatewayError,
    UpstreamServerError,
    UpstreamTimeout,
    UpstreamUnavailable,
)

MAX_REJECTIONS_PER_OWNER = 3
MAX_REQUESTS_REMEMBERED = 4096  # requests whose refused items are counted, the latest kept
APART_SECONDS = 60.0
RETRYABLE = (UpstreamServerError, UpstreamUnavailable, UpstreamTimeout)


class Policy(NamedTuple):
    """How the shield batches, paces and retries: the settings' (:meth:`of`)."""

    batch_items: int
    text_batch_items: int  # Nomic takes fewer texts a call than images
    batch_bytes: int
    linger_seconds: float
    rate_calls: int
    rate_period_seconds: float
    rate_burst: int
    concurrency: int
    queue_items: int
    call_timeout_seconds: float
    max_attempts: int
    backoff_base_seconds: float = 0.25
    backoff_max_seconds: float = 8.0

    @classmethod
    def of(cls, settings: Settings) -> Policy:
        return cls(
            batch_items=settings.upstream_batch_size,
            text_batch_items=settings.upstream_text_batch_size,
            batch_bytes=settings.upstream_batch_bytes,
            linger_seconds=settings.upstream_linger_seconds,
            rate_calls=settings.upstream_rate_calls,
            rate_period_seconds=settings.upstream_rate_period_seconds,
            rate_burst=settings.upstream_rate_burst,
            concurrency=settings.upstream_concurrency,
            queue_items=settings.upstream_queue_items,
            call_timeout_seconds=settings.upstream_timeout_seconds,
            max_attempts=settings.upstream_max_attempts,
        )

    @property
    def interval_ms(self) -> int:
        return max(1, math.ceil(self.rate_period_seconds * 1000 / self.rate_calls))


def calls_for(items: int, size: int, most: int, policy: Policy) -> int:
    """The calls ``items`` queued misses of one lane (``size`` bytes in all) need: a call
    takes at most ``most`` (the lane's batch: images or texts), and as many of their average
    size as the byte limit allows, so large images go one a call."""
    if items <= 0:
        return 0
    per_call = most
    if size:
        per_call = max(1, min(per_call, policy.batch_bytes * items // size))
    return -(-items // per_call)


def drain_seconds(calls: int, policy: Policy, call_seconds: float) -> float:
    """About how long until the last of ``calls`` queued calls (:func:`calls_for`, over all
    lanes: they share the rate) is answered: spaced by the rate past its burst, overlapping
    as the concurrency cap lets calls of ``call_seconds`` each."""
    if calls <= 0:
        return 0.0
    by_rate = max(0, calls - policy.rate_burst) * policy.interval_ms / 1000 + call_seconds
    by_concurrency = -(-calls // policy.concurrency) * call_seconds
    return max(by_rate, by_concurrency)


def backoff(attempt: int, policy: Policy, retry_after: float | None, rng: random.Random) -> float:
    """Seconds before retry ``attempt`` (0-based): exponential with equal jitter, never less
    than what Nomic asked for in Retry-After."""
    ceiling = min(policy.backoff_max_seconds, policy.backoff_base_seconds * 2.0**attempt)
    delay = ceiling / 2 + rng.uniform(0, ceiling / 2)
    return max(delay, retry_after or 0.0)


def retry_delay(
    error: GatewayError, attempt: int, policy: Policy, *, breaker_wait: float, time_left: float,
    rng: random.Random,
) -> float | None:  # fmt: skip
    """Seconds before retrying a call that failed with ``error`` on ``attempt`` (0-based), or
    None to give up: the error is not worth retrying, the attempts are used up, the breaker
    is open (``breaker_wait`` > 0), or the retry would come after ``time_left``."""
    if not isinstance(error, RETRYABLE) or attempt + 1 >= policy.max_attempts:
        return None
    if breaker_wait > 0:
        return None
    delay = backoff(attempt, policy, error.retry_after, rng)
    return delay if delay < time_left else None


def after_failure(
    error: GatewayError, attempt: int, policy: Policy, *, breaker_wait: float, time_left: float,
    rng: random.Random,
) -> float | GatewayError:  # fmt: skip
    """A call failed with ``error`` on ``attempt`` (0-based): seconds before the retry
    (:func:`retry_delay`), or the error to answer every item of the batch with. While the
    breaker is open, clients are told to come back when it closes: a copy of the error says
    so (the error itself may be shared, and is never changed)."""
    delay = retry_delay(
        error, attempt, policy, breaker_wait=breaker_wait, time_left=time_left, rng=rng
    )
    if delay is not None:
        return delay
    if breaker_wait > 0 and isinstance(error, RETRYABLE):
        told = copy.copy(error)
        told.retry_after = max(error.retry_after or 0, breaker_wait)
        return told
    return error


class Sent(NamedTuple):
    """What the refusal policy knows of an item sent: the request that sent it (an opaque
    id) and its team."""

    owner: int
    team: str


class Verdict(NamedTuple):
    """What to do with a batch one of whose items Nomic refused, by the items' places in it:
    fail ``refused`` (its request gets the ``422``; None: Nomic named an item it was not
    sent, and every item fails), fail ``withdrawn`` (the other items of a request that has
    used up its resends), move ``apart`` to their team's own lane, send ``resend`` again; and
    batch ``team`` apart from now on (``""``: nobody)."""

    refused: int | None
    withdrawn: tuple[int, ...] = ()
    apart: tuple[int, ...] = ()
    resend: tuple[int, ...] = ()
    team: str = ""


def judge(batch: Sequence[Sent], index: int, refusals: int, *, shared: bool) -> Verdict:
    """Nomic refused item ``index`` of ``batch``, which makes ``refusals`` for its request
    (this one counted): what to do. In a lane ``shared`` by every team, the refused item's
    team is set apart; its other items leave the batch for its own lane, unless they are all
    that is left (then they are simply resent)."""
    if not 0 <= index < len(batch):
        return Verdict(None)
    bad = batch[index]
    rest = [i for i in range(len(batch)) if i != index]
    withdrawn: list[int] = []
    if refusals >= MAX_REJECTIONS_PER_OWNER:
        withdrawn = [i for i in rest if batch[i].owner == bad.owner]
        rest = [i for i in rest if batch[i].owner != bad.owner]
    team = bad.team if shared else ""
    theirs = [i for i in rest if batch[i].team == team] if team else []
    if len(theirs) == len(rest):  # none of theirs left, or nothing else: resent as it is
        theirs = []
    resend = [i for i in rest if i not in theirs]
    return Verdict(index, tuple(withdrawn), tuple(theirs), tuple(resend), team)


class Refusals:
    """What the refusal policy remembers: each recent request's refused items (the latest
    :data:`MAX_REQUESTS_REMEMBERED` requests), and which teams are batched apart until when.
    In memory only; times are the caller's clock's."""

    def __init__(self) -> None:
        self._counts: dict[int, int] = {}  # request → its items Nomic refused, oldest first
        self._apart: dict[str, float] = {}  # team → until when its misses are batched apart

    def refused(self, batch: Sequence[Sent], index: int, *, shared: bool, now: float) -> Verdict:
        """Count the refusal of item ``index`` of ``batch`` and :func:`judge` it."""
        if not 0 <= index < len(batch):
            return Verdict(None)
        owner = batch[index].owner
        count = self._counts[owner] = self._counts.pop(owner, 0) + 1  # now the newest
        if len(self._counts) > MAX_REQUESTS_REMEMBERED:
            del self._counts[next(iter(self._counts))]  # the oldest: long answered
        verdict = judge(batch, index, count, shared=shared)
        if verdict.team:
            self._apart[verdict.team] = now + APART_SECONDS
        return verdict

    def apart(self, team: str, now: float) -> bool:
        """Whether ``team``'s misses are batched apart at ``now``."""
        until = self._apart.get(team)
        if until is None:
            return False
        if until > now:
            return True
        del self._apart[team]
        return False
