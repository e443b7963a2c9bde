"""A rate: so many units a second, and so many at once, held as the generic cell rate
algorithm (GCRA) holds it, in one number: the theoretical arrival time (TAT) of the next unit.
Spending is one step that reads and writes that number, so a store can make it atomic: the
embedded ledger runs :func:`spend`, the Redis ledger the same rule in ``lua/spend.lua``."""

from __future__ import annotations

import math


def spend(
    tat_ms: float, now_ms: float, cost: int, per_second: float, at_once: int
) -> tuple[float, int]:
    """Spend ``cost`` units at ``now_ms`` of a rate whose TAT is ``tat_ms``: the new TAT and 0;
    or, when fewer than ``cost`` are left of the ``at_once`` a full rate holds, ``tat_ms``
    unchanged (nothing spent) and the ms until they would be left (at least 1)."""
    interval = 1000 / per_second
    after = max(tat_ms, now_ms) + cost * interval
    over = after - now_ms - at_once * interval
    if over > 0:
        return tat_ms, max(1, math.ceil(over))
    return after, 0
