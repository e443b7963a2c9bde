"""The admin API under ``/admin/``: teams, their keys and limits, usage.

Every call needs ``Authorization: Bearer $GATEWAY_ADMIN_TOKEN``; without that setting the
admin API does not exist (404). The calls docs/teams-and-quotas.md lists (creating teams, making
and revoking keys, reading usage) keep their paths and shapes, so scripts written against one
version keep working. What each call does to the ledger is a function of its own here
(:func:`add_team`, :func:`add_key`, ...), which the console's forms call too.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import orjson
from aiohttp import web

from gateway import spend, teams, unattributed
from gateway.accounts import tag_usage_rows, usage_rows
from gateway.appkeys import ACCOUNTS, LEDGER, SETTINGS
from gateway.auth import bearer_matches
from gateway.errors import Conflict, InvalidRequest, NotFound, StoreUnavailable, Unauthorized
from gateway.middlewares import Handler
from gateway.routes.user import by_tag, requested_days
from gateway.store import StoreError
from gateway.store.base import Ledger
from gateway.teams import SWITCHES, InvalidTeam, KeyRecord, Limits, Team

DEFAULT_GRACE_SECONDS = 24 * 3600
MAX_GRACE_SECONDS = 30 * 24 * 3600


def create_admin(token: str) -> web.Application:
    admin = web.Application(middlewares=[_require(token)])
    admin.router.add_post("/teams", create_team)
    admin.router.add_get("/teams", list_teams)
    admin.router.add_get("/teams/{team}", show_team)
    admin.router.add_patch("/teams/{team}", update_team)
    admin.router.add_delete("/teams/{team}", delete_team)
    admin.router.add_post("/teams/{team}/keys", create_key)
    admin.router.add_get("/teams/{team}/keys", list_keys)
    admin.router.add_delete("/teams/{team}/keys/{key_id}", revoke_key)
    admin.router.add_post("/teams/{team}/keys/{key_id}/rotate", rotate_key)
    admin.router.add_get("/usage", usage)
    admin.router.add_get("/chargeback", chargeback)
    return admin


def _require(token: str) -> Any:
    @web.middleware
    async def require_admin_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not bearer_matches(request.headers.get("Authorization"), token):
            raise Unauthorized("the admin API needs Authorization: Bearer <GATEWAY_ADMIN_TOKEN>")
        try:
            return await handler(request)
        except InvalidTeam as exc:
            raise InvalidRequest(str(exc)) from None
        except StoreError as exc:
            raise StoreUnavailable(
                "the store is unavailable; retry shortly", retry_after=1
            ) from exc

    return require_admin_token


def _ledger(request: web.Request) -> Ledger:
    return request.config_dict[LEDGER]


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        data = orjson.loads(await request.read())  # nesting past 1,024 levels: a ValueError
    except ValueError:
        raise InvalidRequest("the body is not JSON") from None
    if not isinstance(data, dict):
        raise InvalidRequest("the body must be a JSON object")
    return data


async def _team(request: web.Request) -> Team:
    team = await _ledger(request).get_team(request.match_info["team"])
    if team is None:
        raise NotFound(f"no team {request.match_info['team']!r}", loc=("path", "team"))
    return team


def _check_fields(data: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise InvalidRequest(f"unknown field {unknown[0][:40]!r}", loc=("body", unknown[0][:40]))


def _switches(data: dict[str, Any], base: Team) -> dict[str, Any]:
    """The team's yes/no settings given in ``data``, else ``base``'s."""
    return {
        name: teams.check_switch(name, data.get(name, getattr(base, name))) for name in SWITCHES
    }


def _limits(data: dict[str, Any]) -> Any:
    limits = data.get("limits", {})
    return {} if limits is None else limits


async def create_team(request: web.Request) -> web.Response:
    team = await add_team(_ledger(request), await _body(request))
    return web.json_response(team.to_json(), status=201)


async def add_team(ledger: Ledger, data: dict[str, Any]) -> Team:
    """Create the team ``data`` describes (as ``POST /admin/teams`` takes it)."""
    _check_fields(data, {"id", "name", "limits", *SWITCHES})
    team_id = teams.check_new_team_id(data.get("id"))
    team = Team(
        team_id,
        teams.check_name(data.get("name", team_id)),
        Limits.from_json(_limits(data)),
        created=time.time(),
        incarnation=teams.new_incarnation(),
    )
    team = dataclasses.replace(team, **_switches(data, team))  # given, or Team's defaults
    if not await ledger.create_team(team):
        raise Conflict(f"team {team_id!r} exists", loc=("body", "id"))
    return team


async def list_teams(request: web.Request) -> web.Response:
    return web.json_response({"teams": [t.to_json() for t in await _ledger(request).list_teams()]})


async def show_team(request: web.Request) -> web.Response:
    return web.json_response((await _team(request)).to_json())


async def update_team(request: web.Request) -> web.Response:
    """One atomic change of the team as stored: two PATCHes at once both land, and a PATCH
    after a DELETE is a 404 (it never brings the team back)."""
    data = await _body(request)
    updated = await patch_team(_ledger(request), request.match_info["team"], data)
    return web.json_response(updated.to_json())


async def patch_team(ledger: Ledger, team_id: str, data: dict[str, Any]) -> Team:
    """Change the team as a PATCH body says (limits merged into the team's)."""
    _check_fields(data, {"name", "limits", *SWITCHES})
    updated = await ledger.change_team(team_id, lambda team: _patched(team, data))
    if updated is None:
        raise NotFound(f"no team {team_id!r}", loc=("path", "team"))
    return updated


def _patched(team: Team, data: dict[str, Any]) -> Team:
    """``team`` with what a PATCH body gives: its limits merge into the team's, the other
    fields replace theirs."""
    return dataclasses.replace(
        team,
        name=teams.check_name(data.get("name", team.name)),
        limits=Limits.from_json(_limits(data), base=team.limits),
        **_switches(data, team),
    )


async def delete_team(request: web.Request) -> web.Response:
    team = await _team(request)
    ledger = _ledger(request)
    now = time.time()
    await ledger.delete_team(team.id)  # first: a key made meanwhile belongs to no team
    for record in await ledger.list_keys(team.id):
        await ledger.narrow_key(record, revoked=now)
    return web.Response(status=204)


async def create_key(request: web.Request) -> web.Response:
    record, key = await add_key(_ledger(request), await _team(request))
    return web.json_response({"id": record.id, "key": key, **record.public()}, status=201)


async def add_key(ledger: Ledger, team: Team) -> tuple[KeyRecord, str]:
    """A new key of ``team``: its record, and the key (to be shown once)."""
    key = teams.new_key()
    record = teams.record_for(key, team.id, time.time())
    await ledger.put_key(record)
    return record, key


async def list_keys(request: web.Request) -> web.Response:
    team = await _team(request)
    records = await _ledger(request).list_keys(team.id)
    return web.json_response({"keys": [record.public() for record in records]})


async def find_key(ledger: Ledger, team: Team, key_id: str) -> KeyRecord:
    for record in await ledger.list_keys(team.id):
        if record.id == key_id:
            return record
    raise NotFound(f"team {team.id!r} has no key {key_id!r}", loc=("path", "key_id"))


async def revoke_key(request: web.Request) -> web.Response:
    await revoke(_ledger(request), await _team(request), request.match_info["key_id"])
    return web.Response(status=204)


async def revoke(ledger: Ledger, team: Team, key_id: str) -> None:
    record = await find_key(ledger, team, key_id)
    await ledger.narrow_key(record, revoked=time.time())


async def rotate_key(request: web.Request) -> web.Response:
    """A new key for the team; the old one keeps working for ``grace_seconds`` (default 24 h)."""
    data = await _body(request)  # read before the key: what is read next is acted on at once
    _check_fields(data, {"grace_seconds"})
    grace = data.get("grace_seconds", DEFAULT_GRACE_SECONDS)
    team = await _team(request)
    record, key, old_expires = await rotate(
        _ledger(request), team, request.match_info["key_id"], grace
    )
    body = {"id": record.id, "key": key, **record.public(), "replaces": old_expires.id,
            "old_key_expires": old_expires.expires}  # fmt: skip
    return web.json_response(body, status=201)


async def rotate(
    ledger: Ledger, team: Team, key_id: str, grace: object
) -> tuple[KeyRecord, str, KeyRecord]:
    """A new key in place of ``key_id``, which works ``grace`` seconds more: the new key's
    record, the key (to be shown once), and the old key's record as narrowed."""
    if type(grace) is not int or not 0 <= grace <= MAX_GRACE_SECONDS:
        raise InvalidRequest(
            f"grace_seconds must be a whole number from 0 to {MAX_GRACE_SECONDS}",
            loc=("body", "grace_seconds"),
        )
    old = await find_key(ledger, team, key_id)
    now = time.time()
    if not old.usable(now):
        raise Conflict(f"key {old.id!r} is revoked or expired", loc=("path", "key_id"))
    key = teams.new_key()
    record = teams.record_for(key, team.id, now)
    await ledger.put_key(record)
    await ledger.narrow_key(old, expires=now + grace)
    return record, key, dataclasses.replace(old, expires=now + grace)


async def usage(request: web.Request) -> web.Response:
    days = requested_days(request)
    read = tag_usage_rows if by_tag(request) else usage_rows
    await request.config_dict[ACCOUNTS].flush()  # this process's latest counts
    team_id = request.query.get("team")
    ledger = _ledger(request)
    if team_id is not None:  # a deleted team's usage is kept, and shown
        try:
            team_ids = [teams.check_team_id(team_id)]
        except InvalidTeam as exc:
            raise InvalidRequest(str(exc), loc=("query", "team")) from None
    else:
        team_ids = [team.id for team in await ledger.list_teams()]
        if unattributed.TEAM_ID not in team_ids:  # what no team is charged: shown if any
            team_ids.append(unattributed.TEAM_ID)
    rows = await read(ledger, team_ids, days)
    pricing = request.config_dict[SETTINGS].pricing
    return web.json_response(
        {"usage": rows if pricing is None else list(map(pricing.priced, rows))}
    )


async def chargeback(request: web.Request) -> web.Response:
    """``GET /admin/chargeback?month=YYYY-MM`` (default: this month): one row per team with
    its month's usage, monthly budget and, with prices set, its cost; with ``by=tag``, one
    row per team and tag. The ``unattributed`` account comes last, so the rows add up to
    what Nomic billed."""
    try:
        month, days = spend.requested_month(request.query.get("month"), time.time())
    except ValueError:
        raise InvalidRequest("month must be YYYY-MM", loc=("query", "month")) from None
    tagged = by_tag(request, plain="team")
    await request.config_dict[ACCOUNTS].flush()
    rows = await chargeback_rows(request, month, days, by_tag=tagged)
    return web.json_response({"chargeback": rows})


async def chargeback_rows(
    request: web.Request, month: str, days: list[str], *, by_tag: bool = False
) -> list[dict[str, object]]:
    """Every team's row of ``month``'s chargeback (``by_tag``: a row per team and tag), by
    team id, then those of teams deleted since that have usage in ``month`` (named as
    deleted: their usage was billed all the same), then the ``unattributed`` account's."""
    ledger = _ledger(request)
    pricing = request.config_dict[SETTINGS].pricing
    teams = await ledger.list_teams()
    current = {team.id for team in teams}
    former = [dataclasses.replace(team, name=f"{team.name} (deleted)")
              for team in await ledger.former_teams() if team.id not in current]  # fmt: skip
    deleted = {team.id for team in former}
    accounts: list[tuple[str, Team | None]] = [(t.id, t) for t in [*teams, *former]]
    accounts.append((unattributed.TEAM_ID, None))
    rows = []
    for team_id, team in accounts:
        if not by_tag:
            used = await usage_rows(ledger, [team_id], days)
            if used or team_id not in deleted:  # a team deleted before the month: no row
                rows.append(spend.chargeback_row(month, team_id, team, used, pricing))
            continue
        for tag, summed in spend.tag_totals(await tag_usage_rows(ledger, [team_id], days)):
            rows.append(spend.chargeback_row(month, team_id, team, [summed], pricing, tag))
    return rows
