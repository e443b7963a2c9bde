"""The declarative teams file: what it accepts, what it refuses, and what applying it does."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

from gateway import teams_file
from gateway.auth import Authenticator
from gateway.store.memory_ledger import MemoryLedger
from gateway.teams import Limits, Team, key_hash, new_key

KEY = new_key()
SHA = key_hash(KEY)


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "teams.toml"
    path.write_text(text)
    return str(path)


def test_a_full_file(tmp_path: Path) -> None:
    declared = teams_file.load(write(tmp_path, f"""
[teams.research]
name = "Research"
count_hits = false
private_cache = true
[teams.research.limits]
requests_per_minute = 600
texts_per_minute = 10_000
upstream_calls_per_minute = 60
tokens_per_day = 1_000_000
[[teams.research.keys]]
id = "ci"
sha256 = "{SHA}"

[teams.ml]
"""))  # fmt: skip
    research, ml = declared
    assert research.team.name == "Research"
    assert research.team.count_hits is False
    assert (research.team.private_cache, declared[1].team.private_cache) == (True, False)
    assert research.team.limits == Limits(
        requests_per_minute=600,
        texts_per_minute=10_000,
        tokens_per_day=1_000_000,
        upstream_calls_per_minute=60,
    )
    assert research.keys == [("ci", SHA)]
    assert (ml.team.name, ml.team.limits, ml.keys) == ("ml", Limits(), [])


@pytest.mark.parametrize(
    ("text", "word"),
    [
        ("[teams.Bad_Id]\n", "team id"),
        ("[teams.a]\ncolour = 1\n", "unknown field 'colour'"),
        ("[teams.a]\nprivate_cache = 1\n", "teams.a: private_cache must be true or false"),
        ("[teams.a.limits]\ntokens_per_day = -5\n", "teams.a: limits.tokens_per_day"),
        ("[teams.a.limits]\ntexts_per_minute = 1.5\n", "teams.a: limits.texts_per_minute must"),
        ("[teams.a.limits]\ntext_per_minute = 1\n", "unknown limit 'text_per_minute'"),
        ('[[teams.a.keys]]\nsha256 = "abc"\n', "teams.a.keys[0]: sha256"),
        ('[[teams.a.keys]]\nkey = "nk-secret"\n', "teams.a.keys[0] takes only"),
        ("[other]\n", "only [teams.<id>]"),
        ("this is not toml", "teams.toml"),
    ],
)
def test_mistakes_are_named(tmp_path: Path, text: str, word: str) -> None:
    with pytest.raises(teams_file.TeamsFileError, match=r".*") as raised:
        teams_file.load(write(tmp_path, text))
    assert word in str(raised.value)


async def test_applying_creates_updates_and_never_unrevokes(tmp_path: Path) -> None:
    ledger = MemoryLedger()
    path = write(
        tmp_path, f'[teams.a.limits]\ntokens_per_day = 5\n[[teams.a.keys]]\nsha256 = "{SHA}"\n'
    )
    await teams_file.apply(teams_file.load(path), ledger)
    team = await ledger.get_team("a")
    assert team is not None
    assert team.limits.tokens_per_day == 5
    record = await ledger.get_key(SHA)
    assert record is not None
    assert record.team == "a"
    await ledger.put_key(dataclasses.replace(record, revoked=1.0))

    path = write(
        tmp_path, f'[teams.a.limits]\ntokens_per_day = 9\n[[teams.a.keys]]\nsha256 = "{SHA}"\n'
    )
    await teams_file.apply(teams_file.load(path), ledger)
    updated = await ledger.get_team("a")
    assert updated is not None
    assert updated.limits.tokens_per_day == 9
    assert updated.created == team.created
    again = await ledger.get_key(SHA)
    assert again is not None
    assert again.revoked == 1.0


async def test_texts_per_minute_is_applied_and_reset_when_the_file_drops_it(
    tmp_path: Path,
) -> None:
    ledger = MemoryLedger()
    limits = "[teams.a.limits]\nimages_per_minute = 50\n"
    await teams_file.apply(
        teams_file.load(write(tmp_path, limits + "texts_per_minute = 70\n")), ledger
    )
    team = await ledger.get_team("a")
    assert team is not None
    assert (team.limits.images_per_minute, team.limits.texts_per_minute) == (50, 70)
    await teams_file.apply(teams_file.load(write(tmp_path, limits)), ledger)
    team = await ledger.get_team("a")
    assert team is not None
    assert (team.limits.images_per_minute, team.limits.texts_per_minute) == (50, None)


async def test_a_key_of_another_team_is_refused(tmp_path: Path) -> None:
    ledger = MemoryLedger()
    await teams_file.apply(
        teams_file.load(write(tmp_path, f'[[teams.a.keys]]\nsha256 = "{SHA}"\n')), ledger
    )
    with pytest.raises(teams_file.TeamsFileError, match="belongs to 'a'"):
        await teams_file.apply(
            teams_file.load(write(tmp_path, f'[[teams.b.keys]]\nsha256 = "{SHA}"\n')), ledger
        )


async def test_a_key_id_reused_for_another_key_is_refused(tmp_path: Path) -> None:
    ledger = MemoryLedger()
    first = write(tmp_path, f'[[teams.a.keys]]\nid = "ci"\nsha256 = "{SHA}"\n')
    await teams_file.apply(teams_file.load(first), ledger)
    other = key_hash(new_key())
    second = write(tmp_path, f'[[teams.a.keys]]\nid = "ci"\nsha256 = "{other}"\n')
    with pytest.raises(teams_file.TeamsFileError, match="already names another key"):
        await teams_file.apply(teams_file.load(second), ledger)
    assert await ledger.get_key(other) is None


def test_a_bad_key_id_is_named(tmp_path: Path) -> None:
    with pytest.raises(teams_file.TeamsFileError, match=r"teams.a.keys\[0\]: key id"):
        teams_file.load(write(tmp_path, f'[[teams.a.keys]]\nid = "no spaces"\nsha256 = "{SHA}"\n'))


class _ReplicaAheadLedger(MemoryLedger):
    """Between this process's read and its create, another replica (its clock 30 s ahead)
    creates the same team."""

    async def create_team(self, team: Team) -> bool:
        await super().create_team(dataclasses.replace(team, created=team.created + 30))
        return False


@pytest.mark.parametrize("ledger", [_ReplicaAheadLedger(), None], ids=["race", "skew"])
async def test_keys_work_when_replicas_start_together(
    tmp_path: Path, ledger: MemoryLedger | None
) -> None:
    if ledger is None:  # the team already exists, made by a replica whose clock is ahead
        ledger = MemoryLedger()
        await ledger.create_team(Team("a", "a", Limits(), True, time.time() + 30))
    path = write(tmp_path, f'[[teams.a.keys]]\nsha256 = "{SHA}"\n')
    await teams_file.apply(teams_file.load(path), ledger)
    team = await Authenticator(ledger, cache_seconds=1).team_for(f"Bearer {KEY}")
    assert team.id == "a"
