"""The embedded store's data directory: what it keeps across a restart, that it is one
process's own, and that its files are its owner's alone."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import quota
from gateway.quota import Demand
from gateway.store.data_dir import DataDir, DataDirError
from gateway.teams import KeyRecord, Limits, Team

NOW = 1_800_000_000.0
AT = quota.window(NOW)
TEAM = Team("t1", "Team one", Limits(tokens_per_day=1000), True, NOW)
KEY = KeyRecord("key_a", "t1", "a" * 64, "nk-aaaa", NOW)
CACHE_BYTES = 10_000_000


async def test_teams_keys_usage_and_cache_outlive_the_process(tmp_path: Path) -> None:
    data = await DataDir.open(tmp_path, CACHE_BYTES)
    await data.ledger.create_team(TEAM)
    await data.ledger.put_key(KEY)
    await data.ledger.narrow_key(KEY, revoked=NOW + 1)
    assert (await data.ledger.admit(TEAM, Demand(1, 1, 0, 10), AT, {}, "r1")).allowed
    await data.ledger.settle("t1", AT.day, AT.month, "r1", 12, {"requests": 1, "misses": 1})
    await data.ledger.record_item_cost("nomic-embed-vision-v1.5", 7)
    await data.store.set_many([("image", b"entry")], None)
    [before] = await data.ledger.usage("t1", [AT.day])
    await data.close()

    again = await DataDir.open(tmp_path, CACHE_BYTES)
    try:
        assert await again.ledger.list_teams() == [TEAM]
        key = await again.ledger.get_key(KEY.sha256)
        assert key is not None
        assert key.revoked == NOW + 1
        await again.ledger.settle("t1", AT.day, AT.month, "r1", 12, {"requests": 1})  # retried
        assert await again.ledger.usage("t1", [AT.day]) == [before]
        assert (before["requests"], before["billed_tokens"]) == (1, 12)
        assert await again.ledger.item_cost("nomic-embed-vision-v1.5") == 7
        assert await again.store.get_many(["image"]) == [b"entry"]
    finally:
        await again.close()


async def test_reservations_a_killed_process_left_are_released_at_start(tmp_path: Path) -> None:
    data = await DataDir.open(tmp_path, CACHE_BYTES)
    await data.ledger.create_team(TEAM)
    assert (await data.ledger.admit(TEAM, Demand(1, 1, 0, 600), AT, {}, "lost")).allowed
    refused = await data.ledger.admit(TEAM, Demand(1, 1, 0, 600), AT, {}, "r2")
    assert (refused.allowed, refused.remaining) == (False, 400)
    await data.close()  # as if killed: "lost" is never settled

    again = await DataDir.open(tmp_path, CACHE_BYTES)
    try:
        assert (await again.ledger.admit(TEAM, Demand(1, 1, 0, 600), AT, {}, "r3")).allowed
    finally:
        await again.close()


async def test_a_second_process_on_the_directory_is_refused_naming_the_setting(
    tmp_path: Path,
) -> None:
    data = await DataDir.open(tmp_path, CACHE_BYTES)
    try:
        other = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "import asyncio, sys; from pathlib import Path; "
            "from gateway.store.data_dir import DataDir; "
            "asyncio.run(DataDir.open(Path(sys.argv[1]), 1000))", str(tmp_path),
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, stderr = await asyncio.wait_for(other.communicate(), 60)
        assert other.returncode != 0
        assert (
            f"DataDirError: GATEWAY_DATA_DIR={tmp_path} is in use by another gateway process "
            f"(pid {os.getpid()})"
        ) in stderr.decode()
        with pytest.raises(DataDirError, match="in use by another gateway process"):
            await DataDir.open(tmp_path, CACHE_BYTES)  # nor twice by one process
    finally:
        await data.close()
    await (await DataDir.open(tmp_path, CACHE_BYTES)).close()  # free once closed


async def test_a_directory_that_cannot_be_made_is_refused_naming_the_setting(
    tmp_path: Path,
) -> None:
    (tmp_path / "a-file").write_text("")
    with pytest.raises(DataDirError, match=r"^GATEWAY_DATA_DIR=.*a-file/data is not a writable"):
        await DataDir.open(tmp_path / "a-file" / "data", CACHE_BYTES)


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The usual umask, under which a file made without a mode of its own is 0644."""
    before = os.umask(0o022)
    yield
    os.umask(before)


