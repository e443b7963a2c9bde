"""The console's HTML, rendered on the server from plain values. Pure.

Every value from the ledger or a request goes through :func:`e` (HTML-escaped, quotes too)
or is a number formatted here; no page has a script or a style attribute, so the
Content-Security-Policy forbids both. Elements the tests read carry ``data-`` attributes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from decimal import Decimal
from html import escape
from typing import NamedTuple

from gateway.console.charts import DayBar, spend_chart
from gateway.prices import Pricing
from gateway.spend import Budget, hit_ratio
from gateway.teams import LIMIT_NAMES, KeyRecord, Team

STYLESHEET = "/console/static/console.css"
PER_MINUTE = ("requests_per_minute", "images_per_minute", "texts_per_minute",
              "upstream_calls_per_minute")  # fmt: skip
ROTATE_GRACE = (("0", "at once"), ("3600", "in 1 hour"), ("86400", "in 24 hours"))
USAGE_COLUMNS = ("requests", "images", "texts", "hits", "misses", "billed_tokens",
                 "saved_tokens", "rejected")  # fmt: skip


def e(value: object) -> str:
    return escape(str(value), quote=True)


def num(value: int | None) -> str:
    return "unlimited" if value is None else f"{value:,}"


def when(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(seconds))


def money(amount: Decimal, pricing: Pricing) -> str:
    return f'<span class="money">{amount:,.2f} {e(pricing.currency)}</span>'


def label(name: str) -> str:
    return name.replace("_", " ")


class Who(NamedTuple):
    """Who is signed in, for the page's header."""

    title: str  # the team's name, or "Operator"
    csrf: str  # the session's CSRF token, for the sign-out form


def layout(title: str, body: str, who: Who | None = None) -> str:
    signed_in = ""
    if who is not None:
        signed_in = (
            f'<span class="who">{e(who.title)}</span>'
            f'<form method="post" action="/console/sign-out" class="inline">{hidden(who.csrf)}'
            '<button type="submit" class="link">Sign out</button></form>'
        )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="referrer" content="no-referrer">'
        f'<title>{e(title)} · nomic-gateway</title><link rel="stylesheet" href="{STYLESHEET}">'
        '</head><body><header class="top"><a class="brand" href="/console">nomic-gateway</a>'
        f"<nav>{signed_in}</nav></header><main>{body}</main></body></html>"
    )


def hidden(csrf: str) -> str:
    return f'<input type="hidden" name="csrf" value="{e(csrf)}">'


def sign_in_page(csrf: str, message: str | None = None, admin_on: bool = True) -> str:
    who = "a team key (nk-...) or the admin token" if admin_on else "a team key (nk-...)"
    note = f'<p class="notice" role="alert">{e(message)}</p>' if message else ""
    body = (
        '<section class="card narrow"><h1>Sign in</h1>'
        f"<p>See spend against budgets. Sign in with {who}; it is sent once, over this form, "
        "and kept nowhere in the browser but as a signed session cookie.</p>"
        f'{note}<form method="post" action="/console/sign-in" autocomplete="off">'
        f"{hidden(csrf)}"
        '<label for="secret">Key or token</label>'
        '<input id="secret" name="secret" type="password" required autocomplete="off" '
        'spellcheck="false">'
        '<button type="submit">Sign in</button></form></section>'
    )
    return layout("Sign in", body)


def error_page(status: int, message: str) -> str:
    body = (
        f'<section class="card narrow"><h1>{status}</h1><p data-error>{e(message)}</p>'
        '<p><a href="/console">Back to the console</a></p></section>'
    )
    return layout(f"Error {status}", body)


# --- a team's page -----------------------------------------------------------------------


class Breakdown(NamedTuple):
    """Usage split by something: kind (inputs only), or tag (tokens too)."""

    title: str
    column: str
    rows: Sequence[tuple[str, int, int | None, int | None]]  # name, inputs, billed, saved
    note: str = ""


class TeamView(NamedTuple):
    team: Team
    days: int  # the chart's span: 30 or 90
    rows: Sequence[dict[str, object]]  # the span's usage by day, days with activity only
    bars: Sequence[DayBar]  # every day of the span
    totals: dict[str, int]  # the span's
    today: Budget
    month: Budget
    keys: Sequence[KeyRecord]
    pricing: Pricing | None
    breakdowns: Sequence[Breakdown]
    now: float


