"""How long one team's large text request makes another team's cached hit wait.

``.venv/bin/python -m tests.bench.stall [--texts 63] [--text-kib 512] [--runs 3]``

A real ``nomic-gateway serve`` on the embedded store, the fake Nomic in a process of its own
(it counts each text's tokens, which takes time this process must not lose). One team
sends a batch of long documents (``--texts`` texts of ``--text-kib`` KiB: 32 MB by default, as
a careless ingestion job would); meanwhile another team asks for a cached text every 5 ms.
Prints, for each run, how long the large request took and the slowest of the hits answered
meanwhile: the time the event loop spent on the large request is time every other team waited.
Numbers, not a verdict: run it beside the change it measures, on the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import string
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson

from fake_nomic import FAKE_API_KEY
from gateway.teams import key_hash, new_key
from tests.conftest import free_port
from tests.test_cli import wait_healthy

HIT_EVERY_SECONDS = 0.005
BULK, VICTIM = new_key(), new_key()
TEAMS = f"""
[[teams.bulk.keys]]
sha256 = "{key_hash(BULK)}"
[[teams.victim.keys]]
sha256 = "{key_hash(VICTIM)}"
"""


def documents(count: int, kib: int, seed: int) -> list[str]:
    """``count`` texts of ``kib`` KiB of ordinary words, new for ``seed``."""
    rng = random.Random(seed)
    words = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 9))) for _ in range(3000)]
    text = " ".join(rng.choices(words, k=kib * 1024 // 5))[: kib * 1024]
    return [f"{seed} {n} {text}"[: kib * 1024] for n in range(count)]


async def post(session: aiohttp.ClientSession, url: str, key: str, texts: list[str]) -> int:
    body = orjson.dumps({"texts": texts, "model": "nomic-embed-text-v1.5"})
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    async with session.post(url, data=body, headers=headers) as response:
        await response.read()
        return response.status


async def one_run(url: str, texts: list[str]) -> tuple[float, float, int]:
    """The large request's seconds, the slowest hit meanwhile, and how many hits there were."""
    async with aiohttp.ClientSession() as session:
        assert await post(session, url, VICTIM, ["a cached text"]) == 200
        large = asyncio.create_task(post(session, url, BULK, texts))
        started = time.monotonic()
        slowest, hits = 0.0, 0
        while not large.done():
            asked = time.monotonic()
            assert await post(session, url, VICTIM, ["a cached text"]) == 200
            slowest, hits = max(slowest, time.monotonic() - asked), hits + 1
            await asyncio.sleep(HIT_EVERY_SECONDS)
        status = await large
        print(f"  large request: {status}", file=sys.stderr)
        return time.monotonic() - started, slowest, hits


async def main(args: argparse.Namespace) -> None:
    fake_port, port = free_port(), free_port()
    fake = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fake_nomic", "--port", str(fake_port),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert fake.stdout is not None
    await fake.stdout.readline()  # "fake Nomic listening on ..."
    with tempfile.TemporaryDirectory() as tmp:
        teams = Path(tmp) / "teams.toml"
        teams.write_text(TEAMS)
        env = {**os.environ, "NOMIC_API_KEY": FAKE_API_KEY, "GATEWAY_TEAMS_FILE": str(teams),
               "GATEWAY_UPSTREAM_URL": f"http://127.0.0.1:{fake_port}",
               "GATEWAY_LOG_LEVEL": "warning"}  # fmt: skip
        env.pop("GATEWAY_REDIS_URL", None)
        env["GATEWAY_DATA_DIR"] = str(Path(tmp) / "data")  # a store of its own, not the user's
        gateway = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "serve", "--port", str(port), env=env
        )
        try:
            base = f"http://127.0.0.1:{port}"
            async with aiohttp.ClientSession() as session:
                await wait_healthy(session, base)
            mib = args.texts * args.text_kib / 1024
            print(f"{args.texts} texts of {args.text_kib} KiB ({mib:.0f} MiB), hits every 5 ms:")
            for run in range(args.runs):
                texts = documents(args.texts, args.text_kib, run)
                seconds, slowest, hits = await one_run(base + "/v1/embedding/text", texts)
                print(f"  run {run + 1}: the large request took {seconds:.2f} s; "
                      f"slowest of {hits} hits meanwhile {slowest * 1000:.0f} ms")  # fmt: skip
        finally:
            for process in (gateway, fake):
                process.terminate()
                await process.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=63)
    parser.add_argument("--text-kib", type=int, default=512)
    parser.add_argument("--runs", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
