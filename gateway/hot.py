"""A small in-process cache of hot answers in front of the store.

Entries are decoded (their JSON ready to splice) and keyed like the store, so a request whose
inputs are all hot costs no store round trip and no float decoding. What a key holds never
changes (the key covers model, kind and content); URL entries carry their freshness, which
is checked on every use. Bounded by bytes, least recently used out first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from gateway.entries import Entry

ENTRY_OVERHEAD = 150  # bytes of Python objects per entry beyond its JSON


class HotCache:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.used_bytes = 0
        self._entries: OrderedDict[str, Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, keys: Iterable[str], now: float) -> dict[str, Entry]:
        found: dict[str, Entry] = {}
        for key in keys:
            entry = self._entries.get(key)
            if entry is None:
                continue
            if entry.fresh_until and entry.fresh_until <= now:
                self._drop(key)
                continue
            self._entries.move_to_end(key)
            found[key] = entry
        return found

    def put(self, key: str, entry: Entry) -> None:
        if self.max_bytes <= 0:
            return
        self._drop(key)
        size = _size(key, entry)
        if size > self.max_bytes:
            return
        self._entries[key] = entry
        self.used_bytes += size
        while self.used_bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.used_bytes -= _size(key, entry)


def _size(key: str, entry: Entry) -> int:
    return len(key) + len(entry.embedding_json) + ENTRY_OVERHEAD
