"""A least-recently-used map bounded by the bytes its entries take."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

V = TypeVar("V")


class ByteLRU(Generic[V]):
    """Past ``max_bytes`` (as ``size`` counts each entry), the least recently used go."""

    def __init__(self, max_bytes: int, size: Callable[[str, V], int]) -> None:
        self.max_bytes = max_bytes
        self.used_bytes = 0
        self._size = size
        self._entries: OrderedDict[str, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> V | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: str, value: V) -> None:
        self.pop(key)
        size = self._size(key, value)
        if size > self.max_bytes:
            return  # larger than the whole map: not kept
        self._entries[key] = value
        self.used_bytes += size
        while self.used_bytes > self.max_bytes:
            self.pop(next(iter(self._entries)))

    def pop(self, key: str) -> None:
        value = self._entries.pop(key, None)
        if value is not None:
            self.used_bytes -= self._size(key, value)

    def clear(self) -> None:
        self._entries.clear()
        self.used_bytes = 0
