"""A team's calls to Nomic a minute (``upstream_calls_per_minute``), counted where they are made.

The per-minute limits on inputs (``texts_per_minute``, ``images_per_minute``) are decided when
a request is admitted, before anyone knows how its misses will be batched: ten one-text
requests of a team with the same options go up in one call, ten whose texts each carry their
own options in ten. Nomic's own limit counts calls, so this limit counts calls too, as the
shield (:mod:`gateway.shield`) makes them:

- In a team's turn, before the rate's next call is taken for a batch, :meth:`TeamCalls.charge`
  counts one call for each team with a limit whose items the batch will hold. A text call holds
  one team's texts; an image or URL call may hold several teams' items, and counts one whole
  call for each of them: a team's count is then the number of calls its items went up in, so
  its limit bounds the calls it takes part in (a share by items would let a team with one item
  in each of many shared calls be counted a fraction of them).
- A call counts once: its retries after Nomic failed, and its resends without an item Nomic
  refused, are not counted again (they are bounded by the shield's attempts and resends). A
  batch counted that then cannot go (the rate or a slot came too late) is given back.
- The count is one atomic check-and-add per team and UTC minute in the store, shared by
  every replica (``lua/team_call.lua`` on Redis): in no minute are more calls counted for a
  team than its limit, however many replicas race.
- A team whose calls of the minute are made sends nothing more until the minute ends: its
  turns pass to the other teams, its queued misses wait for the next minute, and those whose
  request's deadline comes first are failed with a ``429`` (:class:`CallsUsedUp`,
  ``Retry-After`` the seconds left of the minute; nothing is billed for them).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Collection, Iterable
from typing import NamedTuple

from gateway import metrics, quota
from gateway.errors import CallsUsedUp
from gateway.store import StoreError
from gateway.store.base import Coordinator

log = logging.getLogger(__name__)

LIMIT = "upstream_calls_per_minute"


class Charge(NamedTuple):
    """The calls counted for one batch: the UTC minute they count in, and the teams counted."""

    minute: int
    teams: frozenset[str]


def must_fail(deadline: float, now: float, minute_left: float) -> bool:
    """Whether a miss of a team whose calls of the minute are made must fail now: its
    request's ``deadline`` comes before the minute's end (``minute_left`` seconds after
    ``now``), when the team may call again."""
    return deadline <= now + minute_left


class TeamCalls:
    """Each team's limit as its latest request carried it, the count of its calls in the
    store, and which teams this process knows to have made their calls this minute (they
    are refused without asking the store again until it ends). ``clock``: wall-clock
    seconds, for the UTC minute."""

    def __init__(self, coordinator: Coordinator, clock: Callable[[], float] = time.time) -> None:
        self._coordinator = coordinator
        self._clock = clock
        self._limits: dict[str, int] = {}
        self._used_up: dict[str, int] = {}  # team → the minute it made its calls in

    def note(self, team: str, limit: int | None) -> None:
        """``team``'s limit (None: unlimited), as its latest request was admitted with. A
        limit changed (by an admin) is asked of the store again."""
        if self._limits.get(team) == limit:
            return
        self._used_up.pop(team, None)
        if limit is None:
            self._limits.pop(team, None)
        else:
            self._limits[team] = limit

    def limited(self, team: str) -> bool:
        return team in self._limits

    def used_up(self, team: str) -> float | None:
        """The seconds until ``team`` may call again, if it is known to have made its calls
        this minute; else None."""
        minute = self._used_up.get(team)
        if minute is None:
            return None
        at = quota.window(self._clock())
        if at.minute != minute:
            del self._used_up[team]
            return None
        return at.minute_reset

    async def charge(self, teams: Iterable[str]) -> Charge:
        """Count one call this minute for each of ``teams`` that has a limit and calls left
        (all at once, a round trip each); those counted. The others are remembered as out
        of calls until the minute ends. Raises :class:`StoreError` (nothing counted)."""
        at = quota.window(self._clock())
        asking = [team for team in set(teams) if team in self._limits and not self._out(team)]
        if not asking:
            return Charge(at.minute, frozenset())
        taken = await asyncio.gather(
            *(self._coordinator.take_team_call(team, at.minute, self._limits[team])
              for team in asking),
            return_exceptions=True,
        )  # fmt: skip
        charged = frozenset(team for team, took in zip(asking, taken, strict=True) if took is True)
        failure = next((took for took in taken if isinstance(took, BaseException)), None)
        if failure is not None:
            await self.give_back(Charge(at.minute, charged), charged)
            raise failure
        for team, took in zip(asking, taken, strict=True):
            if took is False:
                self._used_up[team] = at.minute
        return Charge(at.minute, charged)

    async def give_back(self, charge: Charge, teams: Collection[str]) -> None:
        """Uncount the calls of ``teams`` that ``charge`` counted and that never went."""
        if not teams:
            return
        try:
            await asyncio.gather(
                *(self._coordinator.give_back_team_call(team, charge.minute) for team in teams)
            )
        except StoreError as exc:
            log.warning("upstream calls counted but not made, not given back: %s", exc)

    def refusal(self, team: str, requests: int = 1) -> CallsUsedUp:
        """The error of ``requests`` requests of ``team`` whose misses cannot wait for the
        minute's end."""
        at = quota.window(self._clock())
        reset = max(1, math.ceil(at.minute_reset))
        limit = self._limits.get(team, 0)
        metrics.QUOTA_REJECTIONS.labels(team=team, limit=LIMIT).inc(requests)
        return CallsUsedUp(
            f"this team has made all {limit} calls to Nomic of its {LIMIT} limit this "
            f"minute, and this request's deadline comes before the minute ends (texts that "
            f"each carry options of their own take a call each; texts sent with the same "
            f"options share calls, 10 a call)",
            loc=("limits", LIMIT),
            retry_after=reset,
            headers={
                "X-RateLimit-Limit": str(limit),
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": str(reset),
            },
        )

    def _out(self, team: str) -> bool:
        return self.used_up(team) is not None
