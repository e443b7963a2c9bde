"""Chaos, bounded and on loopback: steady traffic over 3 gateway workers while their Redis is
stopped and restarted and one worker is stopped and replaced. Every request gets its
embeddings or a clean 5xx with Retry-After, nothing crashes or hangs, and afterwards the
usage totals equal what the clients and the fake Nomic saw."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from fake_nomic import FakeNomic, png
from gateway.teams import key_hash, new_key
from tests.conftest import ADMIN, free_port, spawn_redis
from tests.helpers import image_form
from tests.test_cli import start_workers, stop_workers, wait_healthy

LOAD_SECONDS = 10.0
CLIENTS = 16
RETRIES = 5


def workers_of(pid: int) -> list[int]:
    """The worker processes the supervisor started (not its resource tracker)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"spawn_main" in cmdline:
                found.append(int(entry.name))
    return found


@pytest.mark.serial
async def test_chaos(fake_nomic: FakeNomic, tmp_path: Path) -> None:
    redis_port = free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    aof = ("--appendonly", "yes", "--appendfsync", "always")
    redis_process = spawn_redis(redis_port, str(tmp_path), *aof)
    restarted: list[subprocess.Popen[bytes]] = []  # before the try: its finally stops them
    key = new_key()
    teams = tmp_path / "teams.toml"
    teams.write_text(f'[[teams.load.keys]]\nsha256 = "{key_hash(key)}"\n')
    log = (tmp_path / "gateway.log").open("wb")
    try:
        supervisor, url = await start_workers(
            fake_nomic, redis_url, teams, log,
            GATEWAY_REDIS_TIMEOUT_SECONDS="0.25", GATEWAY_KEY_CACHE_SECONDS="60",
            GATEWAY_REQUEST_DEADLINE_SECONDS="10", GATEWAY_LOG_LEVEL="error",
        )  # fmt: skip
    except BaseException:  # no workers to stop: Redis and the log, then the failure
        redis_process.terminate()
        redis_process.wait(10)
        log.close()
        raise
    statuses: Counter[str] = Counter()
    billed_seen = 0
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
            await wait_healthy(session, url)
            await asyncio.sleep(1.0)
            auth = {"Authorization": f"Bearer {key}"}
            for seed in range(20):  # warm: the keys are known to every worker that answers
                async with session.get(url + "/v1/user", headers=auth) as response:
                    assert response.status == 200
            started = time.monotonic()

            async def send(image: bytes) -> None:
                nonlocal billed_seen
                async with session.post(
                    url + "/v1/embedding/image", data=image_form([image]), headers=auth
                ) as response:
                    await response.read()
                    if response.status == 200:
                        statuses["200"] += 1
                        billed_seen += int(response.headers["X-Billed-Tokens"])
                    elif response.status >= 500 and "Retry-After" in response.headers:
                        statuses[f"{response.status} with Retry-After"] += 1
                    else:
                        statuses[f"{response.status} (unclean)"] += 1

            async def client(seed: int) -> None:
                rng = random.Random(seed)
                while time.monotonic() - started < LOAD_SECONDS:
                    image = png(7000 + int(rng.paretovariate(1.2)) % 80)
                    for attempt in range(RETRIES):
                        try:
                            await send(image)
                            break
                        except aiohttp.ClientConnectionError:
                            # A stopping worker closes its idle keep-alive connections (and
                            # the pool may hold several); a request written onto one never
                            # reached it. Any HTTP client retries that.
                            statuses["connection closed before sending, retried"] += 1
                            await asyncio.sleep(0.05 * (attempt + 1))
                    else:
                        statuses["connection closed on every try (unclean)"] += 1
                    await asyncio.sleep(0.005)

            async def chaos() -> None:
                await asyncio.sleep(2.5)
                redis_process.terminate()
                redis_process.wait(10)
                await asyncio.sleep(2.5)  # Redis down
                restarted.append(spawn_redis(redis_port, str(tmp_path), *aof))
                await asyncio.sleep(1.0)
                os.kill(workers_of(supervisor.pid)[0], signal.SIGTERM)  # one worker goes

            await asyncio.gather(*(client(i) for i in range(CLIENTS)), chaos())
            await asyncio.sleep(2.0)  # the replaced worker is up; every buffer written
            assert len(workers_of(supervisor.pid)) == 3
            async with session.get(url + "/admin/usage?team=load", headers=ADMIN) as response:
                [usage] = (await response.json())["usage"]
        supervisor.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(supervisor.wait(), 30) == 0
    finally:
        await stop_workers(supervisor)
        log.close()
        for process in [redis_process, *restarted]:
            if process.poll() is None:
                process.terminate()
                process.wait(10)
    billed_upstream = 10 * len(fake_nomic.items_received)
    print(f"\n  chaos: requests answered {dict(statuses)}; usage requests={usage['requests']} "
          f"images={usage['images']} hits={usage['hits']} misses={usage['misses']} "
          f"billed={usage['billed_tokens']}; clients saw billed={billed_seen}; "
          f"fake Nomic billed={billed_upstream} in {len(fake_nomic.calls)} calls")  # fmt: skip
    assert not [status for status in statuses if "unclean" in status]
    assert statuses["200"] > 100
    assert usage["requests"] == statuses["200"]
    assert usage["hits"] + usage["misses"] == usage["images"] == statuses["200"]
    assert usage["billed_tokens"] == billed_seen == billed_upstream
    assert "Traceback" not in (tmp_path / "gateway.log").read_text()