def budget_card(title: str, budget: Budget, pricing: Pricing | None, field: str) -> str:
    cost = f" ({money(pricing.cost(budget.used), pricing)})" if pricing is not None else ""
    meter = ""
    if budget.limit is not None:
        meter = (
            f'<meter min="0" max="{budget.limit}" value="{min(budget.used, budget.limit)}" '
            f'low="{budget.limit * 0.75:.0f}" high="{budget.limit * 0.9:.0f}" '
            f'optimum="0">{budget.share or 0:.0%}</meter>'
        )
    runs_out = budget.runs_out
    if budget.limit is None:
        pace = "No budget: unlimited."
    elif runs_out is None:
        pace = "At this pace it lasts the period."
    elif budget.left == 0:
        pace = "Used up: requests that need Nomic are refused until the period ends."
    else:
        pace = f"At this pace it runs out {when(runs_out)}."
    return (
        f'<section class="card budget" data-budget="{e(field)}"><h2>{e(title)}</h2>'
        f'<p class="figure"><span data-field="{e(field)}">{num(budget.used)}</span> tokens billed'
        f"{cost}</p>{meter}"
        f"<p>Budget <span data-limit>{num(budget.limit)}</span>; left "
        f"<span data-left>{num(budget.left)}</span>.</p>"
        f'<p class="pace">{e(pace)}</p></section>'
    )


def usage_table(rows: Sequence[dict[str, object]], pricing: Pricing | None) -> str:
    head = "".join(f"<th>{e(label(c))}</th>" for c in USAGE_COLUMNS)
    if pricing is not None:
        head += "<th>billed cost</th><th>saved cost</th>"
    body = []
    for row in reversed(rows):
        cells = "".join(f'<td data-field="{c}">{num(_int(row.get(c)))}</td>' for c in USAGE_COLUMNS)
        if pricing is not None:
            for field in ("billed", "saved"):
                amount = pricing.cost(_int(row.get(f"{field}_tokens")))
                cells += f'<td data-field="{field}_cost">{money(amount, pricing)}</td>'
        body.append(
            f'<tr data-day="{e(row["day"])}"><th scope="row">{e(row["day"])}</th>{cells}</tr>'
        )
    empty = f'<tr><td colspan="{len(USAGE_COLUMNS) + 1}">No usage in these days.</td></tr>'
    return (
        '<div class="scroll"><table id="days"><thead><tr><th>day (UTC)</th>'
        f"{head}</tr></thead><tbody>{''.join(body) or empty}</tbody></table></div>"
    )


def _int(value: object) -> int:
    return value if isinstance(value, int) else 0


def breakdown_section(breakdown: Breakdown, pricing: Pricing | None) -> str:
    """A table of inputs (and tokens, where the ledger splits them) by kind, or by tag."""
    with_tokens = _with_tokens(breakdown)
    rows = []
    for name, inputs, billed, saved in breakdown.rows:
        tokens = ""
        if with_tokens:
            tokens = "".join(
                f'<td data-field="{field}_tokens">{num(value or 0)}</td>'
                for field, value in (("billed", billed), ("saved", saved))
            )
            if pricing is not None:
                tokens += "".join(
                    f'<td data-field="{field}_cost">{money(pricing.cost(value or 0), pricing)}</td>'
                    for field, value in (("billed", billed), ("saved", saved))
                )
        rows.append(f'<tr data-{e(breakdown.column)}="{e(name)}"><th scope="row">{e(name)}</th>'
                    f"<td>{num(inputs)}</td>{tokens}</tr>")  # fmt: skip
    head = "<th>tokens billed</th><th>tokens saved</th>" if with_tokens else ""
    if with_tokens and pricing is not None:
        head += "<th>cost billed</th><th>saved</th>"
    note = f'<p class="note">{e(breakdown.note)}</p>' if breakdown.note else ""
    return (
        f'<section class="{"card wide" if with_tokens else "card"}"><h2>{e(breakdown.title)}</h2>'
        '<div class="scroll"><table>'
        f"<thead><tr><th>{e(breakdown.column)}</th><th>inputs</th>{head}</tr></thead>"
        f"<tbody>{''.join(rows) or _nothing(2 + 4 * with_tokens)}</tbody></table></div>"
        f"{note}</section>"
    )


def _nothing(columns: int) -> str:
    return f'<tr><td colspan="{columns}">Nothing in these days.</td></tr>'


def _with_tokens(breakdown: Breakdown) -> bool:
    """Whether the ledger splits tokens this way (by tag: yes; by kind: no)."""
    return any(row[2] is not None for row in breakdown.rows)


