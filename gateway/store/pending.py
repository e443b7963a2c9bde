"""Settles the store has not taken yet, kept in the process until it takes writes again.

While Redis refuses writes (full at its ``maxmemory``, or down) every request's settle comes
here; kept one by one, they would grow with the outage. So what the store surely did not run
(:class:`StoreRefused`, or not asked) is merged: per team, day, month and tag one settle of
the sum of its tokens and usage, under an id of its own. Of a request admitted in the store
before the failure only its id is kept beside that, to release what it reserved there. A
settle that may have run (it timed out) is kept whole, under its own id, until the store
answers: the store applies each id once, so writing it again cannot count it twice.

Memory is then bounded by the teams and days with usage (their tags: past ``MOST_MERGED``
settles kept, a new tag's counts merge under ``other``), the requests under way when the
store began to fail, and those whose settle timed out; ids to release past ``MOST_IDS`` are
let go of (logged): what they reserved stays reserved in the store until its lease lapses
(:mod:`gateway.store.redis_ledger`).
What is kept here is lost only with the process.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import Counter

from gateway import metrics, tags
from gateway.store.base import QuotaLedger, Settlement, StoreError, StoreRefused

log = logging.getLogger(__name__)
MOST_IDS = 100_000  # ids kept to release their reservations: a few MB at most
MOST_MERGED = 100_000  # merged settles; past it a new tag's counts merge under other

Day = tuple[str, str, str]  # team, day, month
Tagged = tuple[str, str, str, str]  # team, day, month, tag


class PendingSettles:
    """The settles to make once the store takes writes; :attr:`failing` while it does not."""

    def __init__(self, most_ids: int = MOST_IDS) -> None:
        self._most_ids = most_ids
        self._merged: dict[Tagged, Settlement] = {}
        self._releases: dict[Day, dict[str, None]] = {}  # ids, in the order they came
        self._whole: list[Settlement] = []  # may have run: written again under their ids
        self._writing = asyncio.Lock()
        self.failing = False  # the store's last write failed, and nothing has been written since

    def __len__(self) -> int:
        ids = sum(map(len, self._releases.values()))
        return len(self._merged) + ids + len(self._whole)

    def add(
        self, settlement: Settlement, *, reserved: bool = False, failure: StoreError | None = None
    ) -> None:
        """Keep ``settlement`` to make later. ``reserved``: its id may hold a reservation in
        the store. ``failure``: why the store did not take it (None: it was not asked)."""
        if failure is not None:
            self.failing = True
        maybe_ran = failure is not None and not isinstance(failure, StoreRefused)
        if maybe_ran and (settlement.billed or any(settlement.usage.values())):
            self._whole.append(settlement)
        else:
            self._merge(settlement)
            if reserved or maybe_ran:
                self._release(settlement)
        metrics.USAGE_PENDING.set(len(self))

    def _merge(self, settlement: Settlement) -> None:
        if not settlement.billed and not any(settlement.usage.values()):
            return
        day: Tagged = (settlement.team_id, settlement.day, settlement.month, settlement.tag)
        if day not in self._merged and len(self._merged) >= MOST_MERGED:
            day, settlement = (*day[:3], tags.OTHER), settlement._replace(tag=tags.OTHER)
        kept = self._merged.get(day)
        if kept is None:  # under an id of its own: the request's may be released apart
            fresh = secrets.token_hex(16)
            self._merged[day] = settlement._replace(
                request_id=fresh, usage=Counter(settlement.usage)
            )
            return
        kept.usage.update(settlement.usage)
        self._merged[day] = kept._replace(billed=kept.billed + settlement.billed)

    def _release(self, settlement: Settlement) -> None:
        day: Day = (settlement.team_id, settlement.day, settlement.month)
        self._releases.setdefault(day, {})[settlement.request_id] = None
        if sum(map(len, self._releases.values())) > self._most_ids:
            oldest = next(iter(self._releases))
            dropped = next(iter(self._releases[oldest]))
            del self._releases[oldest][dropped]
            if not self._releases[oldest]:
                del self._releases[oldest]
            log.warning(
                "more than %d reservations wait to be released: one of team %s stays "
                "reserved until its day ends", self._most_ids, oldest[0],
            )  # fmt: skip

    async def write(self, ledger: QuotaLedger) -> None:
        """Make every settle kept; what the store does not take stays for the next write."""
        async with self._writing:
            try:
                await self._write(ledger)
            except StoreError as exc:
                self.failing = True
                metrics.STORE_ERRORS.labels(operation="usage").inc()
                log.warning("%d usage records kept in memory: %s", len(self), exc)
            else:
                self.failing = False
            finally:
                metrics.USAGE_PENDING.set(len(self))

    async def _write(self, ledger: QuotaLedger) -> None:
        while self._whole:
            await ledger.settle(*self._whole[0])
            self._whole.pop(0)
        for day in list(self._releases):
            team_id, on, month = day
            ids = list(self._releases[day])
            done = await asyncio.gather(  # of one team and day: few script calls
                *(ledger.settle(team_id, on, month, i, 0, Counter()) for i in ids),
                return_exceptions=True,
            )
            kept = self._releases.get(day, {})  # ids may have come meanwhile
            for request_id, outcome in zip(ids, done, strict=True):
                if isinstance(outcome, BaseException) and not isinstance(outcome, StoreError):
                    raise outcome
                if outcome is None:
                    kept.pop(request_id, None)
            if not kept:
                self._releases.pop(day, None)
            failed = [outcome for outcome in done if isinstance(outcome, StoreError)]
            if failed:
                raise failed[0]
        for tagged in list(self._merged):
            settlement = self._merged.pop(tagged)  # sealed: what comes meanwhile starts another
            try:
                await ledger.settle(*settlement)
            except StoreRefused:
                self._merge(settlement)  # it did not run: its id goes, its counts stay
                raise
            except BaseException:  # it may have run (timed out, or cancelled as it ran)
                self._whole.append(settlement)
                raise
