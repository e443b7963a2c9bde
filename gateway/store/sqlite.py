"""The embedded store's cache on disk: one SQLite file, bounded by the bytes its pages take.

Past ``max_bytes`` of pages in use, the least recently used entries go, approximately: an
entry carries the *generation* it was last written or read in, a generation being a
sixteenth of the bound written (``GENERATIONS``), and eviction takes the oldest generation
first, in the order its entries were first written. So a read writes to the file at most
once per entry and generation, not on every hit, and an entry read since the last sixteenth
of the cache was written outlives every entry that was not. Pages freed are reused: the file
stays at about ``max_bytes`` (its WAL beside it). URL entries expire at a wall-clock time.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence

import orjson

from gateway.store.sqlite_backend import SqliteBackend

GENERATIONS = 16
EVICTED_AT_ONCE = 32
SCHEMA = """
CREATE TABLE IF NOT EXISTS cache (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    expires REAL,  -- seconds since the epoch; NULL: never
    used INTEGER NOT NULL  -- the generation it was last written or read in
);
CREATE INDEX IF NOT EXISTS cache_by_use ON cache (used);
CREATE TABLE IF NOT EXISTS cache_meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class SqliteStore:
    """The cache entries of the embedded store, on ``backend`` (a file of their own)."""

    def __init__(
        self, backend: SqliteBackend, max_bytes: int, clock: Callable[[], float] = time.time
    ) -> None:
        self._backend = backend
        self.max_bytes = max_bytes
        self._clock = clock
        self._generation_bytes = max(max_bytes // GENERATIONS, 1)

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        now = self._clock()
        found = await self._backend.run("get", lambda db: self._get(db, keys, now))
        return [found.get(key) for key in keys]

    async def set_many(self, items: Sequence[tuple[str, bytes]], ttl_seconds: int | None) -> None:
        if not items:
            return
        expires = None if ttl_seconds is None else self._clock() + ttl_seconds
        await self._backend.run("set", lambda db: self._set(db, items, expires))

    async def ping(self) -> None:
        await self._backend.run("ping", lambda db: db.execute("SELECT 1").fetchone())

    async def used_bytes(self) -> int:
        """The bytes of the file's pages in use (what ``max_bytes`` bounds)."""
        return await self._backend.run("size", _pages_in_use)

    def _get(self, db: sqlite3.Connection, keys: Sequence[str], now: float) -> dict[str, bytes]:
        found: dict[str, bytes] = {}
        expired: list[str] = []
        stale: list[str] = []
        generation = self._generation(db)
        rows = db.execute(
            "SELECT key, value, expires, used FROM cache "
            "WHERE key IN (SELECT value FROM json_each(?))",
            (_json(keys),),
        )
        for key, value, expires, used in rows:
            if expires is not None and expires <= now:
                expired.append(key)
                continue
            found[key] = value
            if used < generation:
                stale.append(key)
        if expired:
            db.execute(
                "DELETE FROM cache WHERE key IN (SELECT value FROM json_each(?))", (_json(expired),)
            )
        if stale:
            db.execute(
                "UPDATE cache SET used = ? WHERE key IN (SELECT value FROM json_each(?))",
                (generation, _json(stale)),
            )
        return found

    def _set(
        self, db: sqlite3.Connection, items: Sequence[tuple[str, bytes]], expires: float | None
    ) -> None:
        kept = [(k, v) for k, v in items if len(k) + len(v) <= self.max_bytes]
        written = sum(len(k) + len(v) for k, v in kept)
        db.execute(
            "INSERT INTO cache_meta VALUES ('written', ?) "
            "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
            (written,),
        )
        generation = self._generation(db)
        db.executemany(
            "INSERT INTO cache (key, value, expires, used) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
            "expires = excluded.expires, used = excluded.used",
            [(key, value, expires, generation) for key, value in kept],
        )
        self._evict(db)

    def _evict(self, db: sqlite3.Connection) -> None:
        while _pages_in_use(db) > self.max_bytes:
            deleted = db.execute(
                "DELETE FROM cache WHERE rowid IN "
                "(SELECT rowid FROM cache ORDER BY used, rowid LIMIT ?)",
                (EVICTED_AT_ONCE,),
            )
            if deleted.rowcount == 0:
                return

    def _generation(self, db: sqlite3.Connection) -> int:
        row = db.execute("SELECT value FROM cache_meta WHERE name = 'written'").fetchone()
        return (0 if row is None else int(row[0])) // self._generation_bytes


def _pages_in_use(db: sqlite3.Connection) -> int:
    (pages,) = db.execute("PRAGMA page_count").fetchone()
    (free,) = db.execute("PRAGMA freelist_count").fetchone()
    (size,) = db.execute("PRAGMA page_size").fetchone()
    return int((pages - free) * size)


def _json(keys: Sequence[str]) -> str:
    return orjson.dumps(list(keys)).decode()