def totals_list(pairs: Sequence[tuple[str, str, str]]) -> str:
    """Figures as a definition list: (label, data-total name, shown value already safe)."""
    items = "".join(
        f'<div><dt>{e(name)}</dt><dd data-total="{e(field)}">{shown}</dd></div>'
        for name, field, shown in pairs
    )
    return f'<dl class="totals">{items}</dl>'


def limits_section(team: Team, rejected: int, days: int) -> str:
    rows = "".join(
        f'<tr><th scope="row">{e(label(name))}</th>'
        f'<td data-limit="{name}">{num(getattr(team.limits, name))}</td></tr>'
        for name in PER_MINUTE
    )
    hits = "count toward them" if team.count_hits else "do not count toward them"
    return (
        '<section class="card"><h2>Per-minute limits</h2><table class="pairs">'
        f"<tbody>{rows}</tbody></table><p>Cache hits {hits}. Requests refused for a limit or "
        f'budget in the last {days} days: <span data-field="rejected">{num(rejected)}</span>.'
        "</p></section>"
    )


def keys_section(keys: Sequence[KeyRecord], now: float) -> str:
    rows = "".join(
        f'<tr data-key="{e(k.id)}"><td><code>{e(k.id)}</code></td>'
        f"<td><code>{e(k.prefix)}…</code></td><td>{when(k.created)}</td>"
        f"<td>{when(k.last_used)}</td><td>{key_state(k, now)}</td></tr>"
        for k in keys
    )
    return (
        '<section class="card wide"><h2>Keys</h2><div class="scroll"><table><thead><tr>'
        "<th>id</th><th>prefix</th><th>created</th><th>last used</th><th>state</th></tr>"
        f"</thead><tbody>{rows}</tbody></table></div></section>"
    )


def key_state(key: KeyRecord, now: float) -> str:
    if key.revoked is not None:
        return f"revoked {when(key.revoked)}"
    if key.expires is not None:
        return (
            f"expired {when(key.expires)}" if key.expires <= now else f"expires {when(key.expires)}"
        )
    return "live"


def team_page(view: TeamView, csrf: str) -> str:
    team, totals, pricing = view.team, view.totals, view.pricing
    ratio = hit_ratio(totals)
    narrow = [b for b in view.breakdowns if not _with_tokens(b)]  # beside the limits' card
    wide = [b for b in view.breakdowns if _with_tokens(b)]
    span = "".join(
        f'<a href="/console/team?days={d}"{" aria-current=page" if d == view.days else ""}>'
        f"{d} days</a>"
        for d in (30, 90)
    )
    figures = [
        ("tokens billed", "billed_tokens", num(totals["billed_tokens"])),
        ("tokens saved by the cache", "saved_tokens", num(totals["saved_tokens"])),
    ]
    if pricing is not None:
        figures += [
            ("cost billed", "billed_cost", money(pricing.cost(totals["billed_tokens"]), pricing)),
            (
                "saved by the cache",
                "saved_cost",
                money(pricing.cost(totals["saved_tokens"]), pricing),
            ),
        ]
    figures += [
        ("hit ratio", "hit_ratio", "—" if ratio is None else f"{ratio:.1%}"),
        ("requests", "requests", num(totals["requests"])),
        ("inputs", "inputs", num(totals["images"] + totals["texts"])),
    ]
    chart = (
        f'<section class="card wide"><h2>Tokens per day</h2><nav class="span">{span}</nav>'
        f"{spend_chart(view.bars, f'Tokens billed and saved per day, last {view.days} days')}"
        '<p class="legend"><span class="swatch billed"></span>billed '
        '<span class="swatch saved"></span>saved by the cache</p>'
        f"{totals_list(figures)}</section>"
    )
    body = (
        f'<h1 data-team="{e(team.id)}">{e(team.name)} <small>{e(team.id)}</small></h1>'
        '<div class="grid">'
        f"{budget_card('Today', view.today, pricing, 'billed_today')}"
        f"{budget_card('This month', view.month, pricing, 'billed_month')}"
        f"{chart}"
        f"{''.join(breakdown_section(b, pricing) for b in narrow)}"
        f"{limits_section(team, totals['rejected'], view.days)}"
        f"{''.join(breakdown_section(b, pricing) for b in wide)}"
        f"{keys_section(view.keys, view.now)}"
        f'<section class="card wide"><h2>Day by day, last {view.days} days</h2>'
        f"{usage_table(view.rows, pricing)}</section></div>"
    )
    return layout(team.name, body, Who(team.name, csrf))


# --- the operator's page -------------------------------------------------------------------


class TeamSpend(NamedTuple):
    team: Team
    month: Budget
    today: Budget
    saved_month: int
    keys: Sequence[KeyRecord]


