"""The embedded store: an in-process LRU bounded by bytes, for one process on one machine."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from gateway.lru import ByteLRU

# What CPython spends per entry beyond the key and value bytes (dict slot, tuple, objects).
ENTRY_OVERHEAD = 200


class MemoryStore:
    """Least-recently-used eviction once the entries' bytes pass ``max_bytes``."""

    def __init__(self, max_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._entries = ByteLRU[tuple[bytes, float | None]](max_bytes, _cost)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def used_bytes(self) -> int:
        return self._entries.used_bytes

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        now = self._clock()
        return [self._get(key, now) for key in keys]

    def _get(self, key: str, now: float) -> bytes | None:
        found = self._entries.get(key)
        if found is None:
            return None
        value, expires = found
        if expires is not None and expires <= now:
            self._entries.pop(key)
            return None
        return value

    async def set_many(self, items: Sequence[tuple[str, bytes]], ttl_seconds: int | None) -> None:
        expires = None if ttl_seconds is None else self._clock() + ttl_seconds
        for key, value in items:
            self._entries.put(key, (value, expires))

    async def ping(self) -> None:
        return None


def _cost(key: str, entry: tuple[bytes, float | None]) -> int:
    return len(key) + len(entry[0]) + ENTRY_OVERHEAD
