"""The admin API under ``/admin/``: teams, their keys and limits, usage.

Every call needs ``Authorization: Bearer $GATEWAY_ADMIN_TOKEN``; without that setting the
admin API does not exist (404). The calls docs/teams-and-quotas.md lists (creating teams, making
and revoking keys, reading usage) keep their paths and shapes, so scripts written against one
version keep working.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import orjson
from aiohttp import web

from gateway import teams
from gateway.accounts import usage_rows
from gateway.appkeys import ACCOUNTS, LEDGER
from gateway.auth import bearer_matches
from gateway.errors import Conflict, InvalidRequest, NotFound, StoreUnavailable, Unauthorized
from gateway.middlewares import Handler
from gateway.routes.user import requested_days
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
        raise InvalidRequest(f"unknown field {unknown[0]!r}", loc=("body", unknown[0]))


def _switches(data: dict[str, Any], base: Team) -> dict[str, Any]:
    """The team's yes/no settings given in ``data``, else ``base``'s."""
    return {
        name: teams.check_switch(name, data.get(name, getattr(base, name))) for name in SWITCHES
    }


def _limits(data: dict[str, Any]) -> Any:
    limits = data.get("limits", {})
    return {} if limits is None else limits


async def create_team(request: web.Request) -> web.Response:
    data = await _body(request)
    _check_fields(data, {"id", "name", "limits", *SWITCHES})
    team_id = teams.check_team_id(data.get("id"))
    team = Team(
        team_id,
        teams.check_name(data.get("name", team_id)),
        Limits.from_json(_limits(data)),
        created=time.time(),
    )
    team = dataclasses.replace(team, **_switches(data, team))  # given, or Team's defaults
    if not await _ledger(request).create_team(team):
        raise Conflict(f"team {team_id!r} exists", loc=("body", "id"))
    return web.json_response(team.to_json(), status=201)


async def list_teams(request: web.Request) -> web.Response:
    return web.json_response({"teams": [t.to_json() for t in await _ledger(request).list_teams()]})


async def show_team(request: web.Request) -> web.Response:
    return web.json_response((await _team(request)).to_json())


async def update_team(request: web.Request) -> web.Response:
    """One atomic change of the team as stored: two PATCHes at once both land, and a PATCH
    after a DELETE is a 404 (it never brings the team back)."""
    data = await _body(request)
    _check_fields(data, {"name", "limits", *SWITCHES})
    team_id = request.match_info["team"]
    updated = await _ledger(request).change_team(team_id, lambda team: _patched(team, data))
    if updated is None:
        raise NotFound(f"no team {team_id!r}", loc=("path", "team"))
    return web.json_response(updated.to_json())


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
    team = await _team(request)
    key = teams.new_key()
    record = teams.record_for(key, team.id, time.time())
    await _ledger(request).put_key(record)
    return web.json_response({"id": record.id, "key": key, **record.public()}, status=201)


async def list_keys(request: web.Request) -> web.Response:
    team = await _team(request)
    records = await _ledger(request).list_keys(team.id)
    return web.json_response({"keys": [record.public() for record in records]})


async def _key(request: web.Request, team: Team) -> KeyRecord:
    key_id = request.match_info["key_id"]
    for record in await _ledger(request).list_keys(team.id):
        if record.id == key_id:
            return record
    raise NotFound(f"team {team.id!r} has no key {key_id!r}", loc=("path", "key_id"))


async def revoke_key(request: web.Request) -> web.Response:
    team = await _team(request)
    record = await _key(request, team)
    await _ledger(request).narrow_key(record, revoked=time.time())
    return web.Response(status=204)


async def rotate_key(request: web.Request) -> web.Response:
    """A new key for the team; the old one keeps working for ``grace_seconds`` (default 24 h)."""
    data = await _body(request)  # read before the key: what is read next is acted on at once
    _check_fields(data, {"grace_seconds"})
    team = await _team(request)
    old = await _key(request, team)
    grace = data.get("grace_seconds", DEFAULT_GRACE_SECONDS)
    if type(grace) is not int or not 0 <= grace <= MAX_GRACE_SECONDS:
        raise InvalidRequest(
            f"grace_seconds must be a whole number from 0 to {MAX_GRACE_SECONDS}",
            loc=("body", "grace_seconds"),
        )
    now = time.time()
    if not old.usable(now):
        raise Conflict(f"key {old.id!r} is revoked or expired", loc=("path", "key_id"))
    key = teams.new_key()
    record = teams.record_for(key, team.id, now)
    ledger = _ledger(request)
    await ledger.put_key(record)
    await ledger.narrow_key(old, expires=now + grace)
    body = {"id": record.id, "key": key, **record.public(), "replaces": old.id,
            "old_key_expires": now + grace}  # fmt: skip
    return web.json_response(body, status=201)


async def usage(request: web.Request) -> web.Response:
    days = requested_days(request)
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
    return web.json_response({"usage": await usage_rows(ledger, team_ids, days)})
