"""Process-wide budgets of bytes the gateway holds for clients that have not finished with
them: header bytes of requests whose headers are not complete yet, and answer bytes waiting
in send buffers for a client to read them.

Both are the client's choice to hold, not the gateway's: a client that never sends the blank
line after its headers, or never reads its answer, keeps those bytes in the process for as long
as it keeps its connection. Each connection's share is bounded on its own (the header bytes of
one request, the write timeout); these budgets bound their sum. Over a budget, the connections
holding the most bytes for the longest are closed, their bytes dropped: a client that sends
its headers or reads its answer at once holds little for a moment and is never the one chosen,
so an attacker holding the budget cannot keep others out of it.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
from collections.abc import Callable, Iterable
from typing import Protocol

from gateway import malloc

SCAN = 512  # holders looked at, oldest first, for the ones to drop: bounded work per refusal
LOW_WATER = 0.75  # over the budget, drop down to this fraction: not a scan for every read
TRIM_DELAY_SECONDS = 0.25  # a dropped answer's handler lets go of its copy a few turns later
TRIM_AGAIN_SECONDS = 1.0  # ... or many, while many handlers run


class Owner(Protocol):
    """A connection holding bytes."""

    def drop(self, reason: str) -> None:
        """Close it now, dropping what it holds, and release it from the budgets."""
        ...


class Held:
    """What one connection holds of one budget: ``bytes``, held since ``since`` (when its
    headers began; when its answer last made progress). The budget keeps its owner, not this,
    so a connection and its counts make no reference cycle."""

    __slots__ = ("bytes", "since")

    def __init__(self) -> None:
        self.bytes = 0
        self.since = 0.0


def weight(held: Held, now: float) -> float:
    """How much ``held`` deserves to be dropped: its bytes, the more the longer it held them."""
    return held.bytes * (1.0 + max(0.0, now - held.since))


def choose(holders: Iterable[Held], excess: int, now: float) -> list[Held]:
    """The holders to drop to free at least ``excess`` bytes (all of them if they hold less),
    heaviest first. Pure."""
    chosen: list[Held] = []
    freed = 0
    for held in sorted(holders, key=lambda h: weight(h, now), reverse=True):
        if freed >= excess:
            break
        chosen.append(held)
        freed += held.bytes
    return chosen


class ByteBudget:
    """At most ``max_bytes`` held, all connections together; ``reason`` names its drops.
    ``total`` counts, beside what holders hold, bytes ``reserved`` for what is not held by a
    connection yet (:mod:`gateway.answer_room`): never dropped, released by their owner.
    ``on_freed`` is told whenever the total goes down."""

    def __init__(self, max_bytes: int, reason: str) -> None:
        self.max_bytes = max_bytes
        self.reason = reason
        self.total = 0
        self.reserved = 0
        self.on_freed: Callable[[], None] | None = None
        self._holders: dict[Held, Owner] = {}  # in the order they began to hold

    @property
    def holders(self) -> int:
        return len(self._holders)

    def add(self, held: Held, count: int, now: float, owner: Owner) -> None:
        """``held`` (of ``owner``) holds ``count`` bytes more (since ``now`` if it held none)."""
        if held not in self._holders:
            self._holders[held] = owner
            held.since = now
        held.bytes += count
        self.total += count
        if count < 0:
            self._freed()

    def set(self, held: Held, count: int, now: float, owner: Owner) -> None:
        """``held`` (of ``owner``) holds ``count`` bytes now."""
        self.add(held, count - held.bytes, now, owner)

    def release(self, held: Held) -> None:
        """``held`` holds nothing any more (idempotent)."""
        if held in self._holders:
            del self._holders[held]
            self.total -= held.bytes
            if held.bytes:
                self._freed()
        held.bytes = 0

    def reserve(self, count: int) -> None:
        """``count`` bytes more reserved."""
        self.reserved += count
        self.total += count

    def unreserve(self, count: int) -> None:
        """``count`` bytes reserved no more."""
        self.reserved -= count
        self.total -= count
        self._freed()

    def _freed(self) -> None:
        if self.on_freed is not None:
            self.on_freed()

    def make_room(self, count: int, now: float, asking: Held | None = None) -> bool:
        """Drop the heaviest holders until ``count`` more bytes fit with room to spare; False
        if ``asking`` (which wants the room) was one of them, or no room could be made."""
        excess = self.total + count - int(self.max_bytes * LOW_WATER)
        if excess <= 0:
            return True
        candidates = list(itertools.islice(self._holders, SCAN))
        if asking is not None and asking.bytes and asking not in candidates:
            candidates.append(asking)
        dropped = False
        for held in choose(candidates, excess, now):
            dropped = dropped or held is asking
            owner = self._holders.get(held)
            if owner is not None:
                owner.drop(self.reason)  # lets go of what it held, as it closes
            self.release(held)
        return not dropped and self.total + count <= self.max_bytes


class Trim:
    """Gives memory that connections held back to the system once they have let go of a
    mebibyte of it (glibc keeps what is freed in its heap, see :mod:`gateway.malloc`): soon,
    and once more a second later, as a dropped answer's handler lets go of its copy some loop
    turns after the drop (many turns when many handlers run at once); once for many
    connections, not once each."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._handle: asyncio.TimerHandle | None = None
        self._freed = 0
        self._again = False  # a second trim is due after the next

    def freed(self, count: int) -> None:
        """Connections let go of ``count`` bytes they held."""
        self._freed += count
        if self._freed >= malloc.TRIM_AFTER_BYTES:
            self._freed = 0
            self._again = True
            if self._handle is None:
                self._handle = self._loop.call_later(TRIM_DELAY_SECONDS, self._run)

    def _run(self) -> None:
        self._handle = None
        # The handler of a client that went away ends in a ConnectionError, whose traceback
        # and frames make a reference cycle holding its answer: the collector frees it, not
        # its last reference. A full collection: the answer has aged by then; at most twice
        # a second, and only while connections are being dropped.
        gc.collect()
        malloc.release_freed_memory()
        if self._again:
            self._again = False
            self._handle = self._loop.call_later(TRIM_AGAIN_SECONDS, self._run)
