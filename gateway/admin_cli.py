"""``nomic-gateway teams|keys|usage``: the admin API from the command line.

Pointed at a gateway by ``--url`` or ``GATEWAY_URL``; the admin token comes from
``GATEWAY_ADMIN_TOKEN`` only (never a flag, so it stays out of shell history and ``ps``).
Tables for people by default, ``--json`` and ``--csv`` for scripts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any

from gateway.spend import CHARGEBACK_COLUMNS, CHARGEBACK_TAG_COLUMNS, write_csv
from gateway.teams import LIMIT_NAMES, SWITCHES, key_hash, well_formed

USAGE_COLUMNS = ("team", "day", "requests", "images", "texts", "hits", "misses",
                 "billed_tokens", "saved_tokens", "upstream_errors", "rejected")  # fmt: skip
TAG_USAGE_COLUMNS = (*USAGE_COLUMNS[:2], "tag", *USAGE_COLUMNS[2:])
MONEY_COLUMNS = ("billed_cost", "saved_cost", "currency")  # with the gateway's prices set
TEAM_COLUMNS = ("id", "name", *LIMIT_NAMES, *SWITCHES)
KEY_COLUMNS = ("id", "prefix", "created", "last_used", "expires", "revoked")


class CliError(Exception):
    """Printed as one line; the command exits 1."""


def add_commands(commands: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)  # accepted after every command
    common.add_argument(
        "--url",
        default=os.environ.get("GATEWAY_URL", "http://127.0.0.1:8080"),
        help="the gateway (env GATEWAY_URL; default http://127.0.0.1:8080)",
    )
    formats = common.add_mutually_exclusive_group()
    formats.add_argument("--json", action="store_true", help="print JSON")
    formats.add_argument("--csv", action="store_true", help="print CSV")

    def leaf(group: Any, name: str, text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = group.add_parser(name, help=text, parents=[common])
        return parser

    teams = commands.add_parser("teams", help="manage teams and their limits")
    teams_actions = teams.add_subparsers(dest="action", required=True)
    leaf(teams_actions, "list", "list teams")
    leaf(teams_actions, "show", "show one team").add_argument("team")
    create = leaf(teams_actions, "create", "create a team")
    create.add_argument("team")
    _team_fields(create)
    update = leaf(teams_actions, "update", "change a team's name, limits or count-hits")
    update.add_argument("team")
    _team_fields(update)
    text = "delete a team (revokes its keys, keeps its usage)"
    leaf(teams_actions, "delete", text).add_argument("team")

    keys = commands.add_parser("keys", help="manage team keys")
    keys_actions = keys.add_subparsers(dest="action", required=True)
    leaf(keys_actions, "list", "list a team's keys").add_argument("team")
    leaf(keys_actions, "create", "make a key (shown once)").add_argument("team")
    revoke = leaf(keys_actions, "revoke", "revoke a key")
    revoke.add_argument("team")
    revoke.add_argument("key_id")
    rotate = leaf(keys_actions, "rotate", "replace a key; the old one works for a grace period")
    rotate.add_argument("team")
    rotate.add_argument("key_id")
    rotate.add_argument("--grace-seconds", type=int, help="default 86400 (24 hours)")
    keys_actions.add_parser("hash", help="print the sha256 of a key read from stdin")

    usage = commands.add_parser("usage", help="usage per team and UTC day", parents=[common])
    usage.add_argument("--team")
    usage.add_argument("--since", help="YYYY-MM-DD (default: six days before --until)")
    usage.add_argument("--until", help="YYYY-MM-DD (default: today, UTC)")
    by_tag = "one row per team, day and tag (X-Gateway-Tag) instead of per team and day"
    usage.add_argument("--by-tag", action="store_true", help=by_tag)
    text = "one row per team of a month's usage, budget and cost (CSV with --csv)"
    chargeback = commands.add_parser("chargeback", help=text, parents=[common])
    chargeback.add_argument("--month", help="YYYY-MM (default: this month, UTC)")
    chargeback.add_argument("--by-tag", action="store_true", help="one row per team and tag")


def _team_fields(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name")
    for limit in LIMIT_NAMES:
        parser.add_argument(f"--{limit.replace('_', '-')}", metavar="N|none",
                            help=f"{limit.replace('_', ' ')}; none: unlimited")  # fmt: skip
    parser.add_argument("--count-hits", choices=("yes", "no"),
                        help="whether cache hits count toward the per-minute limits")  # fmt: skip
    parser.add_argument("--private-cache", choices=("yes", "no"),
                        help="yes: the team's embeddings are cached apart from everyone "
                             "else's (no shared hits, more store memory)")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    try:
        if args.command == "keys" and args.action == "hash":
            return _print_hash()
        client = AdminClient(args.url, os.environ.get("GATEWAY_ADMIN_TOKEN", ""))
        result, columns = _call(client, args)
    except CliError as exc:
        print(f"nomic-gateway: {exc}", file=sys.stderr)
        return 1
    _print(result, columns, args)
    return 0


def _print_hash() -> int:
    key = sys.stdin.readline().strip()
    if not well_formed(key):
        raise CliError("stdin does not hold a team key (nk- and 43 characters)")
    print(key_hash(key))
    return 0


def _call(client: AdminClient, args: argparse.Namespace) -> tuple[Any, Sequence[str]]:
    team = f"/admin/teams/{urllib.parse.quote(getattr(args, 'team', '') or '', safe='')}"
    by = {"by": "tag"} if getattr(args, "by_tag", False) else {}
    if args.command == "usage":
        query = {k: v for k in ("team", "since", "until") if (v := getattr(args, k))}
        path = "/admin/usage?" + urllib.parse.urlencode({**query, **by})
        columns = TAG_USAGE_COLUMNS if by else USAGE_COLUMNS
        return _priced(client.request("GET", path)["usage"], columns)
    if args.command == "chargeback":
        query = {"month": args.month or "", **by}
        path = "/admin/chargeback?" + urllib.parse.urlencode(query)
        columns = CHARGEBACK_TAG_COLUMNS if by else CHARGEBACK_COLUMNS
        return _priced(client.request("GET", path)["chargeback"], columns)
    if args.command == "teams":
        if args.action == "list":
            return client.request("GET", "/admin/teams")["teams"], TEAM_COLUMNS
        if args.action == "show":
            return [client.request("GET", team)], TEAM_COLUMNS
        if args.action == "delete":
            client.request("DELETE", team)
            return [], ()
        body = _team_body(args)
        if args.action == "create":
            return [client.request("POST", "/admin/teams", {"id": args.team, **body})], TEAM_COLUMNS
        return [client.request("PATCH", team, body)], TEAM_COLUMNS
    if args.action == "list":
        return client.request("GET", f"{team}/keys")["keys"], KEY_COLUMNS
    if args.action == "create":
        return [client.request("POST", f"{team}/keys")], ("id", "key", "prefix", "created")
    key = f"{team}/keys/{urllib.parse.quote(args.key_id, safe='')}"
    if args.action == "revoke":
        client.request("DELETE", key)
        return [], ()
    body = {} if args.grace_seconds is None else {"grace_seconds": args.grace_seconds}
    rotated = client.request("POST", f"{key}/rotate", body)
    return [rotated], ("id", "key", "replaces", "old_key_expires")


def _priced(rows: list[dict[str, Any]], columns: Sequence[str]) -> tuple[Any, Sequence[str]]:
    """``rows`` and their columns, with the money columns when the gateway priced them."""
    priced = any("billed_cost" in row for row in rows)
    return rows, (*columns, *MONEY_COLUMNS) if priced else columns


def _team_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if args.name is not None:
        body["name"] = args.name
    limits: dict[str, int | None] = {}
    for limit in LIMIT_NAMES:
        value = getattr(args, limit)
        if value is not None:
            limits[limit] = _limit(limit, value)
    if limits:
        body["limits"] = limits
    for switch in SWITCHES:
        if getattr(args, switch) is not None:
            body[switch] = getattr(args, switch) == "yes"
    return body


def _limit(name: str, value: str) -> int | None:
    if value.lower() == "none":
        return None
    try:
        return int(value.replace("_", ""))
    except ValueError:
        raise CliError(f"--{name.replace('_', '-')} takes a whole number or none") from None


class AdminClient:
    def __init__(self, url: str, token: str) -> None:
        if not token:
            raise CliError("set GATEWAY_ADMIN_TOKEN to the gateway's admin token")
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise CliError(f"--url must be an http:// or https:// URL, not {url!r}")
        self._url = url.rstrip("/")
        self._token = token

    def request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self._url + path, data=data, method=method)  # noqa: S310 (http(s) checked above)
        request.add_header("Authorization", f"Bearer {self._token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
                raw = response.read()
        except urllib.error.HTTPError as exc:
            body = exc.read()
            if exc.code == 404 and _no_such_route(body):
                raise CliError(
                    f"the admin API is off on the gateway at {self._url}: start the gateway "
                    "with GATEWAY_ADMIN_TOKEN set (24 characters or more) to turn it on"
                ) from None
            raise CliError(f"HTTP {exc.code}: {_message(body)}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise CliError(f"cannot reach the gateway at {self._url}: {exc}") from None
        return json.loads(raw) if raw else None


def _no_such_route(body: bytes) -> bool:
    """Whether a 404 says the path does not exist (no admin API), not that a team or key
    does not."""
    try:
        return bool(json.loads(body)["detail"][0]["type"] == "http_404")
    except (ValueError, KeyError, TypeError, IndexError):
        return False


def _message(body: bytes) -> str:
    try:
        return "; ".join(str(detail["msg"]) for detail in json.loads(body)["detail"])
    except (ValueError, KeyError, TypeError):
        return body.decode(errors="replace")[:200]


def _print(rows: list[dict[str, Any]], columns: Sequence[str], args: argparse.Namespace) -> None:
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    if not columns:
        return
    flat = [_flatten(row) for row in rows]
    if args.csv:
        write_csv(sys.stdout, columns, flat)
        return
    cells = [[_cell(row.get(column)) for column in columns] for row in flat]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    for line in [list(columns), *cells]:
        print(
            "  ".join(
                value.ljust(width) for value, width in zip(line, widths, strict=True)
            ).rstrip()
        )


def _flatten(row: dict[str, Any]) -> dict[str, Any]:
    limits = row.get("limits")
    return {**row, **limits} if isinstance(limits, dict) else row


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value > 1e9:  # a timestamp
        return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(value))
    return str(value)
