"""The usage read limit (GET /v1/usage): one rate per team in the store, so processes and
replicas on one Redis share it; on the embedded store, the one process's."""

from __future__ import annotations

import pytest

from gateway.routes import user
from gateway.store import rate
from gateway.store.base import Ledger
from tests.conftest import GatewayFactory, team_headers

SLOW = 0.01  # units a second: a unit comes back after 100 s, far longer than any test takes
LONGEST = "/v1/usage?since=2025-10-23&until=2026-11-26"  # 400 days


def test_spend_holds_a_rate_and_a_burst() -> None:
    tat, wait = rate.spend(0.0, 10_000.0, 800, 400, 800)  # a full rate: all at once
    assert (tat, wait) == (12_000.0, 0)
    assert rate.spend(tat, 10_000.0, 1, 400, 800) == (tat, 3)  # 2.5 ms a unit, rounded up
    assert rate.spend(tat, 11_000.0, 400, 400, 800) == (13_000.0, 0)  # 400 back in 1 s
    assert rate.spend(0.0, 10_000.0, 801, 400, 800) == (0.0, 3)  # more than it ever holds


async def test_a_team_spends_its_reads_and_no_other_teams(ledger: Ledger) -> None:
    assert await ledger.take_usage_reads("t1", 500, SLOW, 800) == 0
    assert await ledger.take_usage_reads("t1", 300, SLOW, 800) == 0
    wait = await ledger.take_usage_reads("t1", 1, SLOW, 800)
    assert 90_000 < wait <= 100_000  # one unit, 100 s, less what the test took
    assert await ledger.take_usage_reads("t2", 800, SLOW, 800) == 0


async def test_a_refused_spend_spends_nothing(ledger: Ledger) -> None:
    assert await ledger.take_usage_reads("t1", 801, SLOW, 800) > 0
    assert await ledger.take_usage_reads("t1", 400, SLOW, 800) == 0
    assert await ledger.take_usage_reads("t1", 401, SLOW, 800) > 0
    assert await ledger.take_usage_reads("t1", 400, SLOW, 800) == 0


async def test_two_gateways_on_one_redis_share_a_teams_usage_reads(
    make_redis_gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each process had a bucket of its own: with two, a team read twice the limit."""
    first, second = await make_redis_gateway(), await make_redis_gateway()
    team = await team_headers(first, "curious")
    # Slow enough that nothing comes back while the test runs (the old buckets were made
    # with the gateways, at 400 days a second: this changes only what is read per request).
    monkeypatch.setattr(user, "DAYS_READ_PER_SECOND", SLOW)
    assert (await first.get(LONGEST, headers=team)).status == 200
    assert (await second.get(LONGEST, headers=team)).status == 200
    for gateway in (first, second):  # 800 days read: all a team has at once, on either
        refused = await gateway.get(LONGEST, headers=team)
        assert refused.status == 429, await refused.text()
        assert int(refused.headers["Retry-After"]) > 1
        assert (await refused.json())["detail"][0]["loc"] == ["query"]
    other = await team_headers(second, "other")
    assert (await first.get(LONGEST, headers=other)).status == 200


@pytest.mark.parametrize(("per_second", "at_once"), [(7.0, 3), (3.0, 10), (1 / 60, 10), (400, 800)])
def test_a_full_rate_spends_its_whole_burst_one_unit_at_a_time(
    per_second: float, at_once: int
) -> None:
    """Spent a unit at a time at one instant, a full rate gives all it holds: the sum of the
    intervals, rounded, once came out a hair over (7 a second, 3 at once: the third refused at
    every clock reading)."""
    for now in (1.7e12, 1.7e12 + 0.3, 1_765_000_000_123.456):
        tat = 0.0
        for _ in range(at_once):
            tat, wait = rate.spend(tat, now, 1, per_second, at_once)
            assert wait == 0
        assert rate.spend(tat, now, 1, per_second, at_once)[1] > 0
