"""Team keys → teams, with a short in-process cache in front of the ledger.

A key's lookup, found or not, is cached for ``cache_seconds``: a revoked key stops working
within that time, and a flood of wrong keys costs the store one read per key per period.
Keys found and keys not found are cached apart, each least recently used first out: a flood
of random well-formed keys evicts only other unknown keys (``MAX_UNKNOWN``), never a team's
(``MAX_KNOWN``). While the store cannot be read, a key keeps what the store last said of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import math
import time
from collections.abc import Callable
from typing import NamedTuple

from gateway import metrics
from gateway.errors import StoreUnavailable, Unauthorized
from gateway.lru import ByteLRU
from gateway.store import StoreError
from gateway.store.base import Ledger
from gateway.teams import KeyRecord, Team, key_hash, well_formed

MAX_KNOWN = 50_000  # keys found in the store, least recently used evicted first
MAX_UNKNOWN = 10_000  # keys not found (a flood of guesses evicts only its own)
TOUCH_EVERY_SECONDS = 60.0


class _Cached(NamedTuple):
    until: float
    record: KeyRecord | None
    team: Team | None


class Authenticator:
    def __init__(
        self,
        ledger: Ledger,
        cache_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._ledger = ledger
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._known: ByteLRU[_Cached] = ByteLRU(MAX_KNOWN, _one)
        self._unknown: ByteLRU[_Cached] = ByteLRU(MAX_UNKNOWN, _one)
        self._touched: ByteLRU[float] = ByteLRU(MAX_KNOWN, _one)
        self._tasks: set[asyncio.Task[None]] = set()

    async def team_for(self, authorization: str | None) -> Team:
        """The team whose key the ``Authorization`` header carries; raises 401s."""
        key = _bearer(authorization)
        sha = key_hash(key)
        now = self._clock()
        cached = self._known.get(sha) or self._unknown.get(sha)
        if cached is None or cached.until <= now:
            try:
                cached = await self._load(sha, now)
            except StoreUnavailable:
                if cached is None:
                    raise
                # The store is down: what it last said of this key stands until it is back.
        record, team = cached.record, cached.team
        # A key older than its team was made for an earlier team of the same id.
        if (
            record is None
            or team is None
            or not record.usable(now)
            or record.created < team.created
        ):
            raise Unauthorized("unknown, revoked or expired team key")
        self._touch(record, now)
        return team

    async def _load(self, sha: str, now: float) -> _Cached:
        try:
            record = await self._ledger.get_key(sha)
            team = await self._ledger.get_team(record.team) if record is not None else None
        except StoreError as exc:
            raise StoreUnavailable(
                "the key store is unavailable; retry shortly", retry_after=1
            ) from exc
        if team is not None:
            _export_limits(team)
        cached = _Cached(now + self._cache_seconds, record, team)
        if record is None:
            self._known.pop(sha)
            self._unknown.put(sha, cached)
        else:
            self._unknown.pop(sha)
            self._known.put(sha, cached)
        return cached

    def _touch(self, record: KeyRecord, now: float) -> None:
        """Note when a key was last used, at most once a minute per key and process."""
        if now - (self._touched.get(record.sha256) or 0.0) < TOUCH_EVERY_SECONDS:
            return
        self._touched.put(record.sha256, now)
        task = asyncio.create_task(self._write_touch(record, now))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write_touch(self, record: KeyRecord, now: float) -> None:
        with contextlib.suppress(StoreError):  # informational: the next use tries again
            await self._ledger.touch_key(record, now)

    async def drain(self) -> None:
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _one(_key: str, _value: object) -> int:
    return 1


def bearer_matches(authorization: str | None, token: str) -> bool:
    """Whether ``authorization`` is ``Bearer <token>``, compared in constant time."""
    given = (authorization or "").encode("utf-8", "surrogateescape")
    return hmac.compare_digest(given, f"Bearer {token}".encode())


def _bearer(authorization: str | None) -> str:
    if not authorization:
        raise Unauthorized("missing team key: send Authorization: Bearer nk-...")
    scheme, _, key = authorization.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not well_formed(key):
        raise Unauthorized("malformed team key: expected Authorization: Bearer nk-<43 characters>")
    return key


def _export_limits(team: Team) -> None:
    # Unlimited is +Inf, not a removed series: --workers' multiprocess metrics cannot remove
    # one, and "billed > 0.9 * limit" stays false without special cases.
    for name, value in team.limits.to_json().items():
        limit = math.inf if value is None else value
        metrics.TEAM_LIMIT.labels(team=team.id, limit=name).set(limit)
