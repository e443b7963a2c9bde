"""A small in-process cache of hot answers in front of the store.

Entries are decoded (their JSON ready to splice) and keyed like the store, so a request whose
inputs are all hot costs no store round trip and no float decoding. What a key holds never
changes (the key covers model, kind, scope and content); URL entries carry their freshness, which
is checked on every use. Bounded by bytes, least recently used out first.
"""

from __future__ import annotations

from collections.abc import Iterable

from gateway.entries import Entry
from gateway.lru import ByteLRU

ENTRY_OVERHEAD = 180  # bytes of Python objects per entry beyond its JSON and base64


class HotCache:
    def __init__(self, max_bytes: int) -> None:
        self._entries = ByteLRU[Entry](max_bytes, _size)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def used_bytes(self) -> int:
        return self._entries.used_bytes

    def get(self, keys: Iterable[str], now: float) -> dict[str, Entry]:
        found: dict[str, Entry] = {}
        for key in keys:
            entry = self._entries.get(key)
            if entry is None:
                continue
            if not entry.fresh(now):
                self._entries.pop(key)
                continue
            found[key] = entry
        return found

    def put(self, key: str, entry: Entry) -> None:
        self._entries.put(key, entry)


def _size(key: str, entry: Entry) -> int:
    return len(key) + len(entry.embedding_json) + len(entry.base64) + ENTRY_OVERHEAD
