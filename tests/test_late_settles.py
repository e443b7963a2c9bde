"""A settle whose answer was lost (it ran, then timed out) and is retried later counts once,
however late the retry: on Redis its id is kept ``SETTLED_TTL`` (40 days) unless its answer
came back (then an hour, as before); on the embedded store a settle that failed did not run."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable
from typing import Any

import pytest

from gateway import quota
from gateway.quota import Demand
from gateway.store import redis_keys
from gateway.store.base import Ledger, StoreError
from gateway.store.redis_ledger import ANSWERED_TTL, SETTLED_TTL, RedisLedger
from gateway.teams import Limits, Team
from tests.conftest import EVERY_STORE, chosen_store

NOW = 1_800_000_000.0
AT = quota.window(NOW)
TEAM = Team("t1", "T", Limits(tokens_per_day=1000), True, NOW)
USAGE = {"requests": 1, "images": 1, "misses": 1}


@pytest.fixture(params=EVERY_STORE)
def store_url(request: pytest.FixtureRequest) -> str | None:
    return chosen_store(request)


def lose_the_next_answer(ledger: Ledger) -> None:
    """The next call to the store runs, and its answer is lost (a timeout after it ran)."""
    if not isinstance(ledger, RedisLedger):
        return  # a call to the embedded store that fails did not run: nothing to lose
    call = ledger._call

    async def ran_then_timed_out(what: str, awaitable: Awaitable[Any]) -> Any:
        ledger._call = call  # type: ignore[method-assign]
        await call(what, awaitable)
        raise StoreError("timed out")

    ledger._call = ran_then_timed_out  # type: ignore[method-assign]


async def test_a_settle_retried_after_its_answer_was_lost_counts_once(ledger: Ledger) -> None:
    await ledger.admit(TEAM, Demand(1, 1, 0, 100), AT, {}, "lost")
    lose_the_next_answer(ledger)
    with contextlib.suppress(StoreError):  # kept by the gateway, to retry
        await ledger.settle(TEAM.id, AT.day, AT.month, "lost", 40, USAGE)
    for n in range(3):  # the team's other settles go on meanwhile
        await ledger.admit(TEAM, Demand(1, 1, 0, 100), AT, {}, f"other{n}")
        await ledger.settle(TEAM.id, AT.day, AT.month, f"other{n}", 10, USAGE)
    await ledger.settle(TEAM.id, AT.day, AT.month, "lost", 40, USAGE)  # the retry
    [row] = await ledger.usage(TEAM.id, [AT.day])
    assert (row["requests"], row["billed_tokens"]) == (4, 70)


@pytest.mark.parametrize("store_url", ["redis", "cluster"], indirect=True)
async def test_on_redis_only_the_ids_of_answers_lost_are_kept_long(ledger: Ledger) -> None:
    assert isinstance(ledger, RedisLedger)
    await ledger.admit(TEAM, Demand(1, 1, 0, 100), AT, {}, "lost")
    lose_the_next_answer(ledger)
    with pytest.raises(StoreError):
        await ledger.settle(TEAM.id, AT.day, AT.month, "lost", 40, USAGE)
    await ledger.settle(TEAM.id, AT.day, AT.month, "answered", 10, USAGE)
    await ledger.admit(TEAM, Demand(1, 1, 0, 0), AT, USAGE, "hit")  # shortens "answered"
    await ledger.settle(TEAM.id, AT.day, AT.month, "next", 10, USAGE)  # shortens "hit"
    client = ledger._backend.client
    ttls = {
        i: await client.ttl(redis_keys.settled(TEAM.id, i)) for i in ("lost", "answered", "hit")
    }
    assert SETTLED_TTL - 60 < ttls["lost"] <= SETTLED_TTL
    assert 0 < ttls["answered"] <= ANSWERED_TTL
    assert 0 < ttls["hit"] <= ANSWERED_TTL
