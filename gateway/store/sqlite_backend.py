"""One SQLite file of the embedded store, used from one thread of its own.

SQLite's calls block, so the event loop makes none: each operation is a function of the
connection, run by the file's thread. Operations queued while the thread is busy run in one
transaction, each in a savepoint of its own (one that raises leaves the others as they were;
an error after which SQLite rolls the whole transaction back, a full disk say, fails them
all), committed once; an operation's await returns after the commit that holds it. One
thread, one connection: operations run one after the other, each as atomic as a Lua script.

The file and its journals (``-wal``, ``-shm``) are readable and writable by their owner only
(0600), whatever the umask: the ledger holds the console's session secret and the keys'
hashes. The file is made so before SQLite opens it (SQLite gives a journal its database's
permissions), and each is made so again at every opening.

Durability: WAL mode with ``synchronous=NORMAL``. A commit has been handed to the operating
system when it returns, so it survives the process being killed (``kill -9``); a power loss or
an operating system crash may lose the last commits (never the file's consistency).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from gateway.store.base import StoreError

log = logging.getLogger(__name__)
T = TypeVar("T")
PRIVATE = 0o600  # the owner reads and writes; nobody else anything
JOURNALS = ("-wal", "-shm", "-journal")
MOST_PER_COMMIT = 256  # operations one transaction takes from the queue
WAL_BYTES_KEPT = 64 * 1024 * 1024  # the WAL file is cut back to this after a checkpoint
PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    f"PRAGMA journal_size_limit={WAL_BYTES_KEPT}",
)


class _Job(NamedTuple):
    what: str
    work: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any]


_Outcome = tuple[asyncio.Future[Any], Any, BaseException | None]


class SqliteBackend:
    """``await SqliteBackend.open(path, schema)``, then :meth:`run` operations; :meth:`close`."""

    def __init__(self, path: Path, schema: str, loop: asyncio.AbstractEventLoop) -> None:
        self.path = path
        self._schema = schema
        self._loop = loop
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._opened: asyncio.Future[None] = loop.create_future()
        self._closed: asyncio.Future[None] = loop.create_future()
        self._closing = False
        self._thread = threading.Thread(target=self._serve, name=f"sqlite-{path.stem}", daemon=True)

    @classmethod
    async def open(cls, path: Path, schema: str) -> SqliteBackend:
        """Open (or create) the file and apply ``schema`` (idempotent DDL); raises StoreError."""
        backend = cls(path, schema, asyncio.get_running_loop())
        backend._thread.start()
        try:
            await asyncio.shield(backend._opened)
        except BaseException:
            await backend.close()
            raise
        return backend

    async def run(self, what: str, work: Callable[[sqlite3.Connection], T]) -> T:
        """``work(connection)`` in the file's thread, atomically, once it is committed; a
        ``sqlite3.Error`` is raised as :class:`StoreError` naming ``what``, anything else as
        it is (with nothing of the operation written)."""
        if self._closing:
            raise StoreError(f"SQLite {what} failed: the store is closed")
        future: asyncio.Future[T] = self._loop.create_future()
        self._jobs.put(_Job(what, work, future))
        return await future

    async def close(self) -> None:
        """Let the operations queued finish, then close the file."""
        if not self._closing:
            self._closing = True
            self._jobs.put(None)
        if self._thread.is_alive() or self._thread.ident is not None:
            await asyncio.shield(self._closed)
            self._thread.join()

    def _serve(self) -> None:
        try:
            connection = self._connect()
        except (sqlite3.Error, OSError) as exc:
            self._deliver_state(self._opened, StoreError(f"SQLite cannot open {self.path}: {exc}"))
            self._deliver_state(self._closed, None)
            return
        self._deliver_state(self._opened, None)
        try:
            while (batch := self._next_batch()) is not None:
                self._deliver(self._run_batch(connection, batch))
        finally:
            connection.close()
            self._deliver_state(self._closed, None)

    def _connect(self) -> sqlite3.Connection:
        make_private(self.path)
        connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            for pragma in PRAGMAS:
                connection.execute(pragma)
            connection.executescript(self._schema)
        except BaseException:
            connection.close()
            raise
        return connection

    def _next_batch(self) -> list[_Job] | None:
        """The jobs queued now (waiting for one), or None once :meth:`close` asked to stop."""
        first = self._jobs.get()
        if first is None:
            return None
        batch = [first]
        while len(batch) < MOST_PER_COMMIT:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self._jobs.put(None)  # stop after this batch
                break
            batch.append(job)
        return batch

    def _run_batch(self, connection: sqlite3.Connection, batch: list[_Job]) -> list[_Outcome]:
        outcomes: list[_Outcome] = []
        try:
            connection.execute("BEGIN IMMEDIATE")
            for job in batch:
                connection.execute("SAVEPOINT job")
                try:
                    result = job.work(connection)
                except Exception as exc:
                    if isinstance(exc, sqlite3.Error) and not connection.in_transaction:
                        raise  # SQLite rolled the whole transaction back (a full disk, say)
                    connection.execute("ROLLBACK TO job")
                    connection.execute("RELEASE job")
                    outcomes.append((job.future, None, _raised(job.what, exc)))
                    continue
                connection.execute("RELEASE job")
                outcomes.append((job.future, result, None))
            connection.execute("COMMIT")
        except sqlite3.Error as exc:
            if connection.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    connection.execute("ROLLBACK")
            return [(job.future, None, _raised(job.what, exc)) for job in batch]
        return outcomes

    def _deliver(self, outcomes: list[_Outcome]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            self._loop.call_soon_threadsafe(_answer, outcomes)

    def _deliver_state(self, future: asyncio.Future[None], error: BaseException | None) -> None:
        self._deliver([(future, None, error)])


def make_private(path: Path) -> None:
    """Make the database file (if missing) and its journals its owner's alone; raises OSError."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE))
    for file in (path, *(path.with_name(path.name + suffix) for suffix in JOURNALS)):
        try:
            mode = file.stat().st_mode & 0o777
        except FileNotFoundError:
            continue
        if mode != PRIVATE:
            os.chmod(file, PRIVATE)
            log.warning("%s was mode %04o; it is %04o now, its owner's alone", file, mode, PRIVATE)


def _raised(what: str, exc: Exception) -> BaseException:
    if isinstance(exc, sqlite3.Error):
        error = StoreError(f"SQLite {what} failed: {exc}")
        error.__cause__ = exc
        return error
    return exc


def _answer(outcomes: list[_Outcome]) -> None:
    for future, result, error in outcomes:
        if future.done():  # its caller was cancelled
            continue
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)
