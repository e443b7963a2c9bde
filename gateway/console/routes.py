"""The console's aiohttp application, mounted at ``/console``.

Sign-in takes a team key or the admin token once, from a password field, and answers with
a session cookie (HttpOnly, SameSite=Strict, Path=/console, Secure when the request came over
TLS, or over https to a trusted proxy); see :mod:`gateway.console.sessions`. Each page load
checks the session again: a team's key must still be live in the ledger (read there, not
from the API's key cache: a revoked key's sessions end at the next load), the operator's
admin token must still be the process's, and the session not signed out (sign-out is kept
in the store until the session's expiry). Every form carries the session's CSRF token; the
sign-in form one made from a nonce cookie. Sign-in attempts are limited per client address
in the store, all replicas together (:data:`SIGN_INS_PER_MINUTE`).

Every answer carries a Content-Security-Policy that allows no script and no inline style,
and errors are HTML pages: the console never answers in Nomic's JSON.
"""

from __future__ import annotations

import hmac
import io
import ipaddress
import logging
import math
import re
import time
import urllib.parse
from collections.abc import Sequence
from importlib import resources
from typing import Any, NamedTuple

from aiohttp import web
from multidict import MultiDict, MultiDictProxy

from gateway import metrics, spend
from gateway.accounts import tag_usage_rows, usage_rows
from gateway.appkeys import ACCOUNTS, LEDGER, SETTINGS, STORE
from gateway.console import pages, sessions
from gateway.console.charts import DayBar
from gateway.console.sessions import Role, Session
from gateway.errors import GatewayError, NotFound
from gateway.middlewares import Handler
from gateway.prices import Pricing
from gateway.routes import admin
from gateway.routes.user import DAYS_READ_AT_ONCE, DAYS_READ_PER_SECOND
from gateway.store import StoreError
from gateway.store.base import Ledger
from gateway.store.memory import MemoryStore
from gateway.store.sqlite import SqliteStore
from gateway.teams import LIMIT_NAMES, InvalidTeam, KeyRecord, Team, key_hash, well_formed

log = logging.getLogger(__name__)

