"""The declarative teams file (``GATEWAY_TEAMS_FILE``): teams, limits and key hashes in TOML,
applied at start-up for companies that keep their configuration in git.

```toml
[teams.research]
name = "Research"
count_hits = true                    # cache hits count toward the per-minute limits
private_cache = false                # true: the team's embeddings are cached apart

[teams.research.limits]              # a limit left out is unlimited
requests_per_minute = 600
texts_per_minute = 10_000
tokens_per_day = 1_000_000

[[teams.research.keys]]
id = "ci"                            # optional
sha256 = "…"                         # printed by `nomic-gateway keys hash`
```

Teams in the file are created or updated (name, limits, count_hits, private_cache); teams and
keys not in the file are left alone, and a key revoked through the admin API stays revoked.
"""

from __future__ import annotations

import dataclasses
import time
import tomllib
from typing import Any

from gateway import teams
from gateway.store.base import Ledger
from gateway.teams import InvalidTeam, KeyRecord, Limits, Team


class TeamsFileError(ValueError):
    """The teams file cannot be used; the message names the file and the entry."""


@dataclasses.dataclass(frozen=True)
class Declared:
    team: Team
    keys: list[tuple[str, str]]  # (key id, sha256)


def load(path: str) -> list[Declared]:
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise TeamsFileError(f"{path}: {exc}") from None
    declared = data.get("teams", {})
    if not isinstance(declared, dict) or set(data) - {"teams"}:
        raise TeamsFileError(f"{path}: expected only [teams.<id>] tables")
    try:
        return [_team(team_id, entry) for team_id, entry in declared.items()]
    except InvalidTeam as exc:
        raise TeamsFileError(f"{path}: {exc}") from None


def _team(team_id: str, entry: Any) -> Declared:
    teams.check_new_team_id(team_id)
    if not isinstance(entry, dict):
        raise InvalidTeam(f"teams.{team_id} must be a table")
    unknown = set(entry) - {"name", "limits", "keys", *teams.SWITCHES}
    if unknown:
        raise InvalidTeam(f"teams.{team_id}: unknown field {sorted(unknown)[0]!r}")
    switches = {name: entry[name] for name in teams.SWITCHES if name in entry}
    try:
        for name, value in switches.items():
            teams.check_switch(name, value)
        limits = Limits.from_json(entry.get("limits", {}))
        name = teams.check_name(entry.get("name", team_id))
    except InvalidTeam as exc:
        raise InvalidTeam(f"teams.{team_id}: {exc}") from None
    keys = []
    for index, key in enumerate(entry.get("keys", [])):
        where = f"teams.{team_id}.keys[{index}]"
        if not isinstance(key, dict) or set(key) - {"id", "sha256"}:
            raise InvalidTeam(f"{where} takes only id and sha256")
        try:
            sha = teams.check_key_hash(key.get("sha256"))
        except InvalidTeam as exc:
            raise InvalidTeam(f"{where}: {exc}") from None
        try:
            key_id = teams.check_key_id(key.get("id", f"file_{sha[:12]}"))
        except InvalidTeam as exc:
            raise InvalidTeam(f"{where}: {exc}") from None
        keys.append((key_id, sha))
    return Declared(Team(team_id, name, limits, **switches), keys)


async def apply(declared: list[Declared], ledger: Ledger) -> None:
    now = time.time()
    for entry in declared:
        existing = await ledger.get_team(entry.team.id)
        created = existing.created if existing is not None else now
        incarnation = existing.incarnation if existing is not None else teams.new_incarnation()
        team = dataclasses.replace(entry.team, created=created, incarnation=incarnation)
        if existing is None:
            if not await ledger.create_team(team):
                # Another replica starting at the same time made it first: its time stands.
                made = await ledger.get_team(team.id)
                if made is not None:
                    team = dataclasses.replace(
                        team, created=made.created, incarnation=made.incarnation
                    )
        elif existing != team:
            await ledger.update_team(team)
        # A key made before its team counts as an earlier team's (auth refuses it): never
        # date one before the team, whose time may come from another replica's clock.
        key_time = max(now, team.created)
        known = {record.id: record.sha256 for record in await ledger.list_keys(team.id)}
        for key_id, sha in entry.keys:
            if known.get(key_id, sha) != sha:
                raise TeamsFileError(
                    f"key id {key_id!r} of team {team.id!r} already names another key: revoke "
                    "that one through the admin API and give this one a new id"
                )
            record = await ledger.get_key(sha)
            if record is not None and record.team != team.id:
                raise TeamsFileError(
                    f"key {key_id!r} of team {team.id!r} belongs to {record.team!r}"
                )
            if record is None:
                await ledger.put_key(KeyRecord(key_id, team.id, sha, "nk-…", key_time))
