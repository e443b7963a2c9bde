"""What ``upstream_calls_per_minute`` changes for a team flooding Nomic and for the team beside it.

``.venv/bin/python -m tests.bench.team_calls [--runs 3] [--limit 5] [--victim-texts 1]``

A gateway on a redis-server of the bench's own, in front of the fake Nomic (both in this
process), Nomic's rate made scarce (10 calls a second, 50 ms a call). One team sends 40
one-text requests, each with a ``max_tokens_per_text`` of its own (40 lanes, 40 calls); once
two of its calls have gone up, another team sends an image miss and ``--victim-texts`` text
misses, each with options of its own too. Each run is made twice, the flooding team unlimited
and with ``--limit`` calls a minute, and prints: how long the other team's misses took (the
last of them answered), how many of the flood's calls went up before its first, and what
became of the flood (answered, refused 429, calls to Nomic). Requests have a 10 s deadline,
and a run starts at least 15 s before a minute ends, so the flood's refusals come at once.
Numbers, not a verdict.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections import Counter
from typing import Any

from fake_nomic import FakeNomic, png
from tests.conftest import (
    flush,
    free_port,
    serve_fake,
    spawn_redis,
    start_gateway,
    team_headers,
)
from tests.helpers import image_form

SCARCE = {"upstream_rate_calls": 10, "upstream_rate_period_seconds": 1.0,
          "upstream_rate_burst": 1, "request_deadline_seconds": 10.0}  # fmt: skip


async def one_run(redis_url: str, limit: int | None, seed: int, texts: int) -> dict[str, Any]:
    flush(redis_url)
    async with serve_fake(FakeNomic(latency=0.05)) as fake:
        return await _run(fake, redis_url, limit, seed, texts)


async def _run(
    fake: FakeNomic, redis_url: str, limit: int | None, seed: int, texts: int
) -> dict[str, Any]:
    gateway = await start_gateway(fake, redis_url, **SCARCE)
    try:
        heavy = await team_headers(gateway, "heavy", limits={"upstream_calls_per_minute": limit})
        victim = await team_headers(gateway, "victim")
        left = 60 - time.time() % 60
        if left < 15:
            await asyncio.sleep(left + 0.1)
        flood = [
            asyncio.ensure_future(gateway.post("/v1/embedding/text", headers=heavy, json={
                "texts": [f"flood {seed} {n}"], "long_text_mode": "truncate",
                "max_tokens_per_text": n}))
            for n in range(1, 41)
        ]  # fmt: skip
        while len(fake.text_calls) < 2:
            await asyncio.sleep(0.005)
        asked = time.monotonic()
        answered = await asyncio.gather(
            gateway.post("/v1/embedding/image", data=image_form([png(9000 + seed)]),
                         headers=victim),
            *(gateway.post("/v1/embedding/text", headers=victim, json={
                "texts": [f"victim {seed} {n}"], "max_tokens_per_text": n})
              for n in range(1, texts + 1)),
        )  # fmt: skip
        victim_seconds = time.monotonic() - asked
        statuses = Counter(response.status for response in await asyncio.gather(*flood))
        mine = min(c.at for c in fake.text_calls if c.texts[0].startswith("victim"))
        flood_calls = [c.at for c in fake.text_calls if c.texts[0].startswith("flood")]
        return {
            "victim": dict(Counter(response.status for response in answered)),
            "victim_seconds": round(victim_seconds, 3),
            "flood_calls_before_victim": sum(asked <= at < mine for at in flood_calls),
            "flood": dict(statuses),
            "flood_calls": len(flood_calls),
        }
    finally:
        await gateway.close()


async def main(runs: int, limit: int, texts: int) -> None:
    port = free_port()
    with tempfile.TemporaryDirectory() as workdir:
        redis_server = spawn_redis(port, workdir)
        try:
            for seed in range(runs):
                for flood_limit in (None, limit):
                    result = await one_run(f"redis://127.0.0.1:{port}/0", flood_limit,
                                           seed * 2 + (flood_limit is not None), texts)  # fmt: skip
                    print(f"run {seed + 1}, flood limit {flood_limit}: {result}", flush=True)
        finally:
            redis_server.terminate()
            redis_server.wait(10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--limit", type=int, default=5)
    parser.add_argument("--victim-texts", type=int, default=1)
    args = parser.parse_args()
    asyncio.run(main(args.runs, args.limit, args.victim_texts))
