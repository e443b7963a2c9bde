"""The embedded ledger on disk: teams, keys, usage and quota counters in one SQLite file.

Each method is one operation of the file's thread (:class:`SqliteBackend`), so each decision
is atomic and exact, as a Lua script in Redis; it applies the same rules
(:func:`gateway.quota.decide`) as :class:`gateway.store.memory_ledger.MemoryLedger`. Usage is
kept per team, period (a day ``YYYY-MM-DD`` or a month ``YYYY-MM``) and field, never evicted.
A settle's id is remembered for ``SETTLED_KEPT_SECONDS``, so a retried settle is applied
once. A settle that fails here did not run (its transaction rolled back), so its retry
counts once however late it comes; the ids are for one whose answer its caller did not wait
for (a flush cut short), retried at the next flush. The file is one process's: a
reservation found at start-up was left by a process that was killed before it settled, and
is released (:meth:`SqliteLedger.release_leftovers`).
"""

from __future__ import annotations

import dataclasses
import secrets
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence

import orjson

from gateway import quota, tags, unattributed
from gateway.quota import Decision, Demand, Window
from gateway.store import rate
from gateway.store.sqlite_backend import SqliteBackend
from gateway.teams import KeyRecord, Team

SETTLED_KEPT_SECONDS = 2 * 86400
SETTLED_PRUNED_EVERY = 4096  # settles between two prunings of old settle ids
SCHEMA = """
CREATE TABLE IF NOT EXISTS teams (id TEXT PRIMARY KEY, team BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS former_teams (id TEXT PRIMARY KEY, team BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS keys (
    sha256 TEXT PRIMARY KEY, team TEXT NOT NULL, record BLOB NOT NULL, last_used REAL
);
CREATE INDEX IF NOT EXISTS keys_of_team ON keys (team);
CREATE TABLE IF NOT EXISTS minutes (
    team TEXT PRIMARY KEY, minute INTEGER NOT NULL,
    requests INTEGER NOT NULL, images INTEGER NOT NULL, texts INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS usage (
    team TEXT NOT NULL, period TEXT NOT NULL, field TEXT NOT NULL, amount INTEGER NOT NULL,
    PRIMARY KEY (team, period, field)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tag_usage (
    team TEXT NOT NULL, day TEXT NOT NULL, tag TEXT NOT NULL, field TEXT NOT NULL,
    amount INTEGER NOT NULL, PRIMARY KEY (team, day, tag, field)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS reserved (
    request_id TEXT PRIMARY KEY, team TEXT NOT NULL, day TEXT NOT NULL, month TEXT NOT NULL,
    tokens INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS settled (request_id TEXT PRIMARY KEY, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS settled_by_time ON settled (at);
CREATE TABLE IF NOT EXISTS costs (model TEXT PRIMARY KEY, tokens INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS secrets (name TEXT PRIMARY KEY, value BLOB NOT NULL);
"""
_ADD = (
    "INSERT INTO usage VALUES (?, ?, ?, ?) "
    "ON CONFLICT (team, period, field) DO UPDATE SET amount = amount + excluded.amount"
)

_ADD_TAGGED = (
    "INSERT INTO tag_usage VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (team, day, tag, field) DO UPDATE SET amount = amount + excluded.amount"
)


