"""``nomic-gateway serve --workers 3`` over one Redis: three real processes sharing a port
give exactly what one process would: budgets, usage totals, upstream calls, metrics."""

from __future__ import annotations

import asyncio
import json
import random
import signal
from collections import Counter
from pathlib import Path

import aiohttp
import redis

from fake_nomic import FakeNomic, png
from gateway.teams import key_hash, new_key
from tests.conftest import ADMIN
from tests.helpers import image_form
from tests.test_cli import clean_env, start_workers, stop_workers, wait_healthy
from tests.test_operations import sample


async def test_three_workers_give_what_one_process_would(
    fake_nomic: FakeNomic, redis_client: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    capped_key, free_key = new_key(), new_key()
    teams = tmp_path / "teams.toml"
    teams.write_text(
        f"[teams.capped.limits]\ntokens_per_day = 100\n[[teams.capped.keys]]\n"
        f'sha256 = "{key_hash(capped_key)}"\n[[teams.free.keys]]\nsha256 = "{key_hash(free_key)}"\n'
    )
    log = (tmp_path / "gateway.log").open("wb")
    process, url = await start_workers(
        fake_nomic, redis_url, teams, log,
        GATEWAY_TOKENS_PER_ITEM_ESTIMATE="10", GATEWAY_LOG_LEVEL="warning",
    )  # fmt: skip
    try:
        async with aiohttp.ClientSession() as session:
            await wait_healthy(session, url)
            await asyncio.sleep(1.0)  # every worker up (they start one by one)

            async def embed(key: str, image: bytes) -> int:
                async with session.post(
                    url + "/v1/embedding/image", data=image_form([image]),
                    headers={"Authorization": f"Bearer {key}"},
                ) as response:  # fmt: skip
                    await response.read()
                    return response.status

            capped = await asyncio.gather(*(embed(capped_key, png(5000 + i)) for i in range(100)))
            rng = random.Random(3)
            free_images = [png(6000 + rng.randrange(50)) for _ in range(200)]
            free = await asyncio.gather(*(embed(free_key, image) for image in free_images))
            assert Counter(capped) == {200: 10, 429: 90}
            assert free == [200] * 200
            received = Counter(fake_nomic.items_received)
            assert set(received.values()) == {1}  # each image once, across three processes
            assert len(received) == 10 + len(set(free_images))

            await asyncio.sleep(1.3)  # each worker writes its counted usage every second
            async with session.get(url + "/admin/usage", headers=ADMIN) as response:
                rows = {row["team"]: row for row in (await response.json())["usage"]}
            assert (rows["capped"]["requests"], rows["capped"]["rejected"]) == (10, 90)
            assert rows["capped"]["billed_tokens"] == 100
            assert rows["free"]["images"] == rows["free"]["hits"] + rows["free"]["misses"] == 200
            assert rows["free"]["billed_tokens"] == 10 * len(set(free_images))

            async with session.get(url + "/metrics") as response:
                text = await response.text()
            route = "/v1/embedding/image"
            answered = sum(sample(text, "gateway_requests_total", route=route, status_class=c)
                           for c in ("2xx", "4xx"))  # fmt: skip
            assert answered == 300  # every worker's requests, whichever worker answered

            # A limit removed reads as unlimited (+Inf) in every worker's metrics.
            patch = {"limits": {"tokens_per_day": None}}
            async with session.patch(url + "/admin/teams/capped", json=patch, headers=ADMIN):
                pass
            await asyncio.sleep(5.2)  # every worker's key cache (5 s) reads the team again
            for _ in range(12):  # reach every worker
                async with session.get(
                    url + "/v1/user", headers={"Authorization": f"Bearer {capped_key}"}
                ):
                    pass  # fmt: skip
            async with session.get(url + "/metrics") as response:
                text = await response.text()
            limit = sample(text, "gateway_team_limit", team="capped", limit="tokens_per_day")
            assert limit == float("inf")
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0
    finally:
        await stop_workers(process)
        log.close()
    lines = (tmp_path / "gateway.log").read_text().splitlines()
    assert "Traceback" not in "\n".join(lines)
    for line in lines:  # one JSON object per line, whichever process wrote it (no warnings)
        assert isinstance(json.loads(line), dict), line


def test_workers_need_redis() -> None:
    from tests.test_cli import run_cli

    result = run_cli("serve", "--workers", "2", env=clean_env(NOMIC_API_KEY="nk-x"))
    assert result.returncode == 2
    assert "needs GATEWAY_REDIS_URL" in result.stderr


def test_a_metrics_directory_that_is_not_one_stops_startup_in_one_line(tmp_path: Path) -> None:
    from tests.test_cli import run_cli

    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    env = clean_env(NOMIC_API_KEY="nk-x", GATEWAY_REDIS_URL="redis://127.0.0.1:1/0")
    result = run_cli("serve", "--workers", "2", "--metrics-dir", str(not_a_directory), env=env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"nomic-gateway: --metrics-dir='{not_a_directory}' is not valid: must be a writable "
        "directory"
    ]
