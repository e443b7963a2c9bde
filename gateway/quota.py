"""Limits and usage decisions: pure arithmetic over numbers the store returns, clock passed in.

Rate limits count in fixed UTC minutes: requests, and inputs by kind (images and URLs toward
``images_per_minute``, texts toward ``texts_per_minute``); token budgets per UTC day and
month. Before misses go upstream a request reserves their expected cost against the budgets;
afterwards the reservation is replaced by what Nomic billed. Each check-and-reserve is one
atomic step in the store (``admit``), so requests racing on any number of replicas cannot
pass a budget together.
"""

from __future__ import annotations

import calendar
import functools
import math
import time
from collections import deque
from collections.abc import Mapping
from typing import NamedTuple

from gateway.models import Kind
from gateway.teams import ADMITTED_LIMITS, LimitName, Team

USAGE_FIELDS = (
    "requests", "images", "texts", "hits", "misses", "billed_tokens", "saved_tokens",
    "upstream_errors", "rejected",
)  # fmt: skip
USAGE_DAYS_KEPT = 400
MAX_USAGE_RANGE_DAYS = 400


class Window(NamedTuple):
    """Where ``now`` falls: the minute, day and month its counts belong to."""

    minute: int
    day: str
    month: str
    minute_reset: float  # seconds until the minute ends
    day_reset: float
    month_reset: float

    def reset(self, limit: LimitName) -> float:
        if limit.endswith("minute"):
            return self.minute_reset
        return self.day_reset if limit == "tokens_per_day" else self.month_reset