def modes(path: Path) -> dict[str, int]:
    return {file.name: stat.S_IMODE(file.stat().st_mode) for file in path.iterdir()}


async def test_the_files_are_the_owners_alone_whatever_the_umask(
    tmp_path: Path, umask_022: None
) -> None:
    data = await DataDir.open(tmp_path, CACHE_BYTES)
    try:
        await data.ledger.create_team(TEAM)
        await data.store.set_many([("image", b"entry")], None)
        made = modes(tmp_path)
    finally:
        await data.close()
    names = [f"{name}.sqlite3{suffix}" for name in ("ledger", "cache") for suffix in ("", "-wal")]
    assert set(names) <= set(made)  # the journals are there while the files are open
    assert made == dict.fromkeys(made, 0o600)


async def test_files_others_could_read_are_made_the_owners_alone_at_start(
    tmp_path: Path, umask_022: None, caplog: pytest.LogCaptureFixture
) -> None:
    killed = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import asyncio, os, sys; from pathlib import Path; "
        "from gateway.store.data_dir import DataDir; from tests.test_data_dir import TEAM\n"
        "async def main():\n"
        "    data = await DataDir.open(Path(sys.argv[1]), 1000)\n"
        "    await data.ledger.create_team(TEAM)\n"
        "    os._exit(0)  # as if killed: the journals stay\n"
        "asyncio.run(main())", str(tmp_path),
    )  # fmt: skip
    assert await asyncio.wait_for(killed.wait(), 60) == 0
    for name in ("ledger.sqlite3", "ledger.sqlite3-wal", "ledger.sqlite3-shm"):
        os.chmod(tmp_path / name, 0o644)  # as an earlier version left them
    with caplog.at_level(logging.WARNING):
        data = await DataDir.open(tmp_path, CACHE_BYTES)
    try:
        assert modes(tmp_path) == dict.fromkeys(modes(tmp_path), 0o600)
        assert await data.ledger.list_teams() == [TEAM]
    finally:
        await data.close()
    assert f"{tmp_path / 'ledger.sqlite3-wal'} was mode 0644; it is 0600 now" in caplog.text


async def test_a_directory_others_can_list_is_used_as_it_is_with_a_warning(
    tmp_path: Path, umask_022: None, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "data"
    path.mkdir(0o755)
    with caplog.at_level(logging.WARNING):
        data = await DataDir.open(path, CACHE_BYTES)
    await data.ledger.create_team(TEAM)
    await data.close()
    assert f"GATEWAY_DATA_DIR={path} can be listed by other users (mode 0755)" in caplog.text
    assert stat.S_IMODE(path.stat().st_mode) == 0o755  # the operator's choice, left alone
    assert modes(path) == dict.fromkeys(modes(path), 0o600)


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o770, 0o2770, 0o702], ids="{:04o}".format)
async def test_a_directory_others_can_write_is_refused_naming_the_setting(
    tmp_path: Path, mode: int
) -> None:
    path = tmp_path / "data"
    path.mkdir()
    path.chmod(mode)
    with pytest.raises(
        DataDirError,
        match=rf"^GATEWAY_DATA_DIR={path} can be written by other users \(mode {mode:04o}\), "
        "who could replace the files .*: chmod 700 it",
    ):
        await DataDir.open(path, CACHE_BYTES)
    assert list(path.iterdir()) == []  # nothing made in it
