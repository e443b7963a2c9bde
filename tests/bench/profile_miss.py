"""Where a lone miss's CPU goes: py-spy on a gateway answering misses one at a time.

``.venv/bin/python -m tests.bench.profile_miss [--seconds 60] [--rate 1000] [--native]``
(needs ``pip install py-spy`` and the right to trace a child process, which root has)

As scenario c of the benchmark with one client: a redis-server and the fake Nomic (100 ms a
call) on CPU 1, the gateway on CPU 0, wrk on CPU 1 posting every time a new image; once with
the Redis store, once with the embedded one. py-spy samples the gateway while wrk runs and
writes its raw stacks to ``--out``, a file a store; printed for each store: the top frames by
self and by total samples, and the share of the busy samples by part of the gateway. Samples
waiting in the selector are idle and left out. Without ``--native`` py-spy does not stop the
process to sample it (``--nonblocking``), so the profiled gateway runs at about its usual speed
(a frame's own share is then less exact: a stack read while it changes); with it, C frames show
too, but the stops cost the gateway two to three times its CPU a miss and skew the shares.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from fake_nomic import FAKE_API_KEY, png
from tests.bench import harness
from tests.bench.scenarios import FAKE_LATENCY, KEY, PY, TEAMS, misses_script
from tests.conftest import free_port

SERVER_CPU, LOAD_CPU = "0", "1"
IDLE = ("epoll_wait", "EpollSelector.select")
RUNNER = ("_run_code ", "_run_module_as_main ", "<module> ", "main (gateway", "serve (gateway",
          "run_worker ", "run (gateway", "run (asyncio", "Runner.run ", "BaseEventLoop.run_until",
          "BaseEventLoop.run_forever", "BaseEventLoop._run_once", "Handle._run ", "task_step",
          "TaskStepMethWrapper_call", "0x")  # fmt: skip
PARTS = [  # the first that a sample's stack matches names it
    ("Redis: redis-py and the gateway's Redis store", ("(redis/", "gateway/store/redis")),
    ("the upstream call (aiohttp's client, NomicClient)", ("(aiohttp/client", "gateway/upstream")),
    ("the request (aiohttp's server, middlewares, route, form)",
     ("(aiohttp/web_protocol", "gateway/routes", "gateway/middlewares", "(multipart")),
    ("shield, batching, pipeline", ("gateway/shield", "gateway/batching", "gateway/pipeline")),
    ("usage accounting", ("gateway/accounts", "ledger")),
    ("socket reads and writes, not attributed further", ("selector_events.py",)),
]  # fmt: skip


def stacks(raw: Path) -> Iterator[tuple[list[str], int]]:
    """py-spy's raw output: each busy stack, frames as ``name (file)``, and its samples."""
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";")]
        if stack and not any(frame.startswith(IDLE) for frame in frames[-4:]):
            yield frames, int(count)


def summary(raw: Path, top: int) -> str:
    own, under, parts = (collections.Counter[str]() for _ in range(3))
    busy = 0
    for frames, count in stacks(raw):
        busy += count
        own[frames[-1]] += count
        for frame in set(frames):
            under[frame] += count
        names = (name for name, marks in PARTS if any(m in f for f in frames for m in marks))
        parts[next(names, "the event loop itself and the rest")] += count
    below = [(frame, count) for frame, count in under.most_common() if not frame.startswith(RUNNER)]
    lines = [f"{busy} busy samples", "", "by self time:"]
    lines += [f"  {100 * n / busy:5.1f}%  {frame}" for frame, n in own.most_common(top)]
    lines += ["", "by total time, below the event loop:"]
    lines += [f"  {100 * n / busy:5.1f}%  {frame}" for frame, n in below[:top]]
    lines += ["", "by part:"]
    lines += [f"  {100 * n / busy:5.1f}%  {part}" for part, n in parts.most_common()]
    return "\n".join(lines)


def profile(args: argparse.Namespace, spy: str, tmp: Path) -> None:
    redis_port, fake_port = free_port(), free_port()
    redis_args = ["redis-server", "--port", str(redis_port), "--save", "", "--appendonly", "no",
                  "--dir", str(tmp)]  # fmt: skip
    fake_args = [PY, "-m", "fake_nomic", "--port", str(fake_port),
                 "--latency", str(FAKE_LATENCY)]  # fmt: skip
    (tmp / "teams.toml").write_text(TEAMS)
    with (
        harness.process(redis_args, cpus=LOAD_CPU),
        harness.process(fake_args, cpus=LOAD_CPU) as fake,
    ):
        fake_url = f"http://127.0.0.1:{fake_port}"
        harness.wait_http(fake_url + "/_fake/stats", fake)
        env = {**os.environ, "NOMIC_API_KEY": FAKE_API_KEY, "GATEWAY_UPSTREAM_URL": fake_url,
               "GATEWAY_TEAMS_FILE": str(tmp / "teams.toml"), "GATEWAY_LOG_LEVEL": "info",
               "GATEWAY_UPSTREAM_RATE_CALLS": "1000000000",
               "GATEWAY_UPSTREAM_RATE_BURST": "1000"}  # fmt: skip
        with_redis = {**env, "GATEWAY_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0"}
        on_disk = {**env, "GATEWAY_DATA_DIR": str(tmp / "data")}  # not the user's own
        for store, store_env in (("redis", with_redis), ("embedded", on_disk)):
            profile_store(args, spy, tmp, store, store_env)


def profile_store(
    args: argparse.Namespace, spy: str, tmp: Path, store: str, env: dict[str, str]
) -> None:
    port = free_port()
    script = misses_script(tmp, png(3, size=128), KEY)
    raw = args.out / f"{store}.txt"
    with harness.process([PY, "-m", "gateway", "serve", "--port", str(port)], env,
                         SERVER_CPU) as gateway:  # fmt: skip
        harness.wait_http(f"http://127.0.0.1:{port}/healthz", gateway)
        url = f"http://127.0.0.1:{port}/v1/embedding/image"
        harness.run_wrk(url, script(1), 3, 1, LOAD_CPU)  # warm up
        record = [spy, "record", "--pid", str(gateway.pid), "--rate", str(args.rate),
                  "--duration", str(args.seconds + 1), "--format", "raw", "-o", str(raw),
                  "--native" if args.native else "--nonblocking"]  # fmt: skip
        with subprocess.Popen(record, stdout=subprocess.DEVNULL) as sampler:
            time.sleep(0.5)  # attached
            cpu = harness.cpu_seconds([gateway.pid])
            result = harness.run_wrk(url, script(2), args.seconds, 1, LOAD_CPU)
            cpu = harness.cpu_seconds([gateway.pid]) - cpu
            sampler.wait(60)
    per_miss = cpu / result.requests * 1e6
    print(f"\n== {store} store: {result.requests} misses, p50 {result.p50_ms:.1f} ms, "
          f"{per_miss:,.0f} us of gateway CPU a miss; raw stacks in {raw}")  # fmt: skip
    print(summary(raw, args.top), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=60, help="the profiled run, each store")
    parser.add_argument("--rate", type=int, default=1000, help="py-spy samples a second")
    parser.add_argument("--native", action="store_true", help="C frames too (stops the process)")
    parser.add_argument("--top", type=int, default=15, help="frames listed")
    default_out = Path(tempfile.gettempdir()) / "profile-miss"
    parser.add_argument("--out", type=Path, default=default_out, help="raw stacks here")
    args = parser.parse_args()
    spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(PY).parent))
    if spy is None:
        sys.exit("py-spy is needed: .venv/bin/pip install py-spy")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as name:
        profile(args, spy, Path(name))


if __name__ == "__main__":
    main()