class TagSpend(NamedTuple):
    """One tag of a team, this month."""

    team: str
    tag: str
    billed: int
    saved: int


class OperatorView(NamedTuple):
    teams: Sequence[TeamSpend]  # by spend this month, most first
    tags: Sequence[TagSpend]  # the teams' tags by spend this month, most first
    process: Sequence[tuple[str, Sequence[tuple[str, str]]]]  # what this process counted
    pricing: Pricing | None
    month: str
    now: float


def operator_page(view: OperatorView, csrf: str) -> str:
    pricing = view.pricing
    billed = sum(t.month.used for t in view.teams)
    saved = sum(t.saved_month for t in view.teams)
    figures = [("teams", "teams", num(len(view.teams))),
               ("tokens billed", "billed_tokens", num(billed)),
               ("tokens saved by the cache", "saved_tokens", num(saved))]  # fmt: skip
    if pricing is not None:
        figures += [
            ("cost billed", "billed_cost", money(pricing.cost(billed), pricing)),
            ("saved by the cache", "saved_cost", money(pricing.cost(saved), pricing)),
        ]
    summary = (
        f'<section class="card wide"><h2>This month ({e(view.month)}), all teams</h2>'
        f"{totals_list(figures)}"
        f'<form method="get" action="/console/operator/chargeback.csv" class="row">'
        f'<label for="month">Chargeback (CSV, one row per team)</label>'
        f'<input id="month" name="month" value="{e(view.month)}" pattern="[0-9]{{4}}-[0-9]{{2}}" '
        'size="8"><label><input type="checkbox" name="by" value="tag"> per tag</label>'
        '<button type="submit">Download</button></form></section>'
    )
    money_head = "<th>cost</th>" if pricing is not None else ""
    rows = []
    for spent in view.teams:
        t = spent.team
        cost = f"<td>{money(pricing.cost(spent.month.used), pricing)}</td>" if pricing else ""
        rows.append(
            f'<tr data-team="{e(t.id)}"><th scope="row"><a href="#team-{e(t.id)}">{e(t.name)}</a>'
            f" <small>{e(t.id)}</small></th>"
            f'<td data-field="billed_month">{num(spent.month.used)}</td>{cost}'
            f"<td>{_bar(spent.month)}</td>"
            f"<td>{num(spent.today.used)} / {num(spent.today.limit)}</td>"
            f"<td>{num(spent.saved_month)}</td></tr>"
        )
    table = (
        '<section class="card wide"><h2>Teams by spend this month</h2><div class="scroll">'
        f"<table><thead><tr><th>team</th><th>tokens billed</th>{money_head}"
        "<th>monthly budget</th><th>today / daily budget</th><th>tokens saved</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></div></section>"
    )
    process = "".join(
        f'<section class="card"><h2>{e(title)}</h2><table class="pairs"><tbody>'
        + "".join(f'<tr><th scope="row">{e(k)}</th><td>{e(v)}</td></tr>' for k, v in pairs)
        + "</tbody></table></section>"
        for title, pairs in view.process
    )
    manage = "".join(_manage_team(spent, csrf, view.now) for spent in view.teams)
    body = (
        '<h1>Operator</h1><div class="grid">'
        f"{summary}{table}{_tags_table(view.tags, pricing)}{process}{_create_team(csrf)}</div>"
        f'<h2 class="section">Teams</h2><div class="grid">{manage}</div>'
    )
    return layout("Operator", body, Who("Operator", csrf))


def _tags_table(tags: Sequence[TagSpend], pricing: Pricing | None) -> str:
    head = "<th>team</th><th>tag</th><th>tokens billed</th><th>tokens saved</th>"
    if pricing is not None:
        head += "<th>cost billed</th><th>saved</th>"
    rows = []
    for spent in tags:
        cells = f'<td data-field="billed_tokens">{num(spent.billed)}</td>'
        cells += f'<td data-field="saved_tokens">{num(spent.saved)}</td>'
        if pricing is not None:
            cells += (
                f'<td data-field="billed_cost">{money(pricing.cost(spent.billed), pricing)}</td>'
            )
            cells += f'<td data-field="saved_cost">{money(pricing.cost(spent.saved), pricing)}</td>'
        rows.append(
            f'<tr data-team="{e(spent.team)}" data-tag="{e(spent.tag)}"><td>{e(spent.team)}</td>'
            f'<th scope="row">{e(spent.tag)}</th>{cells}</tr>'
        )
    return (
        '<section class="card wide" id="tags"><h2>Tags by spend this month</h2>'
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows) or _nothing(6)}</tbody></table></div>"
        '<p class="note">The jobs requests named (X-Gateway-Tag), most spent first; the '
        "chargeback CSV per tag lists every one.</p></section>"
    )


