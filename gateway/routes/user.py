"""What a team sees of itself: ``GET /v1/user`` (the official client calls it first) and
``GET /v1/usage``."""

from __future__ import annotations

import time

from aiohttp import web

from gateway import quota
from gateway.accounts import usage_rows
from gateway.appkeys import ACCOUNTS, AUTH, LEDGER
from gateway.errors import InvalidRequest


async def current_user(request: web.Request) -> web.Response:
    team = await request.app[AUTH].team_for(request.headers.get("Authorization"))
    return web.json_response({"id": team.id, "name": team.name, "team": team.to_json()})


async def own_usage(request: web.Request) -> web.Response:
    team = await request.app[AUTH].team_for(request.headers.get("Authorization"))
    days = requested_days(request)
    await request.app[ACCOUNTS].flush()  # this process's latest counts
    return web.json_response({"usage": await usage_rows(request.app[LEDGER], [team.id], days)})


def requested_days(request: web.Request) -> list[str]:
    today = time.strftime("%Y-%m-%d", time.gmtime())
    try:
        return quota.days_between(request.query.get("since"), request.query.get("until"), today)
    except ValueError as exc:
        raise InvalidRequest(str(exc), loc=("query",)) from None
