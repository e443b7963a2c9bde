"""A gateway's memory under sustained misses: every request new images or texts, for minutes.

``.venv/bin/python -m tests.bench.memory [--seconds 120] [--clients 16] [--texts]``

A redis-server and the fake Nomic (50 ms a call), then two gateways on Redis one after the
other, loaded alike (each request one new image, or with ``--texts`` ten new passages as the
official client sends them): with the hot cache at its default (64 MiB) and with it off, the floor
that shows what the rest of the process holds. Prints each one's RSS every 10 s, and how
much it grew over the second half of the run: a process whose caches are bounded stops
growing once they are full.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp

from fake_nomic import FAKE_API_KEY, png
from tests.bench import harness
from tests.bench.scenarios import KEY, PY, TEAMS
from tests.conftest import free_port

SAMPLE_SECONDS = 10
IMAGE = png(3, size=128)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def new_image(salt: int, n: int) -> bytes:
    return harness.multipart([IMAGE + b"%04d%016d" % (salt, n)])  # the PNG and a trailer


def new_texts(salt: int, n: int) -> bytes:
    return harness.text_body([f"{salt} {n} {i} {harness.PASSAGE}" for i in range(harness.TEXTS)])


async def load(
    url: str, pid: int, seconds: float, clients: int, body: Callable[[int], bytes]
) -> list[tuple[float, int, float]]:
    """``clients`` posting ``body(n)`` for the n-th request, one at a time each, for
    ``seconds``; (time, requests answered, RSS) every :data:`SAMPLE_SECONDS`."""
    content_type = harness.JSON if url.endswith(harness.TEXT_PATH) else harness.MULTIPART
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": content_type}
    sent, answered, samples = 0, 0, []
    started = time.monotonic()
    stop = started + seconds

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal sent, answered
        while time.monotonic() < stop:
            sent += 1
            async with session.post(url, data=body(sent), headers=headers) as r:
                await r.read()
                if r.status != 200:
                    raise RuntimeError(f"status {r.status}: {await r.text()}")
                answered += 1

    async def sampler() -> None:
        while (now := time.monotonic()) < stop:
            samples.append((now - started, answered, rss_mib(pid)))
            await asyncio.sleep(min(SAMPLE_SECONDS, stop - now))  # the last sample at the stop
        samples.append((time.monotonic() - started, answered, rss_mib(pid)))

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(sampler(), *(client(session) for _ in range(clients)))
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120, help="each gateway's run")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients")
    parser.add_argument("--texts", action="store_true", help="texts instead of images")
    args = parser.parse_args()
    path = harness.TEXT_PATH if args.texts else "/v1/embedding/image"
    with tempfile.TemporaryDirectory() as tmp:
        redis_port, fake_port = free_port(), free_port()
        teams = Path(tmp) / "teams.toml"
        teams.write_text(TEAMS)
        fake = [PY, "-m", "fake_nomic", "--port", str(fake_port), "--latency", "0.05"]
        with (
            harness.process(["redis-server", "--port", str(redis_port), "--save", "",
                             "--appendonly", "no", "--dir", tmp]),
            harness.process(fake) as fake_proc,
        ):  # fmt: skip
            fake_url = f"http://127.0.0.1:{fake_port}"
            harness.wait_http(fake_url + "/_fake/stats", fake_proc)
            runs = (("hot cache 64 MiB (default)", "67108864"), ("hot cache off", "0"))
            for salt, (label, hot) in enumerate(runs):
                port = free_port()
                env = {
                    **os.environ, "NOMIC_API_KEY": FAKE_API_KEY, "GATEWAY_UPSTREAM_URL": fake_url,
                    "GATEWAY_TEAMS_FILE": str(teams), "GATEWAY_LOG_LEVEL": "warning",
                    "GATEWAY_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
                    "GATEWAY_UPSTREAM_RATE_CALLS": "1000000000",
                    "GATEWAY_UPSTREAM_RATE_BURST": "1000", "GATEWAY_HOT_CACHE_BYTES": hot,
                }  # fmt: skip
                gateway = [PY, "-m", "gateway", "serve", "--port", str(port)]
                with harness.process(gateway, env) as proc:
                    harness.wait_http(f"http://127.0.0.1:{port}/healthz", proc)
                    url = f"http://127.0.0.1:{port}{path}"
                    body = functools.partial(new_texts if args.texts else new_image, salt)
                    samples = asyncio.run(load(url, proc.pid, args.seconds, args.clients, body))
                print(f"{label}:")
                for at, answered, rss in samples:
                    print(f"  {at:5.0f} s  {answered:7,d} requests answered  RSS {rss:6.1f} MiB")
                half = next(s for s in samples if s[0] >= args.seconds / 2)
                grew = samples[-1][2] - half[2]
                print(f"  grew {grew:+.1f} MiB over the second half "
                      f"({samples[-1][1] - half[1]:,d} requests)")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