def _bar(budget: Budget) -> str:
    if budget.limit is None:
        return "unlimited"
    return (
        f'<meter min="0" max="{budget.limit}" value="{min(budget.used, budget.limit)}" '
        f'low="{budget.limit * 0.75:.0f}" high="{budget.limit * 0.9:.0f}" optimum="0">'
        f"{budget.share or 0:.0%}</meter> {budget.share or 0:.0%} of {num(budget.limit)}"
    )


def _limit_inputs(team: Team | None, prefix: str) -> str:
    fields = []
    for name in LIMIT_NAMES:
        value = getattr(team.limits, name) if team is not None else None
        shown = "" if value is None else str(value)
        fields.append(
            f'<label for="{prefix}-{name}">{e(label(name))}</label>'
            f'<input id="{prefix}-{name}" name="{name}" value="{shown}" inputmode="numeric" '
            'placeholder="unlimited">'
        )
    return "".join(fields)


def _create_team(csrf: str) -> str:
    return (
        '<section class="card"><h2>Create a team</h2>'
        f'<form method="post" action="/console/operator/teams" class="fields">{hidden(csrf)}'
        '<label for="new-id">id</label><input id="new-id" name="id" required '
        'pattern="[a-z0-9][a-z0-9_\\-]{0,62}" spellcheck="false">'
        '<label for="new-name">name</label><input id="new-name" name="name">'
        f'{_limit_inputs(None, "new")}<button type="submit">Create</button></form></section>'
    )


def _manage_team(spent: TeamSpend, csrf: str, now: float) -> str:
    team = spent.team
    base = f"/console/operator/teams/{e(team.id)}"
    keys = []
    for key in spent.keys:
        actions = ""
        if key.usable(now):
            options = "".join(f'<option value="{v}">{e(t)}</option>' for v, t in ROTATE_GRACE)
            actions = (
                f'<form method="post" action="{base}/keys/{e(key.id)}/rotate" class="inline">'
                f'{hidden(csrf)}<label class="sr" for="grace-{e(key.id)}">old key stops</label>'
                f'<select id="grace-{e(key.id)}" name="grace_seconds">{options}</select>'
                '<button type="submit" data-action="rotate">Rotate</button></form>'
                f'<form method="post" action="{base}/keys/{e(key.id)}/revoke" class="inline">'
                f'{hidden(csrf)}<button type="submit" class="danger" data-action="revoke">'
                "Revoke</button></form>"
            )
        keys.append(
            f'<tr data-key="{e(key.id)}"><td><code>{e(key.id)}</code></td>'
            f"<td><code>{e(key.prefix)}…</code></td><td>{when(key.last_used)}</td>"
            f"<td>{key_state(key, now)}</td><td>{actions}</td></tr>"
        )
    return (
        f'<section class="card wide" id="team-{e(team.id)}" data-manage="{e(team.id)}">'
        f"<h3>{e(team.name)} <small>{e(team.id)}</small></h3>"
        '<div class="scroll"><table><thead><tr><th>key</th><th>prefix</th><th>last used</th>'
        f"<th>state</th><th></th></tr></thead><tbody>{''.join(keys)}</tbody></table></div>"
        f'<form method="post" action="{base}/keys" class="inline">{hidden(csrf)}'
        '<button type="submit" data-action="new-key">New key</button></form>'
        f"<details><summary>Limits</summary>"
        f'<form method="post" action="{base}/limits" class="fields">{hidden(csrf)}'
        f'<label for="{e(team.id)}-name">name</label>'
        f'<input id="{e(team.id)}-name" name="name" value="{e(team.name)}">'
        f'{_limit_inputs(team, e(team.id))}<button type="submit">Save</button></form>'
        "</details></section>"
    )


def new_key_page(team: Team, record: KeyRecord, key: str, csrf: str, note: str) -> str:
    body = (
        '<section class="card narrow"><h1>New key</h1>'
        f"<p>A new key of <strong>{e(team.name)}</strong> (<code>{e(record.id)}</code>). "
        "It is shown this once: copy it now and hand it over; the gateway keeps only its "
        f'hash.</p><p><code class="secret" data-new-key>{e(key)}</code></p>'
        f'<p>{e(note)}</p><p><a href="/console/operator#team-{e(team.id)}">Done</a></p></section>'
    )
    return layout("New key", body, Who("Operator", csrf))
