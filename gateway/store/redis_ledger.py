"""The Redis ledger: teams, keys, usage and quota counters shared by every replica.

Each decision about a team is one Lua script over that team's keys, which share a hash tag
(one Redis Cluster slot); their names are :mod:`gateway.store.redis_keys`'s. Key records
live under their hash because a lookup starts from the key alone; writing one and its team's
index are two commands, which only admin calls do.

A reservation is leased: a request settles long before its lease ends, so one still held then
was left by a replica that died first (``kill -9``, a lost machine). The team's next admission
releases it, in the same script, so it no longer lowers what the team has left; what it
reserved, what Nomic may have billed the dead replica, is counted to the ``unattributed``
account (:mod:`gateway.unattributed`, reason ``killed``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, NamedTuple

import orjson

from gateway import quota, tags, unattributed
from gateway.batching import Coalescer
from gateway.quota import Decision, Demand, Window
from gateway.store import redis_keys
from gateway.store.base import StoreError
from gateway.store.redis_backend import RedisBackend
from gateway.teams import ADMITTED_LIMITS, KeyRecord, Team

log = logging.getLogger(__name__)
MINUTE_TTL = 120
DAY_TTL = (quota.USAGE_DAYS_KEPT + 1) * 86400
MONTH_TTL = 40 * 86400
RESERVATION_TTL = 2 * 86400  # a reservation outlives the day it was made on
# A reservation's lease: far longer than a request can be under way (lease_for), and long
# enough that a settle held in its replica through a short outage of Redis comes first.
LEASE_FLOOR_SECONDS = 15 * 60
LAPSED_AT_ONCE = 64  # lapsed leases one admission releases, at most
# How long a settle id is remembered, to make a retried settle a no-op: as long as a retry
# can come (a settle that timed out is kept in the process until the store takes it again).
# Each id whose answer came back is then given ANSWERED_TTL by the team's next script call
# (FORGET_AT_ONCE at a time): only the ids of answers lost, and a process's last few per team,
# are kept SETTLED_TTL.
SETTLED_TTL = 40 * 86400
ANSWERED_TTL = 3600
FORGET_AT_ONCE = 4096
MOST_ANSWERED = 100_000  # per team; past it the oldest are left to lapse
TEAM_WRITE_TRIES = 100  # rounds of one team write that others' writes may overtake
SWAP_WRITTEN, SWAP_CHANGED = 1, 0  # lua/swap_team.lua's answers (-1: no team)


def _float(value: bytes | None) -> float | None:
    return None if value is None else float(value)


def _earliest(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def _pairs(usage: Mapping[str, int]) -> list[Any]:
    return [item for field, amount in usage.items() if amount for item in (field, amount)]


class _AdmitGroup(NamedTuple):
    """Requests that one script call can decide together: one team, window and limits."""

    team_id: str
    minute: int
    day: str
    month: str
    limits: tuple[int, int, int, int, int]


class _Admission(NamedTuple):
    want: Demand
    usage: Mapping[str, int]
    request_id: str
    tag: str


class _Settlement(NamedTuple):
    request_id: str
    billed: int
    usage: Mapping[str, int]
    tag: str


def lease_for(request_deadline_seconds: float) -> int:
    """How long a reservation is leased, for requests that wait this long for Nomic."""
    return max(LEASE_FLOOR_SECONDS, math.ceil(10 * request_deadline_seconds))


class RedisLedger:
    def __init__(
        self, backend: RedisBackend, lease_seconds: int = LEASE_FLOOR_SECONDS,
        tags_per_day: int = tags.DEFAULT_TAGS_PER_DAY,
    ) -> None:  # fmt: skip
        self._backend = backend
        self._lease_seconds = lease_seconds
        self._tags_per_day = tags_per_day
        self._redis = backend.client
        self._admit = backend.script("admit.lua", prelude="usage.lua")
        self._settle = backend.script("settle.lua", prelude="usage.lua")
        self._narrow = backend.script("narrow_key.lua")
        self._swap = backend.script("swap_team.lua")
        self._spend = backend.script("spend.lua")
        # Admissions (settles) of one team made while one is in flight share the next call.
        self._admissions = Coalescer(self._admit_batch)
        self._settles = Coalescer(self._settle_batch)
        # team → settled markers whose answers came back: shortened in its next script call
        self._answered: dict[str, list[str]] = {}

    async def _call(self, what: str, awaitable: Awaitable[Any]) -> Any:
        return await self._backend.call(what, awaitable)

    async def create_team(self, team: Team) -> bool:
        created = await self._call(
            "team write",
            self._redis.set(redis_keys.team_record(team.id), orjson.dumps(team.to_json()), nx=True),
        )
        if created:
            await self._call("team index", self._redis.sadd(redis_keys.TEAMS, team.id))
        return bool(created)

    async def change_team(self, team_id: str, change: Callable[[Team], Team]) -> Team | None:
        """Read, change, then write only if the team is still as read (``lua/swap_team.lua``),
        else again: each round someone's write lands, so concurrent writers all finish."""
        key = redis_keys.team_record(team_id)
        for _ in range(TEAM_WRITE_TRIES):
            read = await self._call("team read", self._redis.get(key))
            if read is None:
                return None
            changed = change(Team.from_json(orjson.loads(read)))
            written = orjson.dumps(changed.to_json())
            swapped = await self._call("team write", self._swap(keys=[key], args=[read, written]))
            if swapped != SWAP_CHANGED:
                return changed if swapped == SWAP_WRITTEN else None
        raise StoreError(f"team {team_id!r} was written {TEAM_WRITE_TRIES} times as this wrote it")

    async def update_team(self, team: Team) -> bool:
        # No SADD to the index: a team that exists is in it, and one deleted meanwhile must
        # not be listed again.
        return await self.change_team(team.id, lambda _: team) is not None

    async def get_team(self, team_id: str) -> Team | None:
        raw = await self._call("team read", self._redis.get(redis_keys.team_record(team_id)))
        return None if raw is None else Team.from_json(orjson.loads(raw))

    async def list_teams(self) -> list[Team]:
        ids = sorted(
            member.decode()
            for member in await self._call("team index", self._redis.smembers(redis_keys.TEAMS))
        )
        teams = [await self.get_team(team_id) for team_id in ids]
        return [team for team in teams if team is not None]

    async def delete_team(self, team_id: str) -> bool:
        """Remember the team among the former first (another slot: a command of its own),
        so that a team deleted is never in neither."""
        record = redis_keys.team_record(team_id)
        read = await self._call("team read", self._redis.get(record))
        if read is not None:
            await self._call("team index", self._redis.hset(redis_keys.FORMER_TEAMS, team_id, read))
        deleted = await self._call("team delete", self._redis.delete(record))
        await self._call("team index", self._redis.srem(redis_keys.TEAMS, team_id))
        return bool(deleted)

    async def former_teams(self) -> list[Team]:
        former = await self._call("team index", self._redis.hgetall(redis_keys.FORMER_TEAMS))
        teams = (Team.from_json(orjson.loads(raw)) for raw in former.values())
        return sorted(teams, key=lambda team: team.id)

    async def put_key(self, record: KeyRecord) -> None:
        await self._call(
            "key write",
            self._redis.set(redis_keys.key_record(record.sha256), orjson.dumps(record.to_json())),
        )
        await self._call(
            "key index",
            self._redis.hset(redis_keys.team_keys(record.team), record.id, record.sha256),
        )

    async def narrow_key(
        self, record: KeyRecord, *, revoked: float | None = None, expires: float | None = None
    ) -> None:
        args = ["" if revoked is None else repr(revoked), "" if expires is None else repr(expires)]
        await self._call(
            "key narrow", self._narrow(keys=[redis_keys.key_state(record.sha256)], args=args)
        )

    async def get_key(self, sha256: str) -> KeyRecord | None:
        record_key, state_key = redis_keys.key_record(sha256), redis_keys.key_state(sha256)
        raw, (revoked, expires) = await self._backend.pipelined("key read", lambda pipe: (
            pipe.get(record_key), pipe.hmget(state_key, ["revoked", "expires"])
        ))  # fmt: skip
        if raw is None:
            return None
        record = KeyRecord.from_json(orjson.loads(raw))
        return dataclasses.replace(
            record,
            revoked=record.revoked if record.revoked is not None else _float(revoked),
            expires=_earliest(record.expires, _float(expires)),
        )

    async def list_keys(self, team_id: str) -> list[KeyRecord]:
        hashes = await self._call("key index", self._redis.hvals(redis_keys.team_keys(team_id)))
        used = await self._call("key use", self._redis.hgetall(redis_keys.keys_last_used(team_id)))
        records = [await self.get_key(sha.decode()) for sha in hashes]  # admin calls only
        return sorted(
            (
                dataclasses.replace(r, last_used=_float(used.get(r.id.encode())))
                for r in records
                if r is not None
            ),
            key=lambda r: r.created,
        )

    async def touch_key(self, record: KeyRecord, now: float) -> None:
        await self._call(
            "key use", self._redis.hset(redis_keys.keys_last_used(record.team), record.id, now)
        )

    async def admit(
        self, team: Team, want: Demand, at: Window, usage: Mapping[str, int], request_id: str,
        tag: str = tags.UNTAGGED,
    ) -> Decision:  # fmt: skip
        group = _AdmitGroup(team.id, at.minute, at.day, at.month, quota.limit_values(team))
        return await self._admissions.submit(group, _Admission(want, usage, request_id, tag))

    async def _admit_batch(self, group: _AdmitGroup, members: list[_Admission]) -> list[Decision]:
        """One script call decides every request of the batch, in order (``lua/admit.lua``)."""
        team_id = group.team_id
        keys = [
            redis_keys.requests_in_minute(team_id, group.minute),
            redis_keys.images_in_minute(team_id, group.minute),
            redis_keys.texts_in_minute(team_id, group.minute),
            redis_keys.usage_day(team_id, group.day),
            redis_keys.usage_month(team_id, group.month),
            redis_keys.leases(team_id),
            redis_keys.usage_day_by_tag(team_id, group.day),
            redis_keys.day_tags(team_id, group.day),
        ]
        forget = self._to_forget(team_id)
        args: list[Any] = [*group.limits, MINUTE_TTL, DAY_TTL, MONTH_TTL, RESERVATION_TTL,
                           SETTLED_TTL, len(forget), ANSWERED_TTL, self._lease_seconds,
                           LAPSED_AT_ONCE, self._tags_per_day]  # fmt: skip
        for member in members:
            keys += (redis_keys.reservation(team_id, member.request_id),
                     redis_keys.settled(team_id, member.request_id))  # fmt: skip
            pairs = _pairs(member.usage)
            args += (*member.want, len(pairs) // 2, *pairs, member.tag)
        answers, released, tokens = await self._forgetting(
            team_id, forget, self._call("admit", self._admit(keys=[*keys, *forget], args=args))
        )
        if released:
            await self._charge_lapsed(team_id, group, int(released), int(tokens))
        self._answered.setdefault(team_id, []).extend(
            redis_keys.settled(team_id, member.request_id)
            for member in members
            if any(member.usage.values())
        )
        return [
            Decision(True) if answer[0] == 1
            else Decision(False, ADMITTED_LIMITS[int(answer[1]) - 1], *map(int, answer[2:5]))
            for answer in answers
        ]  # fmt: skip

    async def _charge_lapsed(
        self, team_id: str, group: _AdmitGroup, released: int, tokens: int
    ) -> None:
        """Count the reservations an admission released, their leases lapsed, to the
        ``unattributed`` account (in its own slot: a call of its own)."""
        whose = f"team {team_id!r} whose leases lapsed (a replica died before it settled them)"
        unattributed.count_killed(released, tokens, whose)
        usage = {"upstream_errors": released}
        request_id = f"lapsed-{secrets.token_hex(8)}"
        try:
            await self.settle(
                unattributed.TEAM_ID, group.day, group.month, request_id, tokens, usage
            )
        except StoreError as exc:  # the admission stands; only this count is lost
            log.error("the lapsed reservations could not be counted to %r: %s",
                      unattributed.TEAM_ID, exc)  # fmt: skip

    async def settle(
        self, team_id: str, day: str, month: str, request_id: str, billed: int,
        usage: Mapping[str, int], tag: str = tags.UNTAGGED,
    ) -> None:  # fmt: skip
        settlement = _Settlement(request_id, billed, usage, tag)
        await self._settles.submit((team_id, day, month), settlement)

    async def _settle_batch(
        self, group: tuple[str, str, str], members: list[_Settlement]
    ) -> list[None]:
        """One script call settles every request of the batch (``lua/settle.lua``)."""
        team_id, day, month = group
        forget = self._to_forget(team_id)
        keys = [redis_keys.usage_day(team_id, day), redis_keys.usage_month(team_id, month),
                redis_keys.leases(team_id), redis_keys.usage_day_by_tag(team_id, day),
                redis_keys.day_tags(team_id, day)]  # fmt: skip
        args: list[Any] = [DAY_TTL, MONTH_TTL, SETTLED_TTL, len(forget), ANSWERED_TTL,
                           self._tags_per_day]  # fmt: skip
        for member in members:
            keys += (redis_keys.settled(team_id, member.request_id),
                     redis_keys.reservation(team_id, member.request_id))  # fmt: skip
            pairs = _pairs(member.usage)
            args += (member.billed, len(pairs) // 2, *pairs, member.tag)
        settled = self._call("settle", self._settle(keys=[*keys, *forget], args=args))
        await self._forgetting(team_id, forget, settled)
        self._answered.setdefault(team_id, []).extend(
            redis_keys.settled(team_id, member.request_id) for member in members
        )
        return [None] * len(members)

    def _to_forget(self, team_id: str) -> list[str]:
        """Settled markers of the team whose answers came back, to shorten in its next call."""
        answered = self._answered.get(team_id)
        if not answered:
            return []
        del answered[:-MOST_ANSWERED]
        forget, self._answered[team_id] = answered[:FORGET_AT_ONCE], answered[FORGET_AT_ONCE:]
        return forget

    async def _forgetting(self, team_id: str, forget: list[str], call: Awaitable[Any]) -> Any:
        """Await ``call``, which shortens ``forget``; if it fails, they are shortened later."""
        try:
            return await call
        except BaseException:
            self._answered[team_id] = forget + self._answered.get(team_id, [])
            raise

    async def take_usage_reads(
        self, team_id: str, days: int, per_second: float, at_once: int
    ) -> int:
        spent = self._spend(
            keys=[redis_keys.usage_reads(team_id)], args=[days, per_second, at_once]
        )
        return int(await self._call("usage reads", spent))

    async def shared_secret(self, name: str) -> bytes:
        key = redis_keys.secret(name)
        new = secrets.token_bytes(32)
        await self._call("secret write", self._redis.set(key, new, nx=True))
        found: bytes | None = await self._call("secret read", self._redis.get(key))
        if found is None:
            raise StoreError(f"the shared secret {name!r} vanished as it was made")
        return found

    async def item_cost(self, model: str) -> int | None:
        raw = await self._call("cost read", self._redis.get(redis_keys.item_cost(model)))
        return None if raw is None else int(raw)

    async def record_item_cost(self, model: str, tokens: int) -> None:
        await self._call("cost write", self._redis.set(redis_keys.item_cost(model), tokens))

    async def usage(self, team_id: str, days: Sequence[str]) -> list[dict[str, int]]:
        rows = await self._backend.pipelined("usage read", lambda pipe: [
            pipe.hmget(redis_keys.usage_day(team_id, day), quota.USAGE_FIELDS) for day in days
        ])  # fmt: skip
        return [
            {field: int(value or 0) for field, value in zip(quota.USAGE_FIELDS, row, strict=True)}
            for row in rows
        ]

    async def tag_usage(self, team_id: str, days: Sequence[str]) -> list[dict[str, dict[str, int]]]:
        hashes = await self._backend.pipelined("usage read", lambda pipe: [
            pipe.hgetall(redis_keys.usage_day_by_tag(team_id, day)) for day in days
        ])  # fmt: skip
        return [_by_tag(found) for found in hashes]


def _by_tag(found: Mapping[bytes, bytes]) -> dict[str, dict[str, int]]:
    """A day's tag hash (fields ``<tag>|<field>``) as tag → its usage, tags in order."""
    by_tag: dict[str, dict[str, int]] = {}
    for name, amount in sorted(found.items()):
        tag, _, field = name.decode().rpartition("|")
        counts = by_tag.setdefault(tag, dict.fromkeys(quota.USAGE_FIELDS, 0))
        if field in counts:
            counts[field] = int(amount)
    return by_tag
