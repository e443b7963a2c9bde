"""The embedded store's data directory: what it keeps across a restart, and that it is one
process's own."""

from __future__ import annotations

import asyncio
import os
import sys
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
