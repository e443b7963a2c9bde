"""Every timing of the miss path, derived once from the settings (:meth:`MissTimings.of`).

The parts of the miss path (the Fetcher, the shield and its breaker, the accounts, the
routes) take their timings from here and write no default of their own, so a timing has one
value in the process, and one place where it is derived.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config import Settings
from gateway.shield import Policy

# A lease (an input's in-flight mark, an upstream call slot) is renewed every third of it: it
# must outlast a few store round trips, or a live holder's lease lapses between renewals.
MIN_LEASE_SECONDS = 3.0
LEASE_ROUND_TRIPS = 3
# How long after its answer a fetch is remembered, beyond a store round trip: a lookup that
# read the store just before the entry was written finds it here instead of fetching again.
REMEMBER_MARGIN_SECONDS = 1.0
BREAKER_MAX_OPEN_SECONDS = 60.0  # the most a breaker's cool-down doubles up to


@dataclass(frozen=True)
class MissTimings:
    """How long each step of the miss path may take, holds, or waits."""

    deadline_seconds: float  # a request waits this long for Nomic (and to learn a cost)
    lease_seconds: float  # an in-flight mark or a call slot of a dead holder lapses after it
    remember_seconds: float  # an answered fetch is kept this long for lookups under way
    url_ttl_seconds: int  # a URL's entry is fresh this long
    stale_grace_seconds: int  # and served this long past it while Nomic fails
    breaker_open_seconds: float  # the breaker's first cool-down
    breaker_max_open_seconds: float  # and its longest
    shield: Policy  # the shield's batching, pacing and retries

    @classmethod
    def of(cls, settings: Settings) -> MissTimings:
        store_round_trip = settings.redis_timeout_seconds
        return cls(
            deadline_seconds=settings.request_deadline_seconds,
            lease_seconds=max(MIN_LEASE_SECONDS, LEASE_ROUND_TRIPS * store_round_trip),
            remember_seconds=store_round_trip + REMEMBER_MARGIN_SECONDS,
            url_ttl_seconds=settings.url_ttl_seconds,
            stale_grace_seconds=settings.stale_grace_seconds,
            breaker_open_seconds=settings.breaker_open_seconds,
            breaker_max_open_seconds=BREAKER_MAX_OPEN_SECONDS,
            shield=Policy.of(settings),
        )
