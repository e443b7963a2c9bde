"""The embedded store in memory beside the embedded store on disk, side by side in one run.

``.venv/bin/python -m tests.bench.embedded_store [--ops 2000] [--entries 20000]``

Each store is filled with ``--entries`` cache entries of 3,084 bytes (a 768-float32 vector),
then timed one operation at a time: ``get_many`` of 1 and of 10 stored keys, ``set_many`` of
10 new entries, and an ``admit`` then ``settle`` of a team with a token budget (so each is a
decision of the ledger, as for any team with a limit). Beside the latency of each (median and
99th percentile, in µs), the event loop thread's CPU an operation and the *loop stall*: the longest
the event loop was kept from running anything else during them, as a task that asks to wake
every millisecond sees it. Then
64 concurrent ``get_many`` of 1 key: operations per second. The stores:

- ``memory``: ``GATEWAY_DATA_DIR=:memory:`` (MemoryStore, MemoryLedger);
- ``disk``: the default (SqliteStore, SqliteLedger: each file used from a thread of its own);
- ``disk, inline``: the same SQL run on the event loop itself, what the thread saves it;
- ``disk, FULL``: the ledger with ``synchronous=FULL`` (an fsync a commit), for what a
  commit that survives a power loss would cost (the gateway uses NORMAL).

At the end, the cache file's size against its bound (a second fill, past the bound).
Nothing here asserts anything: it prints numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import sqlite3
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from gateway import quota
from gateway.quota import Demand
from gateway.store import sqlite_backend
from gateway.store.base import Ledger, Store
from gateway.store.data_dir import DataDir
from gateway.store.memory import MemoryStore
from gateway.store.memory_ledger import MemoryLedger
from gateway.store.sqlite import SCHEMA as CACHE_SCHEMA
from gateway.store.sqlite import SqliteStore
from gateway.store.sqlite_backend import PRAGMAS
from gateway.store.sqlite_ledger import SCHEMA as LEDGER_SCHEMA
from gateway.store.sqlite_ledger import SqliteLedger
from gateway.teams import Limits, Team

T = TypeVar("T")
ENTRY = os.urandom(3084)
TEAM = Team("bench", "Bench", Limits(tokens_per_day=10**15, tokens_per_month=10**15), True, 0.0)
CONCURRENT = 64


class Stores(NamedTuple):
    store: Store
    ledger: Ledger


class InlineBackend:
    """SqliteBackend's ``run`` made on the event loop itself: one transaction an operation."""

    def __init__(self, path: Path, schema: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None)
        for pragma in PRAGMAS:
            self._db.execute(pragma)
        self._db.executescript(schema)

    async def run(self, what: str, work: Callable[[sqlite3.Connection], T]) -> T:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            result = work(self._db)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        return result

    def close(self) -> None:
        self._db.close()


@contextlib.asynccontextmanager
async def memory(_: Path, cache_bytes: int) -> AsyncIterator[Stores]:
    yield Stores(MemoryStore(cache_bytes), MemoryLedger())


@contextlib.asynccontextmanager
async def disk(path: Path, cache_bytes: int, full: bool = False) -> AsyncIterator[Stores]:
    if full:  # read as each file is opened
        sqlite_backend.PRAGMAS = tuple(p.replace("NORMAL", "FULL") for p in PRAGMAS)
    try:
        data = await DataDir.open(path, cache_bytes)
    finally:
        sqlite_backend.PRAGMAS = PRAGMAS
    try:
        yield Stores(data.store, data.ledger)
    finally:
        await data.close()


@contextlib.asynccontextmanager
async def disk_inline(path: Path, cache_bytes: int) -> AsyncIterator[Stores]:
    cache = InlineBackend(path / "cache.sqlite3", CACHE_SCHEMA)
    ledger = InlineBackend(path / "ledger.sqlite3", LEDGER_SCHEMA)
    try:
        yield Stores(SqliteStore(cache, cache_bytes), SqliteLedger(ledger))  # type: ignore[arg-type]
    finally:
        cache.close()
        ledger.close()


@contextlib.asynccontextmanager
async def disk_full(path: Path, cache_bytes: int) -> AsyncIterator[Stores]:
    async with disk(path, cache_bytes, full=True) as stores:
        yield stores


VARIANTS = {"memory": memory, "disk": disk, "disk, inline": disk_inline, "disk, FULL": disk_full}


