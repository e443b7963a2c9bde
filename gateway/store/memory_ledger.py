"""The embedded ledger: teams, keys, usage and quota counters in the process's memory.

Each method runs without awaiting anything, so on one event loop it is as atomic as a Lua
script in Redis; it applies the same rules (:func:`gateway.quota.decide`).
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping, Sequence

from gateway import quota, tags
from gateway.quota import Decision, Demand, Window
from gateway.store import rate
from gateway.teams import KeyRecord, Team

SETTLED_REMEMBERED = 100_000  # settle ids kept to make retried settles no-ops


class MemoryLedger:
    def __init__(self, tags_per_day: int = tags.DEFAULT_TAGS_PER_DAY) -> None:
        self._tags_per_day = tags_per_day
        self._teams: dict[str, Team] = {}
        self._former: dict[str, Team] = {}  # deleted, as each id last was
        self._keys: dict[str, KeyRecord] = {}
        self._team_keys: dict[str, dict[str, str]] = {}
        self._last_used: dict[str, float] = {}
        # team → its minute, and the requests, images and texts counted in it
        self._minutes: dict[str, tuple[int, tuple[int, int, int]]] = {}
        self._days: dict[tuple[str, str], Counter[str]] = {}
        self._tag_days: dict[tuple[str, str], dict[str, Counter[str]]] = {}  # → tag → counts
        self._months: dict[tuple[str, str], Counter[str]] = {}
        self._reserved: dict[str, int] = {}  # request id → tokens it reserved
        self._settled: OrderedDict[str, float] = OrderedDict()
        self._costs: dict[str, int] = {}
        self._usage_reads = rate.Rates()  # by team (or sign-in address)
        self._secrets: dict[str, bytes] = {}

    async def create_team(self, team: Team) -> bool:
        if team.id in self._teams:
            return False
        self._teams[team.id] = team
        return True

    async def change_team(self, team_id: str, change: Callable[[Team], Team]) -> Team | None:
        team = self._teams.get(team_id)
        if team is None:
            return None
        changed = self._teams[team_id] = change(team)  # read to write: no await between
        return changed

    async def update_team(self, team: Team) -> bool:
        return await self.change_team(team.id, lambda _: team) is not None

    async def get_team(self, team_id: str) -> Team | None:
        return self._teams.get(team_id)

    async def list_teams(self) -> list[Team]:
        return sorted(self._teams.values(), key=lambda team: team.id)

    async def delete_team(self, team_id: str) -> bool:
        team = self._teams.pop(team_id, None)
        if team is None:
            return False
        self._former[team_id] = team
        return True

    async def former_teams(self) -> list[Team]:
        return sorted(self._former.values(), key=lambda team: team.id)

    async def put_key(self, record: KeyRecord) -> None:
        self._keys[record.sha256] = record
        self._team_keys.setdefault(record.team, {})[record.id] = record.sha256

    async def narrow_key(
        self, record: KeyRecord, *, revoked: float | None = None, expires: float | None = None
    ) -> None:
        current = self._keys[record.sha256]
        if current.revoked is None and revoked is not None:
            current = dataclasses.replace(current, revoked=revoked)
        if expires is not None and (current.expires is None or expires < current.expires):
            current = dataclasses.replace(current, expires=expires)
        self._keys[record.sha256] = current

    async def get_key(self, sha256: str) -> KeyRecord | None:
        return self._keys.get(sha256)

    async def list_keys(self, team_id: str) -> list[KeyRecord]:
        records = [
            dataclasses.replace(self._keys[sha], last_used=self._last_used.get(sha))
            for sha in self._team_keys.get(team_id, {}).values()
        ]
        return sorted(records, key=lambda key: key.created)

    async def touch_key(self, record: KeyRecord, now: float) -> None:
        self._last_used[record.sha256] = now

    async def admit(
        self, team: Team, want: Demand, at: Window, usage: Mapping[str, int], request_id: str,
        tag: str = tags.UNTAGGED,
    ) -> Decision:  # fmt: skip
        minute, counts = self._minutes.get(team.id, (at.minute, (0, 0, 0)))
        if minute != at.minute:
            counts = (0, 0, 0)
        day = self._counts(self._days, team.id, at.day)
        month = self._counts(self._months, team.id, at.month)
        budgets = (
            day["billed_tokens"] + day["reserved_tokens"],
            month["billed_tokens"] + month["reserved_tokens"],
        )
        held = month["reserved_tokens"]
        decision = quota.decide(team, want, counts, budgets, held)
        if not decision.allowed:
            day["rejected"] += 1
            self._tagged(team.id, at.day, tag)["rejected"] += 1
            return decision
        requests, images, texts = counts
        counts = (requests + want.requests, images + want.images, texts + want.texts)
        self._minutes[team.id] = (at.minute, counts)
        reserve = want.tokens(held)
        if reserve:
            day["reserved_tokens"] += reserve
            month["reserved_tokens"] += reserve
            self._reserved[request_id] = reserve
        day.update(usage)
        if any(usage.values()):  # usage added: the request was answered, no settle follows
            self._tagged(team.id, at.day, tag).update(usage)
            self._mark_settled(request_id)
        return decision

    async def settle(
        self, team_id: str, day: str, month: str, request_id: str, billed: int,
        usage: Mapping[str, int], tag: str = tags.UNTAGGED,
    ) -> None:  # fmt: skip
        if request_id in self._settled:
            return
        self._mark_settled(request_id)
        reserved = self._reserved.pop(request_id, 0)
        day_counts = self._counts(self._days, team_id, day)
        for counts in (day_counts, self._counts(self._months, team_id, month)):
            counts["reserved_tokens"] -= reserved
            counts["billed_tokens"] += billed
        day_counts.update(usage)
        if billed or any(usage.values()):
            tagged = self._tagged(team_id, day, tag)
            tagged.update(usage)
            tagged["billed_tokens"] += billed

    def _tagged(self, team_id: str, day: str, tag: str) -> Counter[str]:
        """The counts of ``tag`` on the team's day, or of the tag it counts under
        (:func:`gateway.tags.kept`)."""
        known = self._tag_days.setdefault((team_id, day), {})
        return known.setdefault(tags.kept(tag, known, self._tags_per_day), Counter())

    def _mark_settled(self, request_id: str) -> None:
        self._settled[request_id] = time.monotonic()
        if len(self._settled) > SETTLED_REMEMBERED:
            self._settled.popitem(last=False)

    async def usage(self, team_id: str, days: Sequence[str]) -> list[dict[str, int]]:
        empty: Counter[str] = Counter()
        return [
            {field: self._days.get((team_id, day), empty)[field] for field in quota.USAGE_FIELDS}
            for day in days
        ]

    async def tag_usage(self, team_id: str, days: Sequence[str]) -> list[dict[str, dict[str, int]]]:
        return [
            {
                tag: {field: counts[field] for field in quota.USAGE_FIELDS}
                for tag, counts in sorted(self._tag_days.get((team_id, day), {}).items())
                if any(counts.values())
            }
            for day in days
        ]

    async def take_usage_reads(
        self, team_id: str, days: int, per_second: float, at_once: int
    ) -> int:
        return self._usage_reads.spend(team_id, time.monotonic() * 1000, days, per_second, at_once)

    async def shared_secret(self, name: str) -> bytes:
        return self._secrets.setdefault(name, secrets.token_bytes(32))

    async def item_cost(self, model: str) -> int | None:
        return self._costs.get(model)

    async def record_item_cost(self, model: str, tokens: int) -> None:
        self._costs[model] = tokens

    @staticmethod
    def _counts(
        table: dict[tuple[str, str], Counter[str]], team_id: str, period: str
    ) -> Counter[str]:
        counts = table.get((team_id, period))
        if counts is None:
            counts = table[(team_id, period)] = Counter()
        return counts
