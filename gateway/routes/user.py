"""What a team sees of itself: ``GET /v1/user`` (the official client calls it first) and
``GET /v1/usage``."""

from __future__ import annotations

import datetime
import math
import re

from aiohttp import web

from gateway import quota
from gateway.accounts import tag_usage_rows, usage_rows
from gateway.appkeys import ACCOUNTS, AUTH, LEDGER, SETTINGS
from gateway.errors import InvalidRequest, QuotaExceeded, StoreUnavailable
from gateway.store import StoreError

DAYS_READ_PER_SECOND = quota.MAX_USAGE_RANGE_DAYS  # one of the longest ranges a second
DAYS_READ_AT_ONCE = 2 * DAYS_READ_PER_SECOND
DEFAULT_DAYS = 7  # without since: the week that ends on until
# Days a range may name: usage is counted on the Unix clock, so none is older than its epoch;
# and with both ends inside these, no date arithmetic of a range (since's default, six days
# before until; each day from since to until) can leave the years datetime.date can hold.
FIRST_DAY = datetime.date(1970, 1, 1)
LAST_DAY = datetime.date.max
_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


async def current_user(request: web.Request) -> web.Response:
    team = await request.app[AUTH].team_for(request.headers.get("Authorization"))
    return web.json_response({"id": team.id, "name": team.name, "team": team.to_json()})


async def own_usage(request: web.Request) -> web.Response:
    """A team's usage by day (``by=tag``: by day and tag). Each day asked for is a read of
    the store: a team reads at most :data:`DAYS_READ_PER_SECOND` a second
    (:data:`DAYS_READ_AT_ONCE` at once), all processes and replicas together, then gets
    ``429``."""
    team = await request.app[AUTH].team_for(request.headers.get("Authorization"))
    days = requested_days(request)
    read = tag_usage_rows if by_tag(request) else usage_rows
    try:
        wait_ms = await request.app[LEDGER].take_usage_reads(
            team.id, len(days), DAYS_READ_PER_SECOND, DAYS_READ_AT_ONCE
        )
    except StoreError as exc:
        raise StoreUnavailable(
            "the usage store is unavailable; retry shortly", retry_after=1
        ) from exc
    if wait_ms:
        raise QuotaExceeded(
            f"usage is read at most {DAYS_READ_PER_SECOND} days a second a team",
            loc=("query",), retry_after=math.ceil(wait_ms / 1000),
        )  # fmt: skip
    await request.app[ACCOUNTS].flush()  # this process's latest counts
    rows = await read(request.app[LEDGER], [team.id], days)
    pricing = request.app[SETTINGS].pricing  # with prices set, each row's cost beside it
    return web.json_response(
        {"usage": rows if pricing is None else list(map(pricing.priced, rows))}
    )


def requested_days(request: web.Request) -> list[str]:
    """The UTC days from ``since`` to ``until`` (both included, each YYYY-MM-DD): ``until``
    defaults to today, ``since`` to six days before ``until``. Each answer of 422 names the
    parameter at fault."""
    end = _day(request, "until") or datetime.datetime.now(datetime.UTC).date()
    start = _day(request, "since") or end - datetime.timedelta(days=DEFAULT_DAYS - 1)
    if start > end:
        raise InvalidRequest(f"since ({start}) is after until ({end})", loc=("query", "since"))
    count = (end - start).days + 1
    if count > quota.MAX_USAGE_RANGE_DAYS:
        raise InvalidRequest(
            f"at most {quota.MAX_USAGE_RANGE_DAYS} days at once; since to until is {count} days",
            loc=("query", "since"),
        )
    return [(start + datetime.timedelta(days=i)).isoformat() for i in range(count)]


def by_tag(request: web.Request, plain: str = "day") -> bool:
    """Whether the query asks for rows by tag (``by=tag``) rather than the ``plain`` rows
    (``by=day``, or for the chargeback ``by=team``: the default); 422 naming ``by`` for
    anything else."""
    by = request.query.get("by") or plain
    if by not in (plain, "tag"):
        raise InvalidRequest(f"by must be {plain} or tag", loc=("query", "by"))
    return by == "tag"


def _day(request: web.Request, name: str) -> datetime.date | None:
    """The day the query parameter ``name`` gives; None if it is absent or empty."""
    text = request.query.get(name)
    if not text:
        return None
    problem = f"{name} must be a day as YYYY-MM-DD from {FIRST_DAY} to {LAST_DAY}"
    if not _DAY.fullmatch(text):  # fromisoformat also takes 20260101 and week dates
        raise InvalidRequest(problem, loc=("query", name))
    try:
        day = datetime.date.fromisoformat(text)
    except ValueError:  # 2026-02-30, year 0
        raise InvalidRequest(problem, loc=("query", name)) from None
    if not FIRST_DAY <= day <= LAST_DAY:
        raise InvalidRequest(problem, loc=("query", name))
    return day
