"""A rate: so many units a second, and so many at once, held as the generic cell rate
algorithm (GCRA) holds it, in one number: the theoretical arrival time (TAT) of the next unit.
Spending is one step that reads and writes that number, so a store can make it atomic: the
embedded ledger runs :func:`spend`, the Redis ledger the same rule in ``lua/spend.lua``."""

from __future__ import annotations

import math

# Rounding of the clock's milliseconds (about 1e12: a double's last bits are 1e-4 ms) once made
# spending exactly what a full rate holds come out a hair over it, refused about one time in
# five; no real spend is over by less than a microsecond.
TOLERANCE_MS = 0.001


def spend(
    tat_ms: float, now_ms: float, cost: int, per_second: float, at_once: int
) -> tuple[float, int]:
    """Spend ``cost`` units at ``now_ms`` of a rate whose TAT is ``tat_ms``: the new TAT and 0;
    or, when fewer than ``cost`` are left of the ``at_once`` a full rate holds, ``tat_ms``
    unchanged (nothing spent) and the ms until they would be left (at least 1)."""
    interval = 1000 / per_second
    after = max(tat_ms, now_ms) + cost * interval
    over = after - now_ms - at_once * interval
    if over > TOLERANCE_MS:
        return tat_ms, max(1, math.ceil(over))
    return after, 0


class Rates:
    """Rates by key (a team's usage reads, an address's sign-ins) for a store that keeps them
    in its process. A key whose TAT has passed holds nothing :func:`spend` would not start
    from anyway, so such keys are dropped whenever the keys reach twice what was kept after
    the last drop (and at least ``prune_at``): memory bounded by the keys of the last
    ``at_once / per_second`` seconds, the work amortised over the spends."""

    def __init__(self, prune_at: int = 10_000) -> None:
        self._tats: dict[str, float] = {}  # key → its TAT, in ms
        self._least = self._prune_at = prune_at

    def __len__(self) -> int:
        return len(self._tats)

    def spend(self, key: str, now_ms: float, cost: int, per_second: float, at_once: int) -> int:
        """:func:`spend` on ``key``'s rate: the ms to wait, 0 if spent."""
        if len(self._tats) >= self._prune_at:
            self._tats = {k: tat for k, tat in self._tats.items() if tat > now_ms}
            self._prune_at = max(self._least, 2 * len(self._tats))
        tat = self._tats.get(key, 0.0)
        self._tats[key], wait = spend(tat, now_ms, cost, per_second, at_once)
        return wait
