"""The store protocol: only the methods the gateway uses."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class StoreError(Exception):
    """The store could not be reached or answered an error; the cause is chained."""


class Store(Protocol):
    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """The value of each key, in order; None where a key is absent or expired."""
        ...

    async def set_many(self, items: Sequence[tuple[str, bytes]], ttl_seconds: int | None) -> None:
        """Store every item; with a TTL they expire after it, without they never expire."""
        ...

    async def ping(self) -> None:
        """Return if the store is usable, raise :class:`StoreError` if not."""
        ...

    async def close(self) -> None: ...
