"""Team writes in the ledger are atomic on every store: concurrent changes all land, and no
write brings a deleted team back."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from gateway.store.base import Ledger
from gateway.teams import InvalidTeam, Limits, Team
from tests.conftest import EVERY_STORE, chosen_store


@pytest.fixture(params=EVERY_STORE)
def store_url(request: pytest.FixtureRequest) -> str | None:
    return chosen_store(request)


NOW = 1_800_000_000.0


def one_more_request(team: Team) -> Team:
    count = team.limits.requests_per_minute or 0
    return dataclasses.replace(
        team, limits=dataclasses.replace(team.limits, requests_per_minute=count + 1)
    )


async def test_concurrent_changes_of_a_team_all_land(ledger: Ledger) -> None:
    assert await ledger.create_team(Team("t1", "Team one", Limits(), created=NOW))
    changed = await asyncio.gather(*(ledger.change_team("t1", one_more_request) for _ in range(40)))
    assert sorted(team.limits.requests_per_minute or 0 for team in changed if team) == list(
        range(1, 41)
    )
    found = await ledger.get_team("t1")
    assert found is not None
    assert found.limits.requests_per_minute == 40


async def test_no_write_makes_a_team_that_is_not_there(ledger: Ledger) -> None:
    team = Team("t1", "Team one", Limits(), created=NOW)
    assert await ledger.change_team("t1", one_more_request) is None
    assert not await ledger.update_team(team)
    assert await ledger.create_team(team)
    assert await ledger.delete_team("t1")
    assert await ledger.change_team("t1", one_more_request) is None
    assert not await ledger.update_team(team)
    assert (await ledger.get_team("t1"), await ledger.list_teams()) == (None, [])


async def test_changes_racing_a_delete_never_bring_the_team_back(ledger: Ledger) -> None:
    for round in range(20):
        team_id = f"t{round}"
        assert await ledger.create_team(Team(team_id, "Racing", Limits(), created=NOW))
        changes = [ledger.change_team(team_id, one_more_request) for _ in range(5)]
        await asyncio.gather(*changes[:2], ledger.delete_team(team_id), *changes[2:])
        assert await ledger.get_team(team_id) is None
    assert await ledger.list_teams() == []


async def test_a_change_that_raises_writes_nothing(ledger: Ledger) -> None:
    team = Team("t1", "Team one", Limits(), created=NOW)
    assert await ledger.create_team(team)

    def refuse(_: Team) -> Team:
        raise InvalidTeam("name must be 1 to 200 printable characters")

    with pytest.raises(InvalidTeam):
        await ledger.change_team("t1", refuse)
    assert await ledger.get_team("t1") == team
