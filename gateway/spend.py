"""Spend from usage rows: totals, budgets and their pace, the monthly chargeback. Pure.

Everything here works on the rows the ledger keeps (a team's counts of one UTC day) and on a
``now`` passed in, so the console, the admin API and the CLI compute the same figures.
"""

from __future__ import annotations

import calendar
import csv
import datetime
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import IO, NamedTuple

from gateway import quota
from gateway.prices import Pricing
from gateway.teams import Team

DAY_SECONDS = 86400
UNATTRIBUTED_NAME = "billed by Nomic, charged to no team"
CHARGEBACK_COLUMNS = (
    "month", "team", "name", "requests", "images", "texts", "hits", "misses",
    "billed_tokens", "saved_tokens", "tokens_per_month",
)  # fmt: skip
CHARGEBACK_TAG_COLUMNS = (*CHARGEBACK_COLUMNS[:3], "tag", *CHARGEBACK_COLUMNS[3:])
MONEY_COLUMNS = ("billed_cost", "saved_cost", "currency")


def utc(now: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(now, datetime.UTC)


def days_back(now: float, count: int) -> list[str]:
    """The ``count`` UTC days that end with today's, oldest first (YYYY-MM-DD)."""
    today = utc(now).date()
    return [(today - datetime.timedelta(days=count - 1 - i)).isoformat() for i in range(count)]


def month_days(month: str) -> list[str]:
    """Every day of ``month`` (YYYY-MM, a year from 1 to 9999); ValueError if it is not one."""
    if re.fullmatch(r"[0-9]{4}-[0-9]{2}", month) is None:
        raise ValueError(f"not a month: {month[:16]!r}")
    year, number = int(month[:4]), int(month[5:])
    first = datetime.date(year, number, 1)  # ValueError: year 0, month 0 or 13
    return [
        first.replace(day=day).isoformat()
        for day in range(1, calendar.monthrange(year, number)[1] + 1)
    ]


def requested_month(value: str | None, now: float) -> tuple[str, list[str]]:
    """The month a query asks for (``YYYY-MM``; none: this month, UTC) and its days;
    ValueError if it names none."""
    month = value or month_of(now)
    return month, month_days(month)


def month_of(now: float) -> str:
    return utc(now).strftime("%Y-%m")


# A cell a spreadsheet would read as a formula, per OWASP's "CSV Injection"
# (https://owasp.org/www-community/attacks/CSV_Injection): one that starts with = + - @, a
# tab or a carriage return is prefixed with ' (read as text), every cell is quoted, and, as
# the page warns, a separator inside a cell must not start a formula either: a reader whose
# separator is ; (or ,) where ours is the other splits "a;=1+1" there, so a ; or , followed
# by one of those characters (after spaces or quotes) is followed by ' too.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_FORMULA_AFTER_SEPARATOR = re.compile(r"([;,])(?=[\s\"']*[=+\-@])")


def csv_cell(value: object) -> object:
    """``value`` as a CSV cell no spreadsheet takes for a formula (with :func:`write_csv`'s
    quoting), whichever separator it splits on: see :data:`FORMULA_STARTS`."""
    if not isinstance(value, str):
        return value
    value = _FORMULA_AFTER_SEPARATOR.sub(r"\1'", value)
    return "'" + value if value.startswith(FORMULA_STARTS) else value


def write_csv(out: IO[str], columns: Sequence[str], rows: Iterable[Mapping[str, object]]) -> None:
    """``rows`` as CSV under a header of ``columns``, every cell quoted and neutralised
    (:func:`csv_cell`)."""
    csv.writer(out, lineterminator="\n").writerow(columns)  # our names: nothing to quote
    writer = csv.DictWriter(
        out, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n",
        quoting=csv.QUOTE_ALL,
    )  # fmt: skip
    writer.writerows({k: csv_cell(v) for k, v in row.items()} for row in rows)


def totals(rows: Iterable[Mapping[str, object]]) -> dict[str, int]:
    """Each usage field summed over ``rows``."""
    total = dict.fromkeys(quota.USAGE_FIELDS, 0)
    for row in rows:
        for field in quota.USAGE_FIELDS:
            value = row.get(field, 0)
            total[field] += value if isinstance(value, int) else 0
    return total


def tag_totals(rows: Iterable[Mapping[str, object]]) -> list[tuple[str, dict[str, int]]]:
    """Rows by tag (``tag`` in each) summed per tag: most tokens billed first, then by tag."""
    by_tag: dict[str, list[Mapping[str, object]]] = {}
    for row in rows:
        by_tag.setdefault(str(row.get("tag", "")), []).append(row)
    summed = [(tag, totals(tagged)) for tag, tagged in by_tag.items()]
    return sorted(summed, key=lambda pair: (-pair[1]["billed_tokens"], pair[0]))


def hit_ratio(usage: Mapping[str, int]) -> float | None:
    """Hits over inputs answered (None: none answered)."""
    answered = usage.get("hits", 0) + usage.get("misses", 0)
    return None if answered == 0 else usage.get("hits", 0) / answered


class Budget(NamedTuple):
    """A token budget over a period (a day or a month) and where the team stands in it."""

    limit: int | None  # None: unlimited
    used: int
    period_start: float  # seconds since the epoch
    period_end: float
    now: float

    @property
    def left(self) -> int | None:
        return None if self.limit is None else max(0, self.limit - self.used)

    @property
    def share(self) -> float | None:
        """How much of the budget is used, 0 to 1 (None: unlimited or a budget of 0)."""
        if not self.limit:
            return None
        return min(1.0, self.used / self.limit)

    @property
    def runs_out(self) -> float | None:
        """When, at the pace of the period so far, the budget is used up: a time within the
        period; None if it lasts the period at that pace (or nothing was spent, or it is
        unlimited). Used up already: ``now``."""
        if self.limit is None:
            return None
        if self.used >= self.limit:
            return self.now
        elapsed = self.now - self.period_start
        if self.used <= 0 or elapsed <= 0:
            return None
        when = self.now + (self.limit - self.used) * elapsed / self.used
        return when if when < self.period_end else None


def day_budget(team: Team, used: int, now: float) -> Budget:
    start = utc(now).replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
    return Budget(team.limits.tokens_per_day, used, start, start + DAY_SECONDS, now)


def month_budget(team: Team, used: int, now: float) -> Budget:
    first = utc(now).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    following = (first + datetime.timedelta(days=32)).replace(day=1)
    return Budget(team.limits.tokens_per_month, used, first.timestamp(), following.timestamp(), now)


def chargeback_row(
    month: str, team_id: str, team: Team | None, rows: Sequence[Mapping[str, object]],
    pricing: Pricing | None, tag: str | None = None,
) -> dict[str, object]:  # fmt: skip
    """One team's month (or, with ``tag``, that tag's share of it, ``rows`` being its rows):
    its usage summed, its monthly budget, and with prices its cost. No team: the
    :mod:`unattributed <gateway.unattributed>` account, named as such."""
    summed = totals(rows)
    row: dict[str, object] = {
        "month": month,
        "team": team_id,
        "name": team.name if team is not None else UNATTRIBUTED_NAME,
        **({} if tag is None else {"tag": tag}),
        **{field: summed[field] for field in CHARGEBACK_COLUMNS[3:-1]},
        "tokens_per_month": team.limits.tokens_per_month if team is not None else None,
    }
    return pricing.priced(row) if pricing is not None else row