class SqliteLedger:
    def __init__(
        self, backend: SqliteBackend, clock: Callable[[], float] = time.time,
        tags_per_day: int = tags.DEFAULT_TAGS_PER_DAY,
    ) -> None:  # fmt: skip
        self._backend = backend
        self._tags_per_day = tags_per_day
        self._clock = clock
        self._settles = 0
        self._usage_reads = rate.Rates()  # by team (or sign-in address)

    async def release_leftovers(self) -> tuple[int, int]:
        """Release every reservation in the file (made by a process that died before it
        settled them: this one has made none yet), and charge what they reserved to the
        :mod:`unattributed <gateway.unattributed>` account on their day, in the same
        transaction; how many there were, and the tokens they reserved."""
        return await self._backend.run("release", self._release_leftovers)

    def _release_leftovers(self, db: sqlite3.Connection) -> tuple[int, int]:
        rows = db.execute("SELECT team, day, month, tokens FROM reserved").fetchall()
        for team_id, day, month, tokens in rows:
            _add(db, team_id, day, {"reserved_tokens": -tokens})
            _add(db, team_id, month, {"reserved_tokens": -tokens})
            charged = {"billed_tokens": tokens, "upstream_errors": 1}
            _add(db, unattributed.TEAM_ID, day, charged)
            self._add_tagged(db, unattributed.TEAM_ID, day, tags.UNTAGGED, charged)
            _add(db, unattributed.TEAM_ID, month, {"billed_tokens": tokens})
        db.execute("DELETE FROM reserved")
        db.execute("DELETE FROM settled WHERE at < ?", (self._clock() - SETTLED_KEPT_SECONDS,))
        return len(rows), sum(row[3] for row in rows)

    async def create_team(self, team: Team) -> bool:
        def create(db: sqlite3.Connection) -> bool:
            written = db.execute(
                "INSERT INTO teams VALUES (?, ?) ON CONFLICT (id) DO NOTHING",
                (team.id, orjson.dumps(team.to_json())),
            )
            return written.rowcount == 1

        return await self._backend.run("team write", create)

    async def change_team(self, team_id: str, change: Callable[[Team], Team]) -> Team | None:
        def swap(db: sqlite3.Connection) -> Team | None:
            team = _team(db, team_id)
            if team is None:
                return None
            changed = change(team)
            db.execute("UPDATE teams SET team = ? WHERE id = ?",
                       (orjson.dumps(changed.to_json()), team_id))  # fmt: skip
            return changed

        return await self._backend.run("team write", swap)

    async def update_team(self, team: Team) -> bool:
        return await self.change_team(team.id, lambda _: team) is not None

    async def get_team(self, team_id: str) -> Team | None:
        return await self._backend.run("team read", lambda db: _team(db, team_id))

    async def list_teams(self) -> list[Team]:
        def every(db: sqlite3.Connection) -> list[Team]:
            rows = db.execute("SELECT team FROM teams ORDER BY id")
            return [Team.from_json(orjson.loads(row[0])) for row in rows]

        return await self._backend.run("team read", every)

    async def delete_team(self, team_id: str) -> bool:
        def delete(db: sqlite3.Connection) -> bool:
            db.execute("INSERT OR REPLACE INTO former_teams SELECT id, team FROM teams "
                       "WHERE id = ?", (team_id,))  # fmt: skip
            return db.execute("DELETE FROM teams WHERE id = ?", (team_id,)).rowcount == 1

        return await self._backend.run("team delete", delete)

    async def former_teams(self) -> list[Team]:
        def every(db: sqlite3.Connection) -> list[Team]:
            rows = db.execute("SELECT team FROM former_teams ORDER BY id")
            return [Team.from_json(orjson.loads(row[0])) for row in rows]

        return await self._backend.run("team read", every)

    async def put_key(self, record: KeyRecord) -> None:
        await self._backend.run("key write", lambda db: db.execute(
            "INSERT INTO keys (sha256, team, record) VALUES (?, ?, ?) "
            "ON CONFLICT (sha256) DO UPDATE SET team = excluded.team, record = excluded.record",
            (record.sha256, record.team, orjson.dumps(record.to_json())),
        ))  # fmt: skip

    async def narrow_key(
        self, record: KeyRecord, *, revoked: float | None = None, expires: float | None = None
    ) -> None:
        def narrow(db: sqlite3.Connection) -> None:
            current = _key(db, record.sha256)
            if current is None:
                return
            if current.revoked is None and revoked is not None:
                current = dataclasses.replace(current, revoked=revoked)
            if expires is not None and (current.expires is None or expires < current.expires):
                current = dataclasses.replace(current, expires=expires)
            db.execute("UPDATE keys SET record = ? WHERE sha256 = ?",
                       (orjson.dumps(current.to_json()), record.sha256))  # fmt: skip

        await self._backend.run("key narrow", narrow)

    async def get_key(self, sha256: str) -> KeyRecord | None:
        return await self._backend.run("key read", lambda db: _key(db, sha256))

    async def list_keys(self, team_id: str) -> list[KeyRecord]:
        def of_team(db: sqlite3.Connection) -> list[KeyRecord]:
            rows = db.execute("SELECT record, last_used FROM keys WHERE team = ?", (team_id,))
            return [
                dataclasses.replace(KeyRecord.from_json(orjson.loads(raw)), last_used=last_used)
                for raw, last_used in rows
            ]

        records = await self._backend.run("key read", of_team)
        return sorted(records, key=lambda key: key.created)

    async def touch_key(self, record: KeyRecord, now: float) -> None:
        await self._backend.run("key use", lambda db: db.execute(
            "UPDATE keys SET last_used = ? WHERE sha256 = ?", (now, record.sha256)
        ))  # fmt: skip

    async def admit(
        self, team: Team, want: Demand, at: Window, usage: Mapping[str, int], request_id: str,
        tag: str = tags.UNTAGGED,
    ) -> Decision:  # fmt: skip
        return await self._backend.run(
            "admit", lambda db: self._admit(db, team, want, at, usage, request_id, tag)
        )

    def _admit(
        self, db: sqlite3.Connection, team: Team, want: Demand, at: Window,
        usage: Mapping[str, int], request_id: str, tag: str,
    ) -> Decision:  # fmt: skip
        row = db.execute(
            "SELECT requests, images, texts FROM minutes WHERE team = ? AND minute = ?",
            (team.id, at.minute),
        ).fetchone()
        counts: tuple[int, int, int] = (0, 0, 0) if row is None else row
        tokens = _token_counts(db, team.id, (at.day, at.month))
        day, month = tokens[at.day], tokens[at.month]
        held = month[1]
        decision = quota.decide(team, want, counts, (sum(day), sum(month)), held)
        if not decision.allowed:
            _add(db, team.id, at.day, {"rejected": 1})
            self._add_tagged(db, team.id, at.day, tag, {"rejected": 1})
            return decision
        requests, images, texts = counts
        db.execute(
            "INSERT INTO minutes VALUES (?, ?, ?, ?, ?) ON CONFLICT (team) DO UPDATE SET "
            "minute = excluded.minute, requests = excluded.requests, "
            "images = excluded.images, texts = excluded.texts",
            (team.id, at.minute, requests + want.requests, images + want.images,
             texts + want.texts),
        )  # fmt: skip
        reserve = want.tokens(held)
        if reserve:
            _add(db, team.id, at.day, {"reserved_tokens": reserve})
            _add(db, team.id, at.month, {"reserved_tokens": reserve})
            db.execute("INSERT INTO reserved VALUES (?, ?, ?, ?, ?)",
                       (request_id, team.id, at.day, at.month, reserve))  # fmt: skip
        _add(db, team.id, at.day, usage)
        self._add_tagged(db, team.id, at.day, tag, usage)
        if any(usage.values()):  # usage added: the request was answered, no settle follows
            self._mark_settled(db, request_id)
        return decision

    async def settle(
        self, team_id: str, day: str, month: str, request_id: str, billed: int,
        usage: Mapping[str, int], tag: str = tags.UNTAGGED,
    ) -> None:  # fmt: skip
        await self._backend.run("settle", lambda db: self._settle(
            db, team_id, day, month, request_id, billed, usage, tag
        ))  # fmt: skip

    def _settle(
        self, db: sqlite3.Connection, team_id: str, day: str, month: str, request_id: str,
        billed: int, usage: Mapping[str, int], tag: str,
    ) -> None:  # fmt: skip
        if db.execute("SELECT 1 FROM settled WHERE request_id = ?", (request_id,)).fetchone():
            return
        self._mark_settled(db, request_id)
        row = db.execute("SELECT tokens FROM reserved WHERE request_id = ?", (request_id,))
        reserved = next((tokens for (tokens,) in row), 0)
        if reserved:
            db.execute("DELETE FROM reserved WHERE request_id = ?", (request_id,))
        tokens = {"reserved_tokens": -reserved, "billed_tokens": billed}
        _add(db, team_id, day, tokens)
        _add(db, team_id, day, usage)
        _add(db, team_id, month, tokens)
        self._add_tagged(db, team_id, day, tag, {**usage, "billed_tokens": billed})

    def _add_tagged(
        self, db: sqlite3.Connection, team_id: str, day: str, tag: str,
        amounts: Mapping[str, int],
    ) -> None:  # fmt: skip
        """Add ``amounts`` to the team's day under ``tag``, or under the tag it counts under
        (:func:`gateway.tags.kept`)."""
        if not any(amounts.values()):
            return
        under = tag
        found = db.execute(
            "SELECT 1 FROM tag_usage WHERE team = ? AND day = ? AND tag = ? LIMIT 1",
            (team_id, day, tag),
        ).fetchone()
        if found is None:  # a new tag of the day: within the bound, or counted as other
            known = [row[0] for row in db.execute(
                "SELECT DISTINCT tag FROM tag_usage WHERE team = ? AND day = ?", (team_id, day)
            )]  # fmt: skip
            under = tags.kept(tag, known, self._tags_per_day)
        db.executemany(_ADD_TAGGED, [
            (team_id, day, under, field, amount) for field, amount in amounts.items() if amount
        ])  # fmt: skip

    def _mark_settled(self, db: sqlite3.Connection, request_id: str) -> None:
        now = self._clock()
        db.execute("INSERT INTO settled VALUES (?, ?)", (request_id, now))
        self._settles += 1
        if self._settles % SETTLED_PRUNED_EVERY == 0:
            db.execute("DELETE FROM settled WHERE at < ?", (now - SETTLED_KEPT_SECONDS,))

    async def usage(self, team_id: str, days: Sequence[str]) -> list[dict[str, int]]:
        def read(db: sqlite3.Connection) -> dict[str, dict[str, int]]:
            found: dict[str, dict[str, int]] = {}
            rows = db.execute(
                "SELECT period, field, amount FROM usage WHERE team = ? "
                "AND period IN (SELECT value FROM json_each(?))",
                (team_id, orjson.dumps(list(days)).decode()),
            )
            for period, field, amount in rows:
                found.setdefault(period, {})[field] = amount
            return found

        found = await self._backend.run("usage read", read)
        return [
            {field: found.get(day, {}).get(field, 0) for field in quota.USAGE_FIELDS}
            for day in days
        ]

    async def tag_usage(self, team_id: str, days: Sequence[str]) -> list[dict[str, dict[str, int]]]:
        def read(db: sqlite3.Connection) -> dict[str, dict[str, dict[str, int]]]:
            found: dict[str, dict[str, dict[str, int]]] = {}
            rows = db.execute(
                "SELECT day, tag, field, amount FROM tag_usage WHERE team = ? "
                "AND day IN (SELECT value FROM json_each(?)) ORDER BY day, tag",
                (team_id, orjson.dumps(list(days)).decode()),
            )
            for day, tag, field, amount in rows:
                found.setdefault(day, {}).setdefault(tag, {})[field] = amount
            return found

        found = await self._backend.run("usage read", read)
        return [
            {
                tag: {field: counts.get(field, 0) for field in quota.USAGE_FIELDS}
                for tag, counts in found.get(day, {}).items()
            }
            for day in days
        ]

    async def take_usage_reads(
        self, team_id: str, days: int, per_second: float, at_once: int
    ) -> int:
        return self._usage_reads.spend(team_id, time.monotonic() * 1000, days, per_second, at_once)

    async def shared_secret(self, name: str) -> bytes:
        def kept(db: sqlite3.Connection) -> bytes:
            new = secrets.token_bytes(32)
            db.execute("INSERT OR IGNORE INTO secrets VALUES (?, ?)", (name, new))
            row = db.execute("SELECT value FROM secrets WHERE name = ?", (name,)).fetchone()
            return bytes(row[0])

        return await self._backend.run("secret", kept)

    async def item_cost(self, model: str) -> int | None:
        def read(db: sqlite3.Connection) -> int | None:
            row = db.execute("SELECT tokens FROM costs WHERE model = ?", (model,)).fetchone()
            return None if row is None else int(row[0])

        return await self._backend.run("cost read", read)

    async def record_item_cost(self, model: str, tokens: int) -> None:
        await self._backend.run("cost write", lambda db: db.execute(
            "INSERT INTO costs VALUES (?, ?) ON CONFLICT (model) DO UPDATE SET tokens = ?",
            (model, tokens, tokens),
        ))  # fmt: skip


