"""A circuit breaker on upstream health. Pure: the clock is passed in.

Closed: calls go through; ``failures_to_open`` failures in a row open it. Open: calls are
refused at once, for a cool-down that doubles each time it reopens (up to ``max_open``).
After the cool-down it is half-open: calls go through again, the first success closes it and
the first failure opens it again. Its numbers are the settings' (the app passes them).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

State = Literal["closed", "open", "half_open"]


class Breaker:
    def __init__(
        self,
        failures_to_open: int,
        open_seconds: float,
        max_open_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._failures_to_open = failures_to_open
        self._base_open = open_seconds
        self._max_open = max_open_seconds
        self._clock = clock
        self._failures = 0
        self._open_for = open_seconds
        self._opened_at: float | None = None

    @property
    def state(self) -> State:
        if self._opened_at is None:
            return "closed"
        return "open" if self.retry_after() > 0 else "half_open"

    def retry_after(self) -> float:
        """Seconds until calls may go again; 0 when they may go now."""
        if self._opened_at is None:
            return 0.0
        return max(0.0, self._opened_at + self._open_for - self._clock())

    def record_success(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._open_for = self._base_open

    def record_failure(self) -> None:
        if self._opened_at is not None:  # half-open (or a late failure while open): reopen
            if self.retry_after() == 0:
                self._open_for = min(self._max_open, self._open_for * 2)
            self._opened_at = self._clock()
            return
        self._failures += 1
        if self._failures >= self._failures_to_open:
            self._opened_at = self._clock()