SECRET_NAME = "console-sessions"  # noqa: S105 (its name in the store, not the secret)
SIGN_INS_PER_MINUTE = 10  # per client address (an IPv6 address: per /64), all replicas
SIGN_IN_BURST = 10
SIGN_IN_FORM_SECONDS = 3600  # how long a sign-in form's nonce cookie lasts
FORM_BYTES = 64 * 1024  # a posted form's bytes, read as they come, whatever the headers say
FORM_FIELDS = 64
SPAN_DAYS = 90  # what a team's page reads; it shows the last 30 or 90
TAG_ROWS_SHOWN = 50  # the operator's page: the teams' tags that spent most this month
CSP = (
    "default-src 'self'; script-src 'none'; object-src 'none'; style-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
BREAKER_STATES = ("closed", "half-open", "open")


class _Secret:
    """The shared secret, read from the store once (when it first answers)."""

    value: bytes | None = None


SECRET = web.AppKey("console_secret", _Secret)


class Signed(NamedTuple):
    """A page load's checked session."""

    session: Session
    secret: bytes
    team: Team | None  # a team's session: its team as the ledger has it now
    keys: list[KeyRecord]  # ... and its keys

    @property
    def csrf(self) -> str:
        return sessions.csrf_token(self.secret, self.session.nonce)


def create_console() -> web.Application:
    console = web.Application(middlewares=[_guard])
    console[SECRET] = _Secret()
    router = console.router
    router.add_get("", index)
    router.add_get("/", index)
    router.add_post("/sign-in", sign_in)
    router.add_post("/sign-out", sign_out)
    router.add_get("/team", team_page)
    router.add_get("/operator", operator_page)
    router.add_get("/operator/chargeback.csv", chargeback_csv)
    router.add_post("/operator/teams", create_team)
    router.add_post("/operator/teams/{team}/limits", change_limits)
    router.add_post("/operator/teams/{team}/keys", create_key)
    router.add_post("/operator/teams/{team}/keys/{key_id}/rotate", rotate_key)
    router.add_post("/operator/teams/{team}/keys/{key_id}/revoke", revoke_key)
    router.add_get("/static/console.css", stylesheet)
    router.add_route("*", "/{tail:.*}", not_found)  # last: what no route above serves
    return console


# --- answers, errors and headers ---------------------------------------------------------


def html(body: str, status: int = 200) -> web.Response:
    return web.Response(text=body, status=status, content_type="text/html", charset="utf-8")


def see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def error(status: int, message: str, retry_after: float | None = None) -> web.Response:
    response = html(pages.error_page(status, message), status)
    if retry_after is not None:
        response.headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    return response


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Errors as HTML pages, and the security headers on every answer. What no handler
    expected is a 500 logged by its type and route only: its message may quote the request."""
    try:
        response = await handler(request)
    except GatewayError as exc:
        if exc.status >= 500:
            log.warning("%s %s: %s", request.method, request.path, exc.msg)
        response = error(exc.status, exc.msg, exc.retry_after)
    except InvalidTeam as exc:
        response = error(422, str(exc))
    except StoreError as exc:
        log.warning("%s %s: %s", request.method, request.path, exc)
        response = error(503, "The store is unavailable; try again shortly.", 1)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = error(exc.status, exc.reason)
        if exc.status in (413, 415):
            response.force_close()  # the body left unread: not read to drain it either
    except Exception as exc:  # any other failure: a page, never a traceback
        log.error("%s %s failed: %s", request.method, _route(request), type(exc).__name__)
        response = error(500, "The console failed; nothing more is known here.")
    response.headers.update(PAGE_HEADERS)
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def _route(request: web.Request) -> str:
    """The route's pattern (``/console/operator/teams/{team}/limits``), never the path sent."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "(no route)"


async def not_found(request: web.Request) -> web.Response:
    return error(404, "There is no such page in the console.")


async def stylesheet(request: web.Request) -> web.Response:
    css = resources.files("gateway.console").joinpath("static/console.css").read_text()
    response = web.Response(text=css, content_type="text/css", charset="utf-8")
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


# --- sessions ----------------------------------------------------------------------------


async def _secret(request: web.Request) -> bytes:
    held = request.app[SECRET]
    if held.value is None:
        held.value = await request.config_dict[LEDGER].shared_secret(SECRET_NAME)
    return held.value


def _over_tls(request: web.Request) -> bool:
    if request.secure:
        return True
    if not request.config_dict[SETTINGS].trust_forwarded:
        return False
    proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return proto == "https"


def client_address(request: web.Request) -> str:
    """Whom sign-in attempts are counted against: the peer, or with trusted forwarding the
    address the proxy in front names last; an IPv6 address by its /64."""
    address = request.remote or ""
    if request.config_dict[SETTINGS].trust_forwarded:
        forwarded = request.headers.get("X-Forwarded-For", "").split(",")[-1].strip()
        address = forwarded or address
    return address_bucket(address)


def address_bucket(address: str) -> str:
    """The bucket of an address as a proxy may write it: ``a.b.c.d``, ``a.b.c.d:port``,
    ``v6``, ``[v6]`` or ``[v6]:port``. IPv6 by its /64, an IPv4-mapped one as its IPv4;
    what does not parse is a bucket of its own (its first 64 characters)."""
    host = address
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return "unparsed:" + address[:64]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def _set_cookie(
    request: web.Request, response: web.StreamResponse, name: str, value: str, max_age: float
) -> None:
    response.set_cookie(
        name, value, max_age=int(max_age), path="/console", httponly=True, samesite="Strict",
        secure=_over_tls(request),
    )  # fmt: skip


def _end_session(response: web.StreamResponse) -> None:
    response.del_cookie(sessions.COOKIE, path="/console")


# A signed-out session is kept in the store until it would have expired, as a rate (the one
# store-wide record with a lifetime every ledger has, the sign-in limit's): one unit a second
# under the session's nonce, all its remaining seconds spent at sign-out (of a rate that holds
# a second more: spending exactly what it holds can be refused by a rounding of the TAT's
# floats). The rate is not full again until the session's expiry; a page load asks to spend
# nothing of a rate that holds nothing, which is refused exactly while it is not full.


def _signed_out_rate(session: Session) -> str:
    return f"console-signed-out:{session.nonce}"


async def _sign_out_on_store(ledger: Ledger, session: Session, now: float) -> None:
    seconds = max(1, math.ceil(session.expires - now))
    await ledger.take_usage_reads(_signed_out_rate(session), seconds, 1, seconds + 1)


async def _signed_out(ledger: Ledger, session: Session) -> bool:
    return await ledger.take_usage_reads(_signed_out_rate(session), 0, 1, 0) > 0


async def _checked(request: web.Request) -> Signed | None:
    """The request's session if it is signed, unexpired and still good: the operator's
    admin token unchanged; a team's key live and its team there."""
    secret = await _secret(request)
    now = time.time()
    session = sessions.unseal(secret, request.cookies.get(sessions.COOKIE), now)
    if session is None or await _signed_out(request.config_dict[LEDGER], session):
        return None
    if session.role == "operator":
        token = request.config_dict[SETTINGS].admin_token
        return (
            Signed(session, secret, None, [])
            if sessions.operator_still(secret, session, token)
            else None
        )
    ledger = request.config_dict[LEDGER]
    team = await ledger.get_team(session.team)
    if team is None:
        return None
    keys = await ledger.list_keys(team.id)
    live = any(k.id == session.key_id and k.usable(now) and k.created >= team.created for k in keys)
    return Signed(session, secret, team, keys) if live else None


class _SignInAgain(Exception):
    """No good session: a page load goes to the sign-in form, a form post is refused."""


async def _require(request: web.Request, role: Role) -> Signed:
    signed = await _checked(request)
    if signed is None or signed.session.role != role:
        raise _SignInAgain
    return signed


async def _posted(request: web.Request) -> MultiDictProxy[str]:
    """The form posted: ``application/x-www-form-urlencoded`` in UTF-8 (what the console's
    pages send), not compressed, of at most :data:`FORM_BYTES` read (a larger
    Content-Length: refused before reading) and :data:`FORM_FIELDS` fields. Anything else
    is a 4xx page that quotes nothing of the body."""
    if any(value.strip().lower() != "identity" for value in request.headers.getall(
        "Content-Encoding", []
    )):  # fmt: skip
        raise web.HTTPUnsupportedMediaType(reason="A console form is never compressed.")
    charset = (request.charset or "utf-8").lower()
    if request.content_type != "application/x-www-form-urlencoded" or charset not in (
        "utf-8", "utf8"
    ):  # fmt: skip
        raise web.HTTPUnsupportedMediaType(reason="A console form is URL-encoded UTF-8.")
    if request.content_length is not None and request.content_length > FORM_BYTES:
        raise web.HTTPRequestEntityTooLarge(max_size=FORM_BYTES, actual_size=request.content_length)
    body = bytearray()
    while chunk := await request.content.read(FORM_BYTES + 1 - len(body)):
        body += chunk
        if len(body) > FORM_BYTES:
            raise web.HTTPRequestEntityTooLarge(max_size=FORM_BYTES, actual_size=len(body))
    try:
        fields = urllib.parse.parse_qsl(
            body.decode(), keep_blank_values=True, errors="strict", max_num_fields=FORM_FIELDS
        )
    except (ValueError, UnicodeError):
        raise web.HTTPBadRequest(reason="The form could not be read.") from None
    return MultiDictProxy(MultiDict(fields))


async def _form(request: web.Request, signed: Signed) -> MultiDictProxy[str]:
    """The posted form, once its CSRF token is the session's; raises 403 if not."""
    form = await _posted(request)
    if not sessions.csrf_matches(signed.secret, signed.session.nonce, form.get("csrf")):
        raise _Forbidden
    return form


class _Forbidden(Exception):
    """A form post without the session's CSRF token: made by another site, or stale."""


def _page(handler: Any) -> Any:
    """Turn a handler's :class:`_SignInAgain` and :class:`_Forbidden` into answers."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            result: web.StreamResponse = await handler(request)
            return result
        except _SignInAgain:
            if request.method == "GET":
                response: web.StreamResponse = see_other("/console")
            else:
                response = error(403, "You are signed out: sign in again.")
            if sessions.COOKIE in request.cookies:
                _end_session(response)
            return response
        except _Forbidden:
            return error(403, "This form was not sent by the console's own page; nothing was done.")

    wrapped.__doc__ = handler.__doc__
    return wrapped


# --- signing in and out --------------------------------------------------------------------


async def index(request: web.Request) -> web.StreamResponse:
    """The signed-in page, or the sign-in form."""
    signed = await _checked(request)
    if signed is not None:
        return see_other(f"/console/{signed.session.role}")
    return await _sign_in_form(request)


async def _sign_in_form(
    request: web.Request, message: str | None = None, status: int = 200
) -> web.Response:
    secret = await _secret(request)
    now = time.time()
    cookie = request.cookies.get(sessions.SIGN_IN_COOKIE, "")
    nonce = sessions.sign_in_nonce(secret, cookie, now)
    if nonce is None:
        nonce, cookie = sessions.new_sign_in(secret, now, SIGN_IN_FORM_SECONDS)
    admin_on = request.config_dict[SETTINGS].admin_token is not None
    response = html(
        pages.sign_in_page(sessions.csrf_token(secret, nonce), message, admin_on), status
    )
    _set_cookie(request, response, sessions.SIGN_IN_COOKIE, cookie, SIGN_IN_FORM_SECONDS)
    if sessions.COOKIE in request.cookies:
        _end_session(response)
    return response


async def sign_in(request: web.Request) -> web.StreamResponse:
    secret = await _secret(request)
    form = await _posted(request)
    nonce = sessions.sign_in_nonce(
        secret, request.cookies.get(sessions.SIGN_IN_COOKIE), time.time()
    )
    if not sessions.csrf_matches(secret, nonce, form.get("csrf")):
        return await _sign_in_form(request, "The sign-in form had expired: sign in again.", 403)
    ledger = request.config_dict[LEDGER]
    wait_ms = await ledger.take_usage_reads(  # a rate kept in the store, under no team's id
        f"sign-in:{client_address(request)}", 1, SIGN_INS_PER_MINUTE / 60, SIGN_IN_BURST
    )
    if wait_ms:
        response = await _sign_in_form(
            request,
            f"Too many sign-in attempts from your address: wait {math.ceil(wait_ms / 1000)} s.",
            429,
        )
        response.headers["Retry-After"] = str(max(1, math.ceil(wait_ms / 1000)))
        return response
    given = form.get("secret")
    session = await _session_for(request, given.strip() if isinstance(given, str) else "", secret)
    if session is None:
        return await _sign_in_form(
            request, "That is neither a live team key nor the admin token.", 401
        )
    response = see_other(f"/console/{session.role}")
    lifetime = request.config_dict[SETTINGS].console_session_seconds
    _set_cookie(request, response, sessions.COOKIE, sessions.seal(secret, session), lifetime)
    response.del_cookie(sessions.SIGN_IN_COOKIE, path="/console")
    return response


async def _session_for(request: web.Request, given: str, secret: bytes) -> Session | None:
    """The session that ``given`` (a team key, or the admin token) opens; None if none."""
    settings = request.config_dict[SETTINGS]
    expires = time.time() + settings.console_session_seconds
    nonce = sessions.new_nonce()
    if well_formed(given):
        ledger: Ledger = request.config_dict[LEDGER]
        record = await ledger.get_key(key_hash(given))
        team = await ledger.get_team(record.team) if record is not None else None
        if (
            record is None
            or team is None
            or not record.usable(time.time())
            or record.created < team.created
        ):
            return None
        return Session("team", team.id, record.id, "", nonce, expires)
    token = settings.admin_token
    if token is not None and hmac.compare_digest(given.encode(), token.encode()):
        return Session("operator", "", "", sessions.admin_token_mac(secret, token), nonce, expires)
    return None


@_page
async def sign_out(request: web.Request) -> web.StreamResponse:
    signed = await _checked(request)
    if signed is None:
        raise _SignInAgain
    await _form(request, signed)
    await _sign_out_on_store(request.config_dict[LEDGER], signed.session, time.time())
    response = see_other("/console")
    _end_session(response)
    return response


# --- a team's page -------------------------------------------------------------------------


@_page
async def team_page(request: web.Request) -> web.StreamResponse:
    signed = await _require(request, "team")
    team = signed.team
    assert team is not None
    ledger = request.config_dict[LEDGER]
    days = 90 if request.query.get("days") == "90" else 30
    wait_ms = await ledger.take_usage_reads(  # by day, and by tag for the days shown
        team.id, SPAN_DAYS + days, DAYS_READ_PER_SECOND, DAYS_READ_AT_ONCE
    )
    if wait_ms:
        return error(
            429, "Usage is being read too often for this team: try again shortly.", wait_ms / 1000
        )
    await request.config_dict[ACCOUNTS].flush()  # this process's latest counts
    now = time.time()
    span = spend.days_back(now, SPAN_DAYS)
    rows = await usage_rows(ledger, [team.id], span)
    by_day = {str(row["day"]): row for row in rows}
    shown = span[-days:]
    shown_rows = [by_day[day] for day in shown if day in by_day]
    month = spend.month_of(now)
    month_rows = [row for day, row in by_day.items() if day.startswith(month)]
    totals = spend.totals(shown_rows)
    tagged = spend.tag_totals(await tag_usage_rows(ledger, [team.id], shown))
    view = pages.TeamView(
        team=team,
        days=days,
        rows=shown_rows,
        bars=[
            DayBar(
                day,
                _field(by_day.get(day), "billed_tokens"),
                _field(by_day.get(day), "saved_tokens"),
            )
            for day in shown
        ],
        totals=totals,
        today=spend.day_budget(team, _field(by_day.get(span[-1]), "billed_tokens"), now),
        month=spend.month_budget(team, spend.totals(month_rows)["billed_tokens"], now),
        keys=signed.keys,
        pricing=request.config_dict[SETTINGS].pricing,
        breakdowns=[_by_kind(totals), _by_tag(tagged, days)],
        now=now,
    )
    return html(pages.team_page(view, signed.csrf))


def _field(row: dict[str, object] | None, field: str) -> int:
    value = (row or {}).get(field, 0)
    return value if isinstance(value, int) else 0


def _by_kind(totals: dict[str, int]) -> pages.Breakdown:
    return pages.Breakdown(
        "By kind",
        "kind",
        [("images and URLs", totals["images"], None, None), ("texts", totals["texts"], None, None)],
        "The ledger counts inputs by kind, and tokens per team and day in all (not by kind or "
        "model): the tokens of these days are in the chart above.",
    )


def _by_tag(tagged: list[tuple[str, dict[str, int]]], days: int) -> pages.Breakdown:
    return pages.Breakdown(
        f"By tag, last {days} days",
        "tag",
        [
            (tag, t["images"] + t["texts"], t["billed_tokens"], t["saved_tokens"])
            for tag, t in tagged
        ],
        "A request names its job in the X-Gateway-Tag header (or, on /v1/embeddings, its user "
        "field); untagged: none named; other: the tags of a day past the most a team may have.",
    )


# --- the operator's page -----------------------------------------------------------------


@_page
async def operator_page(request: web.Request) -> web.StreamResponse:
    signed = await _require(request, "operator")
    now = time.time()
    await request.config_dict[ACCOUNTS].flush()
    ledger = request.config_dict[LEDGER]
    teams = await _teams_by_spend(ledger, now)
    view = pages.OperatorView(
        teams=teams,
        tags=await _tags_by_spend(ledger, [spent.team.id for spent in teams], now),
        process=await _process_figures(request),
        pricing=request.config_dict[SETTINGS].pricing,
        month=spend.month_of(now),
        now=now,
    )
    return html(pages.operator_page(view, signed.csrf))


async def _teams_by_spend(ledger: Ledger, now: float) -> list[pages.TeamSpend]:
    today = spend.days_back(now, 1)[0]
    found = []
    for team in await ledger.list_teams():
        rows = await usage_rows(ledger, [team.id], _month_so_far(now))
        month = spend.totals(rows)
        today_billed = sum(_field(row, "billed_tokens") for row in rows if row["day"] == today)
        found.append(pages.TeamSpend(
            team,
            spend.month_budget(team, month["billed_tokens"], now),
            spend.day_budget(team, today_billed, now),
            month["saved_tokens"],
            await ledger.list_keys(team.id),
        ))  # fmt: skip
    return sorted(found, key=lambda spent: (-spent.month.used, spent.team.id))


async def _tags_by_spend(ledger: Ledger, team_ids: list[str], now: float) -> list[pages.TagSpend]:
    """The teams' tags this month, most tokens billed first (the first TAG_ROWS_SHOWN)."""
    found = [
        pages.TagSpend(team_id, tag, summed["billed_tokens"], summed["saved_tokens"])
        for team_id in team_ids
        for tag, summed in spend.tag_totals(
            await tag_usage_rows(ledger, [team_id], _month_so_far(now))
        )
    ]
    return sorted(found, key=lambda t: (-t.billed, t.team, t.tag))[:TAG_ROWS_SHOWN]


def _month_so_far(now: float) -> list[str]:
    today = spend.days_back(now, 1)[0]
    return [day for day in spend.month_days(spend.month_of(now)) if day <= today]


def _sampled(metric: Any, **match: str) -> dict[str, float]:
    """A metric's values in this process, by its labels' values (joined with " ")."""
    values: dict[str, float] = {}
    for family in metric.collect():
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            if all(sample.labels.get(k) == v for k, v in match.items()):
                name = " ".join(v for k, v in sample.labels.items() if k not in match)
                values[name] = values.get(name, 0.0) + sample.value
    return values


async def _process_figures(request: web.Request) -> list[tuple[str, Sequence[tuple[str, str]]]]:
    items: dict[str, float] = {}
    for labels, count in _sampled(metrics.ITEMS).items():
        outcome = labels.rsplit(" ", 1)[-1]
        items[outcome] = items.get(outcome, 0.0) + count
    hits, misses = items.get("hit", 0.0), items.get("miss", 0.0)
    ratio = f"{hits / (hits + misses):.1%}" if hits + misses else "—"
    cache = [
        ("inputs answered from the cache", f"{hits:,.0f}"),
        ("inputs fetched from Nomic", f"{misses:,.0f}"),
        ("hit ratio", ratio),
        ("shared with a concurrent request", f"{items.get('coalesced', 0.0):,.0f}"),
        ("stale URL entries served", f"{items.get('stale', 0.0):,.0f}"),
        *await _store_size(request),
    ]
    calls = _sampled(metrics.UPSTREAM_CALLS)
    breaker = int(sum(_sampled(metrics.BREAKER_STATE).values()))
    upstream = [
        ("calls", f"{sum(calls.values()):,.0f}"),
        *((f"answered {outcome}", f"{count:,.0f}") for outcome, count in sorted(calls.items())),
        ("Nomic's 429s", f"{calls.get('429', 0.0):,.0f}"),
        ("retries", f"{sum(_sampled(metrics.UPSTREAM_RETRIES).values()):,.0f}"),
        ("breaker", BREAKER_STATES[breaker] if 0 <= breaker < 3 else str(breaker)),
        ("misses queued now", f"{sum(_sampled(metrics.UPSTREAM_QUEUE).values()):,.0f}"),
    ]
    note = "this process, since it started"
    return [(f"Cache ({note})", cache), (f"Upstream ({note})", upstream)]


async def _store_size(request: web.Request) -> list[tuple[str, str]]:
    store = request.config_dict[STORE]
    if isinstance(store, MemoryStore):
        return [("entries in memory", f"{len(store):,}"), ("bytes", f"{store.used_bytes:,}")]
    if isinstance(store, SqliteStore):
        return [("bytes on disk", f"{await store.used_bytes():,}")]
    return [("entries", "in Redis: see its INFO")]


@_page
async def chargeback_csv(request: web.Request) -> web.StreamResponse:
    await _require(request, "operator")
    try:
        month, days = spend.requested_month(request.query.get("month"), time.time())
    except ValueError:
        return error(422, "The month must be YYYY-MM.")
    by_tag = request.query.get("by") == "tag"
    await request.config_dict[ACCOUNTS].flush()
    rows = await admin.chargeback_rows(request, month, days, by_tag=by_tag)
    pricing: Pricing | None = request.config_dict[SETTINGS].pricing
    named = spend.CHARGEBACK_TAG_COLUMNS if by_tag else spend.CHARGEBACK_COLUMNS
    columns = [*named, *(spend.MONEY_COLUMNS if pricing else ())]
    out = io.StringIO()
    spend.write_csv(out, columns, rows)
    return web.Response(
        text=out.getvalue(), content_type="text/csv", charset="utf-8",
        headers={"Content-Disposition": f'attachment; filename="chargeback-{month}.csv"'},
    )  # fmt: skip


# --- the operator's forms ----------------------------------------------------------------


def _whole(text: str) -> int | None:
    """A whole number written in ASCII digits (at most 16); None if ``text`` is not one."""
    return int(text) if re.fullmatch(r"[0-9]{1,16}", text) else None


def _limits(form: MultiDictProxy[str]) -> dict[str, int | None]:
    """The limits a form gives: a blank field is unlimited."""
    limits: dict[str, int | None] = {}
    for name in LIMIT_NAMES:
        text = form.get(name)
        if not isinstance(text, str):
            continue
        text = text.strip().replace(",", "").replace("_", "")
        if not text:
            limits[name] = None
            continue
        limits[name] = _whole(text)
        if limits[name] is None:
            raise InvalidTeam(
                f"{name.replace('_', ' ')} must be a whole number, or blank for unlimited"
            )
    return limits


def _text(form: MultiDictProxy[str], name: str) -> str | None:
    value = form.get(name)
    return value.strip() if isinstance(value, str) and value.strip() else None


@_page
async def create_team(request: web.Request) -> web.StreamResponse:
    signed = await _require(request, "operator")
    form = await _form(request, signed)
    data: dict[str, Any] = {"id": _text(form, "id"), "limits": _limits(form)}
    if _text(form, "name") is not None:
        data["name"] = _text(form, "name")
    team = await admin.add_team(request.config_dict[LEDGER], data)
    return see_other(f"/console/operator#team-{team.id}")


@_page
async def change_limits(request: web.Request) -> web.StreamResponse:
    signed = await _require(request, "operator")
    form = await _form(request, signed)
    data: dict[str, Any] = {"limits": _limits(form)}
    if _text(form, "name") is not None:
        data["name"] = _text(form, "name")
    team = await admin.patch_team(request.config_dict[LEDGER], request.match_info["team"], data)
    return see_other(f"/console/operator#team-{team.id}")


async def _team(request: web.Request) -> Team:
    team_id = request.match_info["team"]
    team = await request.config_dict[LEDGER].get_team(team_id)
    if team is None:
        raise NotFound(f"there is no team {team_id!r}")
    return team


@_page
async def create_key(request: web.Request) -> web.StreamResponse:
    signed = await _require(request, "operator")
    await _form(request, signed)
    team = await _team(request)
    record, key = await admin.add_key(request.config_dict[LEDGER], team)
    note = "It works from now on."
    return html(pages.new_key_page(team, record, key, signed.csrf, note), 201)


@_page
async def rotate_key(request: web.Request) -> web.StreamResponse:
    signed = await _require(request, "operator")
    form = await _form(request, signed)
    grace_text = _text(form, "grace_seconds") or "0"
    grace: object = _whole(grace_text)  # None: admin.rotate refuses it, as it says
    team = await _team(request)
    record, key, old = await admin.rotate(
        request.config_dict[LEDGER], team, request.match_info["key_id"], grace
    )
    if grace == 0:
        note = f"The old key {old.id} no longer works."
    else:
        note = f"The old key {old.id} works until {pages.when(old.expires)}."
    return html(pages.new_key_page(team, record, key, signed.csrf, note), 201)


@_page
async def revoke_key(request: web.Request) -> web.StreamResponse:
    signed = await _require(request, "operator")
    await _form(request, signed)
    team = await _team(request)
    await admin.revoke(request.config_dict[LEDGER], team, request.match_info["key_id"])
    return see_other(f"/console/operator#team-{team.id}")
