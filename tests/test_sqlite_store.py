"""The embedded store's cache on disk (``gateway/store/sqlite.py``) and the thread every
SQLite file is used from (``gateway/store/sqlite_backend.py``)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.store import StoreError
from gateway.store.sqlite import SCHEMA, SqliteStore
from gateway.store.sqlite_backend import SqliteBackend

ENTRY = b"x" * 3084  # a 768-dimension float32 entry's size


@pytest.fixture
async def backend(tmp_path: Path) -> AsyncIterator[SqliteBackend]:
    opened = await SqliteBackend.open(tmp_path / "cache.sqlite3", SCHEMA)
    yield opened
    await opened.close()


async def test_entries_expire_at_their_wall_clock_time(backend: SqliteBackend) -> None:
    now = [1_800_000_000.0]
    store = SqliteStore(backend, 10_000_000, clock=lambda: now[0])
    await store.set_many([("url", b"v")], 60)
    await store.set_many([("image", b"v")], None)
    now[0] += 59.9
    assert await store.get_many(["url", "image"]) == [b"v", b"v"]
    now[0] += 0.2
    assert await store.get_many(["url", "image"]) == [None, b"v"]
    count = await backend.run("count", lambda db: db.execute("SELECT count(*) FROM cache"))
    assert count.fetchone() == (1,)  # read once expired, it is gone


async def test_the_pages_in_use_stay_within_the_bound_and_recently_read_entries_stay(
    backend: SqliteBackend,
) -> None:
    bound = 600_000  # about 140 entries of 3 KiB (one page each) with their indexes
    store = SqliteStore(backend, bound)
    hot = [f"hot{i}" for i in range(10)]
    await store.set_many([(key, ENTRY) for key in hot], None)
    for batch in range(60):
        await store.set_many([(f"cold{batch}-{i}", ENTRY) for i in range(10)], None)
        assert await store.get_many(hot) == [ENTRY] * 10  # read on every round: hot
        assert await store.used_bytes() <= bound
    cold = [f"cold{batch}-{i}" for batch in range(60) for i in range(10)]
    found = await store.get_many(cold)
    kept = [key for key, value in zip(cold, found, strict=True) if value is not None]
    assert 100 < len(kept) < 140
    assert kept == cold[-len(kept) :]  # the least recently written went first


async def test_an_entry_larger_than_the_bound_is_not_kept(backend: SqliteBackend) -> None:
    store = SqliteStore(backend, 1000)
    await store.set_many([("big", b"x" * 1000), ("small", b"x")], None)
    assert await store.get_many(["big"]) == [None]


async def test_entries_outlive_the_file_being_closed(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite3"
    first = await SqliteBackend.open(path, SCHEMA)
    await SqliteStore(first, 10_000_000).set_many([("a", b"1"), ("url", b"2")], 3600)
    await first.close()
    again = await SqliteBackend.open(path, SCHEMA)
    assert await SqliteStore(again, 10_000_000).get_many(["a", "url", "b"]) == [b"1", b"2", None]
    await again.close()


async def test_an_operation_that_raises_writes_nothing_and_leaves_the_others(
    backend: SqliteBackend,
) -> None:
    """Operations queued together share one transaction, each in a savepoint of its own."""

    def write_then_fail(db: sqlite3.Connection) -> None:
        db.execute("INSERT INTO cache VALUES ('failed', x'00', NULL, 0)")
        raise ValueError("changed its mind")

    def write(key: str) -> object:
        return lambda db: db.execute("INSERT INTO cache VALUES (?, x'00', NULL, 0)", (key,))

    results = await asyncio.gather(
        backend.run("a", write("before")),
        backend.run("b", write_then_fail),
        backend.run("c", write("after")),
        return_exceptions=True,
    )
    assert isinstance(results[1], ValueError)
    assert results[0] is not None
    assert results[2] is not None
    keys = await backend.run("keys", lambda db: db.execute("SELECT key FROM cache ORDER BY key"))
    assert keys.fetchall() == [("after",), ("before",)]


async def test_sqlite_errors_are_store_errors_naming_the_operation(backend: SqliteBackend) -> None:
    with pytest.raises(StoreError, match="SQLite lookup failed: no such table") as caught:
        await backend.run("lookup", lambda db: db.execute("SELECT * FROM missing_table"))
    assert isinstance(caught.value.__cause__, sqlite3.Error)
    assert await backend.run("after", lambda db: db.execute("SELECT 1").fetchone()) == (1,)


async def test_a_closed_file_refuses_operations(tmp_path: Path) -> None:
    backend = await SqliteBackend.open(tmp_path / "cache.sqlite3", SCHEMA)
    await backend.close()
    with pytest.raises(StoreError, match="closed"):
        await SqliteStore(backend, 1000).get_many(["a"])
    await backend.close()  # twice is fine


async def test_a_file_that_cannot_be_opened_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="SQLite cannot open"):
        await SqliteBackend.open(tmp_path / "missing" / "cache.sqlite3", SCHEMA)


async def test_a_full_disk_is_a_store_error_and_writes_work_again_once_there_is_room(
    backend: SqliteBackend,
) -> None:
    store = SqliteStore(backend, 10_000_000)
    (pages,) = await backend.run("size", lambda db: db.execute("PRAGMA page_count").fetchone())
    await backend.run("full", lambda db: db.execute(f"PRAGMA max_page_count = {pages + 2}"))
    with pytest.raises(StoreError, match="database or disk is full"):
        await store.set_many([(f"k{i}", ENTRY) for i in range(20)], None)
    assert await store.get_many(["k0"]) == [None]  # nothing of the failed write
    await backend.run("room", lambda db: db.execute("PRAGMA max_page_count = 1000000"))
    await store.set_many([("k0", ENTRY)], None)
    assert await store.get_many(["k0"]) == [ENTRY]
