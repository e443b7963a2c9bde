"""The quickstart, then ``kill -9``, then start again: nothing is lost on the embedded store.

A real ``nomic-gateway serve`` process on its default store (a data directory) in front of
the fake Nomic: teams and keys made through the admin API, images embedded, the process
killed with SIGKILL and started again on the same directory. The same keys work, ``nomic-gateway
usage`` prints the same numbers, and the images are HITs that Nomic never saw again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from fake_nomic import FAKE_API_KEY, FakeNomic, png
from tests.conftest import ADMIN_TOKEN, free_port, make_team
from tests.helpers import image_form
from tests.test_cli import clean_env, run_cli, wait_healthy

TEAMS = {  # one whose requests the ledger decides, one whose usage the process buffers
    "limited": {"limits": {"requests_per_minute": 1000, "tokens_per_day": 10**6}},
    "plain": {},
}


class Gateway:
    """``nomic-gateway serve`` on ``data_dir``, its output in ``log``."""

    def __init__(self, fake: FakeNomic, data_dir: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.env = clean_env(
            NOMIC_API_KEY=FAKE_API_KEY, GATEWAY_UPSTREAM_URL=fake.url,  # type: ignore[attr-defined]
            GATEWAY_ADMIN_TOKEN=ADMIN_TOKEN, GATEWAY_DATA_DIR=str(data_dir),
            GATEWAY_LOG_FORMAT="text",
        )  # fmt: skip

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[asyncio.subprocess.Process]:
        with self.log.open("ab") as out:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway", "serve", "--port", str(self.port),
                env=self.env, stdout=out, stderr=out,
            )  # fmt: skip
        try:
            async with aiohttp.ClientSession() as session:
                await wait_healthy(session, self.url)
            yield process
        finally:
            if process.returncode is None:
                process.kill()
            await process.wait()

    async def cli(self, *args: str) -> tuple[int, str, str]:
        env = {**self.env, "GATEWAY_URL": self.url}
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", *args, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode is not None
        return process.returncode, out.decode(), err.decode()

    async def usage(self) -> dict[str, dict[str, Any]]:
        code, out, err = await self.cli("usage", "--json")
        assert code == 0, err
        return {row["team"]: row for row in json.loads(out)}


async def embed(
    session: aiohttp.ClientSession, url: str, key: str, image: bytes
) -> aiohttp.ClientResponse:
    async with session.post(
        url + "/v1/embedding/image", data=image_form([image]),
        headers={"Authorization": f"Bearer {key}"},
    ) as response:  # fmt: skip
        await response.read()
        return response


async def usage_once_written(gateway: Gateway, want: dict[str, int]) -> dict[str, Any]:
    """The usage the CLI prints once every team's ``requests`` reached ``want``'s (settles
    and the process's buffer are written shortly after the answers)."""
    for _ in range(100):
        rows = await gateway.usage()
        if all(rows.get(team, {}).get("requests") == n for team, n in want.items()):
            return rows
        await asyncio.sleep(0.1)
    raise AssertionError(f"usage never reached {want}: {rows}")


async def test_keys_usage_and_cache_survive_kill_9(fake_nomic: FakeNomic, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    gateway = Gateway(fake_nomic, data_dir, tmp_path / "gateway.log")
    keys: dict[str, str] = {}
    async with aiohttp.ClientSession() as session:
        async with gateway.running() as process:
            for team, fields in TEAMS.items():
                keys[team] = await make_team(session, gateway.url, team, **fields)
            for index, team in enumerate(TEAMS):
                first = await embed(session, gateway.url, keys[team], png(index))
                again = await embed(session, gateway.url, keys[team], png(index))
                assert (first.status, first.headers["X-Cache"]) == (200, "MISS")
                assert (again.status, again.headers["X-Cache"]) == (200, "HIT")
            before = await usage_once_written(gateway, dict.fromkeys(TEAMS, 2))
            refused = await Gateway(fake_nomic, data_dir, tmp_path / "second.log").cli("serve")
            assert refused[0] == 2
            assert refused[2].strip() == (
                f"nomic-gateway: GATEWAY_DATA_DIR={data_dir} is in use by another gateway "
                f"process (pid {process.pid}): the embedded store is one process's own; stop "
                "that process, choose another directory, or share a Redis (GATEWAY_REDIS_URL)"
            )
            os.kill(process.pid, signal.SIGKILL)
            assert await process.wait() == -signal.SIGKILL

        async with gateway.running():
            assert await gateway.usage() == before
            for index, team in enumerate(TEAMS):
                response = await embed(session, gateway.url, keys[team], png(index))
                assert (response.status, response.headers["X-Cache"]) == (200, "HIT")
            assert fake_nomic.items_received == [png(0), png(1)]  # once each, before the kill
            after = await usage_once_written(gateway, dict.fromkeys(TEAMS, 3))
    for team in TEAMS:
        assert (before[team]["misses"], before[team]["hits"]) == (1, 1)
        assert before[team]["billed_tokens"] == fake_nomic.tokens_per_image
        assert (after[team]["hits"], after[team]["billed_tokens"]) == (
            2,
            before[team]["billed_tokens"],
        )
    log = gateway.log.read_text()
    assert log.count(f"store: embedded, kept in {data_dir}") == 2
    assert "Traceback" not in log


def test_a_data_directory_that_cannot_be_written_stops_startup_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    where = tmp_path / "a-file" / "data"
    result = run_cli("serve", env=clean_env(NOMIC_API_KEY="nk-x", GATEWAY_DATA_DIR=str(where)))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"nomic-gateway: GATEWAY_DATA_DIR={where} is not a writable directory (Not a "
        "directory): set it to one (or to :memory: to keep nothing past the process)"
    ]
