"""The embedded store: an in-process LRU bounded by bytes, for one process on one machine."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

# What CPython spends per entry beyond the key and value bytes (dict slot, tuple, objects).
ENTRY_OVERHEAD = 200


class MemoryStore:
    """Least-recently-used eviction once the entries' bytes pass ``max_bytes``."""

    def __init__(self, max_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_bytes = max_bytes
        self.used_bytes = 0
        self._clock = clock
        self._entries: OrderedDict[str, tuple[bytes, float | None]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        now = self._clock()
        return [self._get(key, now) for key in keys]

    def _get(self, key: str, now: float) -> bytes | None:
        found = self._entries.get(key)
        if found is None:
            return None
        value, expires = found
        if expires is not None and expires <= now:
            self._remove(key)
            return None
        self._entries.move_to_end(key)
        return value

    async def set_many(self, items: Sequence[tuple[str, bytes]], ttl_seconds: int | None) -> None:
        expires = None if ttl_seconds is None else self._clock() + ttl_seconds
        for key, value in items:
            self._remove(key)
            size = _cost(key, value)
            if size > self.max_bytes:
                continue
            self._entries[key] = (value, expires)
            self.used_bytes += size
        while self.used_bytes > self.max_bytes:
            self._remove(next(iter(self._entries)))

    def _remove(self, key: str) -> None:
        found = self._entries.pop(key, None)
        if found is not None:
            self.used_bytes -= _cost(key, found[0])

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        self._entries.clear()
        self.used_bytes = 0


def _cost(key: str, value: bytes) -> int:
    return len(key) + len(value) + ENTRY_OVERHEAD
