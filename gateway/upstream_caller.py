"""The shield's upstream caller: call slots, the rate, retries and the breaker.

Before a batch goes, it takes a slot of the global concurrency cap and the next call of the
global rate, both shared by all replicas through the store (a slot is a lease, renewed while
its call runs: one a dead process held lapses within a lease). Teams take turns for the
rate's calls (:class:`~gateway.turns.Turns`). A failed call is retried with exponential
backoff and jitter, honouring Nomic's Retry-After, within the batch's deadline; a circuit
breaker stops calling a Nomic that keeps failing. What to do after a failure is
:func:`~gateway.shield_policy.after_failure`'s to decide; a refused item is returned, as
:class:`Refused`, for the shield to judge.

The clock and the sleep are the caller's to give (the real ones by default).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import NamedTuple, Protocol

from gateway import metrics
from gateway.breaker import Breaker
from gateway.errors import GatewayError, UpstreamRateLimited, UpstreamUnavailable
from gateway.leases import Heartbeat
from gateway.models import Spec
from gateway.shield_policy import RETRYABLE, Policy, after_failure
from gateway.store import StoreError
from gateway.store.base import Coordinator
from gateway.turns import Turns
from gateway.upstream import UpstreamItemRejected, UpstreamResult

log = logging.getLogger(__name__)

STORE_DOWN = "the store that paces upstream calls is unavailable"


class Embedder(Protocol):
    async def embed(self, spec: Spec, items: Sequence[bytes]) -> UpstreamResult: ...


class Refused(NamedTuple):
    """Nomic refused the call because of the item at ``position``, saying ``msg``."""

    position: int
    msg: str


class Called(NamedTuple):
    """What a call came to: Nomic's answer, an item it refused, or the error to answer every
    item with; and the attempts it took (the next call of the batch counts on from there)."""

    outcome: UpstreamResult | Refused | GatewayError
    attempts: int


def store_down() -> UpstreamUnavailable:
    return UpstreamUnavailable(STORE_DOWN, retry_after=1)


class UpstreamCaller:
    def __init__(
        self,
        upstream: Embedder,
        coordinator: Coordinator,
        policy: Policy,
        breaker: Breaker,
        *,
        lease_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self._upstream = upstream
        self._coordinator = coordinator
        self.policy = policy
        self.breaker = breaker
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()  # noqa: S311 (jitter, not secrets)
        self.turns = Turns()  # the rate's calls, teams in turn
        self._holder = uuid.uuid4().hex
        self._slot_ids = itertools.count()
        self._slots = Heartbeat(
            coordinator.renew_slots, lease_seconds, "upstream call slots", sleep=sleep
        )
        self.call_seconds = 0.0  # how long upstream calls took lately (a moving average)

    def holder(self) -> str:
        """A name, unique over replicas, to hold a call slot by."""
        return f"{self._holder}:{next(self._slot_ids)}"

    async def start_at_once(self, holder: str, deadline: float) -> bool:
        """The slot and the rate's next call in one step (the caller holds the turn); False
        if every slot is held. Raises if the rate's call comes after ``deadline``."""
        left_ms = self._left_ms(deadline)
        wait_ms = await self._coordinator.start_call(
            holder, self.policy.concurrency, self._slots.lease_ms,
            self.policy.interval_ms, self.policy.rate_burst, left_ms,
        )  # fmt: skip
        if wait_ms is None:
            return False
        if wait_ms >= 0:  # taken (else given back already)
            self._slots.hold([holder])
        await self._wait_turn(wait_ms, left_ms)
        return True

    async def take_slot(self, holder: str, deadline: float) -> None:
        """A concurrency slot for ``holder``; raises if ``deadline`` passes first."""
        while not await self._coordinator.acquire_slot(
            holder, self.policy.concurrency, self._slots.lease_ms
        ):
            if self._clock() > deadline:
                raise UpstreamUnavailable("too many upstream calls in flight", retry_after=1)
            await self._sleep(0.005 + self._rng.uniform(0, 0.01))
        self._slots.hold([holder])

    async def pace(self, deadline: float) -> None:
        """Wait for the next call the global rate allows (the caller holds the turn), or
        raise if it comes after ``deadline``."""
        left_ms = self._left_ms(deadline)
        wait_ms = await self._coordinator.pace(
            self.policy.interval_ms, self.policy.rate_burst, left_ms
        )
        await self._wait_turn(wait_ms, left_ms)

    async def release(self, holder: str) -> None:
        self._slots.drop([holder])
        try:
            await self._coordinator.release_slot(holder)
        except StoreError as exc:
            log.warning("could not release an upstream slot (its lease will lapse): %s", exc)

    async def call(
        self, spec: Spec, contents: Sequence[bytes], deadline: float, turn: str, *,
        paced: bool, attempts: int = 0,
    ) -> Called:  # fmt: skip
        """Call Nomic for ``contents``, again after failures worth retrying (paced in
        ``turn``'s turn; the first call only if not ``paced`` already), until it answers,
        refuses an item, or the error is to be answered."""
        while True:
            try:
                if not paced:
                    async with self.turns.turn(turn):
                        await self.pace(deadline)
                paced = False
                started = self._clock()
                answer = await self._upstream.embed(spec, contents)
            except UpstreamItemRejected as rejected:
                self.breaker.record_success()  # Nomic answered: it is up
                return Called(Refused(rejected.index, rejected.msg), attempts)
            except GatewayError as exc:
                verdict = await self._after_failure(exc, attempts, deadline)
                if isinstance(verdict, GatewayError):
                    return Called(verdict, attempts)
                metrics.UPSTREAM_RETRIES.labels(reason=type(exc).__name__).inc()
                await self._sleep(verdict)
                attempts += 1
                continue
            except StoreError:  # the rate could not be paced for a retry
                return Called(store_down(), attempts)
            self.breaker.record_success()
            self.call_seconds += (self._clock() - started - self.call_seconds) / 8
            return Called(answer, attempts)

    async def stop(self) -> None:
        await self._slots.stop()

    def _left_ms(self, deadline: float) -> int:
        return max(0, round((deadline - self._clock()) * 1000))

    async def _wait_turn(self, wait_ms: int, left_ms: int) -> None:
        """Wait the ``wait_ms`` the rate gave, or raise if it gave none (a negative wait:
        the next call comes after the ``left_ms`` the batch has)."""
        if wait_ms < 0:
            raise UpstreamUnavailable(
                "Nomic's rate is used up for now", retry_after=left_ms / 1000 or 1
            )
        if wait_ms:
            metrics.UPSTREAM_PACED_SECONDS.observe(wait_ms / 1000)
            await self._sleep(wait_ms / 1000)

    async def _after_failure(
        self, error: GatewayError, attempt: int, deadline: float
    ) -> float | GatewayError:
        """Record a failed call (Nomic's pause for every replica, or the breaker), and
        decide: seconds before the retry, or the error to answer."""
        if isinstance(error, UpstreamRateLimited):
            await self._hold(error.retry_after)  # a rate limit is Nomic working, not failing
        elif isinstance(error, RETRYABLE):
            self.breaker.record_failure()
        return after_failure(
            error, attempt, self.policy, breaker_wait=self.breaker.retry_after(),
            time_left=deadline - self._clock(), rng=self._rng,
        )  # fmt: skip

    async def _hold(self, seconds: float | None) -> None:
        if seconds:
            try:
                await self._coordinator.hold(round(seconds * 1000))
            except StoreError as exc:
                log.warning("could not pause the shared upstream rate: %s", exc)