def window(now: float) -> Window:
    minute = int(now // 60)
    day, month, day_start, next_month = _calendar(minute)
    return Window(
        minute=minute,
        day=day,
        month=month,
        minute_reset=60 - now % 60,
        day_reset=day_start + 86400 - now,
        month_reset=next_month - now,
    )


@functools.lru_cache(maxsize=8)
def _calendar(minute: int) -> tuple[str, str, int, int]:
    """The UTC day and month a minute falls in, and when they start and end: worked out
    once a minute rather than on every request."""
    tm = time.gmtime(minute * 60)
    day_start = calendar.timegm((tm.tm_year, tm.tm_mon, tm.tm_mday, 0, 0, 0))
    year, month = (tm.tm_year + 1, 1) if tm.tm_mon == 12 else (tm.tm_year, tm.tm_mon + 1)
    next_month = calendar.timegm((year, month, 1, 0, 0, 0))
    return time.strftime("%Y-%m-%d", tm), time.strftime("%Y-%m", tm), day_start, next_month


class Demand(NamedTuple):
    """What a request asks of its team's limits: counts, and the tokens its misses are
    expected to cost (``reserve_tokens``) and can cost at most (``reserve_most``; -1: no more
    than expected, as images, whose cost is known)."""

    requests: int
    images: int  # images and URLs
    texts: int
    reserve_tokens: int
    reserve_most: int = -1

    def tokens(self, held: int) -> int:
        """What it reserves of the token budgets while its team's requests under way hold
        ``held`` tokens: its expected cost when none do, else the most it can cost. An
        estimate can fall short (a text of rare words, many times), so only one request at a
        time runs on one: concurrent requests overshoot a budget by at most one request's
        shortfall. The memory store and ``lua/admit.lua`` both decide by this."""
        return self.reserve_tokens if held <= 0 else max(self.reserve_tokens, self.reserve_most)

    def asked(self, held: int = 0) -> tuple[int, ...]:
        """What it asks of each limit, in ``ADMITTED_LIMITS`` order."""
        tokens = self.tokens(held)
        return (self.requests, self.images, self.texts, tokens, tokens)


class Decision(NamedTuple):
    allowed: bool
    limit: LimitName | None = None
    limit_value: int = 0
    remaining: int = 0
    asked: int = 0  # what the request refused asked of that limit


def demand(
    team: Team, kind: Kind, inputs: int, hits: int, reserve_tokens: int, reserve_most: int = -1
) -> Demand:
    """A request of ``inputs`` inputs of ``kind``, of which ``hits`` were found in the cache,
    whose misses are expected to cost ``reserve_tokens`` and can cost ``reserve_most``."""
    counted = inputs if team.count_hits else inputs - hits
    images, texts = (0, counted) if kind == "text" else (counted, 0)
    return Demand(1 if counted else 0, images, texts, reserve_tokens, reserve_most)


def minute_limits(kind: Kind) -> tuple[LimitName, LimitName]:
    """The per-minute limits a request of ``kind`` counts toward."""
    return ("requests_per_minute", "texts_per_minute" if kind == "text" else "images_per_minute")


def applies(team: Team, want: Demand) -> bool:
    """Whether any limit of the team bears on ``want`` (if none, the store need not decide)."""
    rpm, ipm, tpm, per_day, per_month = limit_values(team)
    return (
        (rpm >= 0 and want.requests > 0)
        or (ipm >= 0 and want.images > 0)
        or (tpm >= 0 and want.texts > 0)
        or ((per_day >= 0 or per_month >= 0) and want.reserve_tokens > 0)
    )


def limit_values(team: Team) -> tuple[int, int, int, int, int]:
    """The team's limits in ``ADMITTED_LIMITS`` order, -1 for unlimited (as the store takes
    them)."""
    limits = team.limits
    return tuple(  # type: ignore[return-value]
        -1 if value is None else value
        for value in (limits.requests_per_minute, limits.images_per_minute,
                      limits.texts_per_minute, limits.tokens_per_day, limits.tokens_per_month)
    )  # fmt: skip


def decide(
    team: Team, want: Demand, minute_counts: tuple[int, int, int], budgets: tuple[int, int],
    held: int = 0,
) -> Decision:  # fmt: skip
    """Admit ``want`` given this minute's counts (requests, images, texts), the tokens
    already billed or reserved today and this month, and the tokens its team's requests
    under way hold (:meth:`Demand.tokens`). The memory store calls this; the Redis store
    runs the same rules in ``lua/admit.lua``."""
    checks = zip(
        ADMITTED_LIMITS, limit_values(team), (*minute_counts, *budgets), want.asked(held),
        strict=True,
    )  # fmt: skip
    for name, limit, used, asked in checks:
        if limit >= 0 and asked > 0 and used + asked > limit:
            return Decision(False, name, limit, max(0, limit - used), asked)
    return Decision(True)


def refuses_every_request(team: Team, decision: Decision) -> bool:
    """Whether ``decision``, a refusal with nothing left, refuses every request of the team
    that counts toward its limit until its window ends (so later ones can be refused before
    their body is read): a per-minute limit that hits count toward. A used-up token budget
    does not: hits cost no tokens and are still answered."""
    return (
        team.count_hits
        and decision.limit in ("requests_per_minute", "images_per_minute", "texts_per_minute")
        and decision.remaining == 0
        and getattr(team.limits, decision.limit) == decision.limit_value
    )


def retry_after(decision: Decision, at: Window) -> int:
    assert decision.limit is not None
    return max(1, math.ceil(at.reset(decision.limit)))


def merge(rows: list[Mapping[str, int]]) -> dict[str, int]:
    total = dict.fromkeys(USAGE_FIELDS, 0)
    for row in rows:
        for field in USAGE_FIELDS:
            total[field] += int(row.get(field, 0))
    return total


class TokenEstimator:
    """Expected upstream cost per model, from the last ``window`` answers, so that
    reservations do not fall short while costs hold steady: the most tokens any input of the
    model cost per unit (an image: per image; a text: per token of its estimate,
    :meth:`gateway.models.Spec.weight`). ``initial`` per image until the first answer; a text
    reserves its bound (:meth:`gateway.models.Spec.bound`) until then, and never more."""

    def __init__(self, initial: int, window: int = 100) -> None:
        self._initial = initial
        self._window = window
        self._seen: dict[str, deque[int]] = {}  # thousandths of a token a unit

    def observe(self, model: str, total_tokens: int, units: int) -> None:
        """``total_tokens`` billed for ``units`` (images, or a text's estimated tokens)."""
        seen = self._seen.setdefault(model, deque(maxlen=self._window))
        seen.append(math.ceil(total_tokens * 1000 / max(1, units)))

    def per_item(self, model: str) -> int:
        seen = self._seen.get(model)
        return math.ceil(max(seen) / 1000) if seen else self._initial

    def text_cost(self, model: str, weight: int, bound: int) -> int:
        """What a text of ``weight`` (its estimated tokens) is expected to cost, within
        ``bound`` (the most it can)."""
        seen = self._seen.get(model)
        return bound if not seen else min(bound, math.ceil(weight * max(seen) / 1000))

    def known(self, model: str) -> bool:
        return bool(self._seen.get(model))

    def seed(self, model: str, per_item: int) -> None:
        """What another replica learned, until this one sees an answer of its own."""
        if not self.known(model):
            self._seen.setdefault(model, deque(maxlen=self._window)).append(per_item * 1000)