def _team(db: sqlite3.Connection, team_id: str) -> Team | None:
    row = db.execute("SELECT team FROM teams WHERE id = ?", (team_id,)).fetchone()
    return None if row is None else Team.from_json(orjson.loads(row[0]))


def _key(db: sqlite3.Connection, sha256: str) -> KeyRecord | None:
    row = db.execute("SELECT record FROM keys WHERE sha256 = ?", (sha256,)).fetchone()
    return None if row is None else KeyRecord.from_json(orjson.loads(row[0]))


def _add(db: sqlite3.Connection, team_id: str, period: str, amounts: Mapping[str, int]) -> None:
    db.executemany(_ADD, [(team_id, period, f, n) for f, n in amounts.items() if n])


def _token_counts(
    db: sqlite3.Connection, team_id: str, periods: tuple[str, str]
) -> dict[str, tuple[int, int]]:
    """Per period: the tokens billed and the tokens reserved."""
    found = {period: {"billed_tokens": 0, "reserved_tokens": 0} for period in periods}
    rows = db.execute(
        "SELECT period, field, amount FROM usage WHERE team = ? AND period IN (?, ?) "
        "AND field IN ('billed_tokens', 'reserved_tokens')",
        (team_id, *found),
    )
    for period, field, amount in rows:
        found[period][field] = amount
    return {p: (counts["billed_tokens"], counts["reserved_tokens"]) for p, counts in found.items()}
