"""Learning what an image costs, once, before a budget can be passed by guessing.

Before an image's cost is known (no replica has seen Nomic answer for its model yet), a team
with a token budget sends its image misses one request at a time: the first answer teaches
the cost, so concurrent first requests cannot pass a budget together. What a replica learns
it shares through the ledger, and the others read it there before taking a turn.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from gateway.errors import Overloaded
from gateway.quota import TokenEstimator
from gateway.store import StoreError

log = logging.getLogger(__name__)


class CostLedger(Protocol):
    """Where replicas share what an item of a model costs."""

    async def item_cost(self, model: str) -> int | None: ...

    async def record_item_cost(self, model: str, tokens: int) -> None: ...


class CostLessons:
    """Whose turn it is to learn a model's item cost; a turn waited for at most
    ``wait_seconds`` (another request's deadline)."""

    def __init__(self, ledger: CostLedger, estimator: TokenEstimator, wait_seconds: float) -> None:
        self._ledger = ledger
        self._estimator = estimator
        self._wait_seconds = wait_seconds
        self._learning: dict[str, asyncio.Event] = {}
        self._recorded_cost: dict[str, int] = {}

    async def known_or_my_turn(self, model: str) -> bool:
        """Wait until the model's item cost is known, or until it is this request's turn to
        learn it (then True); raise :class:`Overloaded` (503) if neither comes within
        ``wait_seconds``: the requests learning before it each take up to their
        deadline, and may all fail."""
        end = asyncio.get_running_loop().time() + self._wait_seconds
        while not self._estimator.known(model):
            try:
                shared = await self._ledger.item_cost(model)
            except StoreError:
                shared = None
            if shared is not None:
                self._estimator.seed(model, shared)
                self._recorded_cost[model] = shared
                return False
            turn = self._learning.get(model)
            if turn is None:
                self._learning[model] = asyncio.Event()
                return True
            left = end - asyncio.get_running_loop().time()
            try:
                await asyncio.wait_for(turn.wait(), max(left, 0.0))
            except TimeoutError:
                raise Overloaded(
                    f"the cost of {model} is not known yet: an earlier request is learning it; "
                    "retry shortly",
                    retry_after=1,
                ) from None
        return False

    def end(self, model: str, learner: bool) -> None:
        """The request that was ``learner`` (or not) ended: the next may learn."""
        if learner:
            turn = self._learning.pop(model, None)
            if turn is not None:
                turn.set()

    async def share(self, model: str) -> None:
        """Tell the other replicas what this one learned of an item's cost, when it changed."""
        if not self._estimator.known(model):
            return
        cost = self._estimator.per_item(model)
        if self._recorded_cost.get(model) != cost:
            try:
                await self._ledger.record_item_cost(model, cost)
                self._recorded_cost[model] = cost
            except StoreError as exc:
                log.warning("could not share the learned item cost: %s", exc)
