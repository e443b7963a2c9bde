"""A gateway's memory under sustained misses: every request a new image, for minutes.

``.venv/bin/python -m tests.bench.memory [--seconds 120] [--clients 16]``

A redis-server and the fake Nomic (50 ms a call), then two gateways on Redis one after the
other, loaded alike: with the hot cache at its default (64 MiB) and with it off, the floor
that shows what the rest of the process holds. Prints each one's RSS every 10 s, and how
much it grew over the second half of the run: a process whose caches are bounded stops
growing once they are full.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from tests.bench import harness
from tests.bench.__main__ import KEY, PY, TEAMS
from tests.conftest import free_port
from tests.fake_nomic import FAKE_API_KEY, png

SAMPLE_SECONDS = 10


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def load(
    url: str, pid: int, seconds: float, clients: int, salt: int
) -> list[tuple[float, int, float]]:
    """``clients`` posting new images one at a time for ``seconds`` (``salt`` makes them new
    to this run); (time, requests answered, RSS) every :data:`SAMPLE_SECONDS`."""
    base, headers = png(3, size=128), {"Authorization": f"Bearer {KEY}",
                                       "Content-Type": harness.MULTIPART}  # fmt: skip
    sent, answered, samples = 0, 0, []
    started = time.monotonic()
    stop = started + seconds

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal sent, answered
        while time.monotonic() < stop:
            sent += 1
            image = base + b"%04d%016d" % (salt, sent)  # the PNG and a trailer: a new image
            async with session.post(url, data=harness.multipart([image]), headers=headers) as r:
                await r.read()
                if r.status != 200:
                    raise RuntimeError(f"status {r.status}: {await r.text()}")
                answered += 1

    async def sampler() -> None:
        while time.monotonic() < stop:
            samples.append((time.monotonic() - started, answered, rss_mib(pid)))
            await asyncio.sleep(SAMPLE_SECONDS)
        samples.append((time.monotonic() - started, answered, rss_mib(pid)))

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(sampler(), *(client(session) for _ in range(clients)))
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120, help="each gateway's run")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        redis_port, fake_port = free_port(), free_port()
        teams = Path(tmp) / "teams.toml"
        teams.write_text(TEAMS)
        fake = [PY, "-m", "tests.fake_nomic", "--port", str(fake_port), "--latency", "0.05"]
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
                    url = f"http://127.0.0.1:{port}/v1/embedding/image"
                    samples = asyncio.run(load(url, proc.pid, args.seconds, args.clients, salt))
                print(f"{label}:")
                for at, answered, rss in samples:
                    print(f"  {at:5.0f} s  {answered:7,d} misses answered  RSS {rss:6.1f} MiB")
                half = next(s for s in samples if s[0] >= args.seconds / 2)
                grew = samples[-1][2] - half[2]
                print(f"  grew {grew:+.1f} MiB over the second half "
                      f"({samples[-1][1] - half[1]:,d} misses)")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
