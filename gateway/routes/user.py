"""What a team sees of itself: ``GET /v1/user`` (the official client calls it first) and
``GET /v1/usage``."""

from __future__ import annotations

import math
import time

from aiohttp import web

from gateway import quota
from gateway.accounts import usage_rows
from gateway.appkeys import ACCOUNTS, AUTH, LEDGER, USAGE_READS
from gateway.errors import InvalidRequest, QuotaExceeded

DAYS_READ_PER_SECOND = quota.MAX_USAGE_RANGE_DAYS  # one of the longest ranges a second


def usage_reads() -> quota.Bucket:
    """The days of usage each team may read (``GET /v1/usage``): so many a second, and as
    many again at once."""
    return quota.Bucket(DAYS_READ_PER_SECOND, 2 * DAYS_READ_PER_SECOND)


async def current_user(request: web.Request) -> web.Response:
    team = await request.app[AUTH].team_for(request.headers.get("Authorization"))
    return web.json_response({"id": team.id, "name": team.name, "team": team.to_json()})


async def own_usage(request: web.Request) -> web.Response:
    """A team's usage by day. Each day asked for is a read of the store: a team reads at most
    :data:`DAYS_READ_PER_SECOND` a second (a year's at once), then gets ``429``."""
    team = await request.app[AUTH].team_for(request.headers.get("Authorization"))
    days = requested_days(request)
    wait = request.app[USAGE_READS].take(team.id, len(days))
    if wait:
        raise QuotaExceeded(
            f"usage is read at most {DAYS_READ_PER_SECOND} days a second a team",
            loc=("query",), retry_after=math.ceil(wait),
        )  # fmt: skip
    await request.app[ACCOUNTS].flush()  # this process's latest counts
    return web.json_response({"usage": await usage_rows(request.app[LEDGER], [team.id], days)})


def requested_days(request: web.Request) -> list[str]:
    today = time.strftime("%Y-%m-%d", time.gmtime())
    try:
        return quota.days_between(request.query.get("since"), request.query.get("until"), today)
    except ValueError as exc:
        raise InvalidRequest(str(exc), loc=("query",)) from None
