"""The embedded store's directory (``GATEWAY_DATA_DIR``): two SQLite files and a lock.

- ``ledger.sqlite3``: teams, keys, usage and quota counters (:mod:`gateway.store.sqlite_ledger`),
  never evicted;
- ``cache.sqlite3``: the embedding cache (:mod:`gateway.store.sqlite`), bounded by
  ``GATEWAY_DISK_CACHE_BYTES``; deleting it (gateway stopped) empties the cache, nothing else;
- ``lock``: held by the one process that serves from the directory, its pid inside; a second
  process is refused, whatever it would do to the files.

Each file has its own thread, so cache writes never wait for a decision or the other way round.

The ledger holds the console's session secret and the keys' hashes, so every file is its
owner's alone (0600, whatever the umask; tightened at start if it is not). A directory other
users can write is refused: whoever can write it can replace the files, whatever their
permissions. One they can only list (a 0755 made by hand) is used, with a warning: they see
the files' names, nothing in them; it is left as the operator made it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import stat
from pathlib import Path

from gateway import unattributed
from gateway.config import MEMORY_DATA_DIR
from gateway.store.base import StoreError
from gateway.store.sqlite import SCHEMA as CACHE_SCHEMA
from gateway.store.sqlite import SqliteStore
from gateway.store.sqlite_backend import PRIVATE, SqliteBackend
from gateway.store.sqlite_ledger import SCHEMA as LEDGER_SCHEMA
from gateway.store.sqlite_ledger import SqliteLedger
from gateway.tags import DEFAULT_TAGS_PER_DAY

log = logging.getLogger(__name__)


class DataDirError(Exception):
    """The directory cannot be served from; the message names the setting, in one line."""


class DataDir:
    """The open directory: ``store`` and ``ledger``, until :meth:`close`."""

    def __init__(
        self, path: Path, lock: int, ledger: SqliteBackend, cache: SqliteBackend, cache_bytes: int,
        tags_per_day: int = DEFAULT_TAGS_PER_DAY,
    ) -> None:  # fmt: skip
        self.path = path
        self._lock = lock
        self._backends = (ledger, cache)
        self.ledger = SqliteLedger(ledger, tags_per_day=tags_per_day)
        self.store = SqliteStore(cache, cache_bytes)

    @classmethod
    async def open(
        cls, path: Path, cache_bytes: int, tags_per_day: int = DEFAULT_TAGS_PER_DAY
    ) -> DataDir:
        """Lock the directory (made if missing) and open its files; raises DataDirError.
        ``tags_per_day``: a team's most tags a day (:mod:`gateway.tags`)."""
        lock = take_lock(path)
        if (mode := _mode(path)) & 0o077:
            log.warning(
                "GATEWAY_DATA_DIR=%s can be listed by other users (mode %04o): they see its "
                "files' names, not what is in them (each is its owner's alone, %04o); chmod 700 "
                "it to hide the names too", path, mode, PRIVATE,
            )  # fmt: skip
        opened: list[SqliteBackend] = []
        try:
            for name, schema in (("ledger", LEDGER_SCHEMA), ("cache", CACHE_SCHEMA)):
                opened.append(await SqliteBackend.open(path / f"{name}.sqlite3", schema))
            ledger, cache = opened
            data = cls(path, lock, ledger, cache, cache_bytes, tags_per_day)
            released, tokens = await data.ledger.release_leftovers()
        except StoreError as exc:
            for backend in opened:
                await backend.close()
            os.close(lock)
            raise DataDirError(f"GATEWAY_DATA_DIR={path} cannot be used: {exc}") from exc
        if released:
            whose = f"requests that the last process to use {path} did not settle (it was killed)"
            unattributed.count_killed(released, tokens, whose)
        return data

    async def close(self) -> None:
        for backend in self._backends:
            await backend.close()
        os.close(self._lock)


def take_lock(path: Path) -> int:
    """The directory's lock, held (a descriptor to close); raises DataDirError if the
    directory cannot be made or written, others can write it, or another process holds the
    lock."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not os.access(path, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied")
        if (mode := _mode(path)) & 0o022:
            raise DataDirError(
                f"GATEWAY_DATA_DIR={path} can be written by other users (mode {mode:04o}), who "
                "could replace the files that hold the teams, keys and the console's secret: "
                "chmod 700 it (or set another directory)"
            )
        lock = os.open(path / "lock", os.O_RDWR | os.O_CREAT, PRIVATE)
    except OSError as exc:
        raise DataDirError(
            f"GATEWAY_DATA_DIR={path} is not a writable directory ({exc.strerror or exc}): set "
            f"it to one (or to {MEMORY_DATA_DIR} to keep nothing past the process)"
        ) from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.read(lock, 32).decode(errors="replace").strip() or "unknown"
        os.close(lock)
        raise DataDirError(
            f"GATEWAY_DATA_DIR={path} is in use by another gateway process (pid {holder}): the "
            "embedded store is one process's own; stop that process, choose another directory, "
            "or share a Redis (GATEWAY_REDIS_URL)"
        ) from None
    os.ftruncate(lock, 0)
    os.write(lock, f"{os.getpid()}\n".encode())
    return lock


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def check(path: Path) -> None:
    """Raise DataDirError if the directory could not be served from now (said in one line
    before start-up rather than as a traceback during it)."""
    os.close(take_lock(path))