class StallMeter:
    """The longest the loop went without running a task that asks to wake every 1 ms."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> StallMeter:
        self._task = asyncio.create_task(self._watch())
        await asyncio.sleep(0)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _watch(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(0.001)
            self.worst = max(self.worst, time.perf_counter() - before - 0.001)


async def timed(ops: int, operation: Callable[[int], Awaitable[Any]]) -> tuple[str, float, float]:
    """``p50 / p99`` of ``ops`` calls in µs, one after the other; then, over ``ops`` more
    calls with a yield to the loop between them (as a server's other tasks would), the event
    loop thread's CPU per call in µs and the worst loop stall in ms."""
    times = []
    for i in range(ops):
        started = time.perf_counter()
        await operation(i)
        times.append((time.perf_counter() - started) * 1e6)
    times.sort()
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    async with StallMeter() as stall:
        cpu = time.thread_time()
        for i in range(ops, 2 * ops):
            await operation(i)
            await asyncio.sleep(0)
        cpu = (time.thread_time() - cpu) / ops * 1e6
    return f"{statistics.median(times):5.0f} / {p99:6.0f}", cpu, stall.worst * 1000


async def measure(name: str, stores: Stores, ops: int, entries: int) -> list[str]:
    store, ledger = stores
    keys = [f"ng:v2:emb:{i:032x}" for i in range(entries)]
    for start in range(0, entries, 100):
        await store.set_many([(key, ENTRY) for key in keys[start : start + 100]], None)
    rng = random.Random(1)
    at = quota.window(time.time())
    want = Demand(1, 1, 0, 10)
    await ledger.create_team(TEAM)

    async def admit_settle(i: int) -> None:
        await ledger.admit(TEAM, want, at, {}, f"r{i}")
        await ledger.settle(TEAM.id, at.day, at.month, f"r{i}", 10, {"requests": 1, "misses": 1})

    rows = []
    for label, operation in (
        ("get_many 1", lambda i: store.get_many([rng.choice(keys)])),
        ("get_many 10", lambda i: store.get_many(rng.sample(keys, 10))),
        (
            "set_many 10",
            lambda i: store.set_many([(f"new{i}-{j}", ENTRY) for j in range(10)], None),
        ),
        ("admit + settle", admit_settle),
    ):
        latency, cpu, stall = await timed(ops, operation)
        rows.append(
            f"{name:13s} {label:15s} {latency} µs   loop CPU {cpu:4.0f} µs   "
            f"worst loop stall {stall:6.2f} ms"
        )
    started = time.perf_counter()
    per_task = max(ops // CONCURRENT, 1)

    async def reader() -> None:
        for _ in range(per_task):
            await store.get_many([rng.choice(keys)])

    await asyncio.gather(*(reader() for _ in range(CONCURRENT)))
    rate = per_task * CONCURRENT / (time.perf_counter() - started)
    rows.append(f"{name:13s} {CONCURRENT} concurrent get_many 1: {rate:8.0f} /s")
    return rows


async def bounded_file(work: Path, entries: int) -> str:
    bound = entries * 3084 // 2
    path = work / "bounded"
    async with disk(path, bound) as (store, _):
        for start in range(0, entries, 100):
            batch = [(f"k{i}", ENTRY) for i in range(start, min(start + 100, entries))]
            await store.set_many(batch, None)
        kept = sum(
            value is not None for value in await store.get_many([f"k{i}" for i in range(entries)])
        )
    size = (path / "cache.sqlite3").stat().st_size
    return (
        f"{entries} entries of 3,084 bytes into a cache bounded at {bound / 2**20:.1f} MiB: "
        f"{kept} kept, cache.sqlite3 {size / 2**20:.1f} MiB"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ops", type=int, default=2000, help="timed operations of each kind")
    parser.add_argument("--entries", type=int, default=20_000, help="cache entries stored first")
    args = parser.parse_args()
    cache_bytes = 4 * args.entries * 4096  # room for every entry: no eviction while timed
    print(f"{args.entries} entries stored, {args.ops} operations of each kind; "
          "latency p50 / p99 one at a time; loop CPU a call and worst stall with the loop "
          "taking turns")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for name, variant in VARIANTS.items():
            async with variant(Path(tmp) / name.replace(", ", "-"), cache_bytes) as stores:
                for row in await measure(name, stores, args.ops, args.entries):
                    print(row, flush=True)
        print(await bounded_file(Path(tmp), args.entries))


if __name__ == "__main__":
    asyncio.run(main())
