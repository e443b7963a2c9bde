"""Hit-path throughput on one core: the gateway (embedded store, Redis) beside a naive baseline.

``.venv/bin/python -m tests.bench.hit_path [--seconds 10] [--connections 32]``

The gateway runs with every feature of the request path on: team key auth, quota checks
and usage accounting; one run uses a team with a per-minute limit, so every hit is an
atomic check in Redis. It starts on loopback, by itself: a
redis-server, the fake Nomic, each server pinned to CPU 0 (``taskset``), and wrk pinned to
CPU 1 posting the same 1-image multipart body (a hit after one warm-up request). It prints
requests/s, latency percentiles and server CPU time per request, and stops everything it
started. Needs ``wrk`` (Debian package) and ``taskset``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import redis

from gateway.teams import key_hash, new_key
from tests.bench.naive import key as naive_key
from tests.conftest import free_port
from tests.fake_nomic import FAKE_API_KEY, FakeNomic, png

BOUNDARY = "benchboundary"
KEY = new_key()  # the bench team's key, given to the gateway through a teams file
LIMITED_KEY = new_key()  # a team with a per-minute limit: every hit is an atomic check
PY = sys.executable


def multipart(image: bytes) -> bytes:
    return (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="model"\r\n\r\n'
            f"nomic-embed-vision-v1.5\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; "
            f'name="images"; filename="images"\r\n\r\n'
        ).encode()
        + image
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )


@contextlib.contextmanager
def process(
    args: list[str], env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def wait_http(url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except urllib.error.HTTPError:
            return  # it answers: up
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


def post(url: str, body: bytes, key: str) -> bytes:
    headers = {
        "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
        "Authorization": f"Bearer {key}",
    }
    request = urllib.request.Request(url, data=body, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read()  # type: ignore[no-any-return]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_wrk(
    url: str, body_file: Path, seconds: int, connections: int, key: str
) -> dict[str, float]:
    script = body_file.with_suffix(".lua")
    script.write_text(
        f'local f = io.open("{body_file}", "rb")\nwrk.body = f:read("*a")\nf:close()\n'
        f'wrk.method = "POST"\n'
        f'wrk.headers["Content-Type"] = "multipart/form-data; boundary={BOUNDARY}"\n'
        f'wrk.headers["Authorization"] = "Bearer {key}"\n'
    )
    out = subprocess.run(
        ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
         "-s", str(script), url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    if "Non-2xx" in out:
        raise RuntimeError(f"errors during the run:\n{out}")
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}  # type: ignore[union-attr]
    for pct in ("50", "99"):
        value, unit = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
        result[f"p{pct}_ms"] = float(value) * {"us": 0.001, "ms": 1, "s": 1000}[unit]
    result["requests"] = float(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return result


def measure(
    name: str, pid: int, url: str, body_file: Path, args: argparse.Namespace, key: str = ""
) -> str:
    run_wrk(url, body_file, 2, args.connections, key)  # warm-up
    before = cpu_seconds(pid)
    result = run_wrk(url, body_file, args.seconds, args.connections, key)
    cpu_us = (cpu_seconds(pid) - before) / result["requests"] * 1e6
    return (f"| {name} | {result['rps']:,.0f} | {result['p50_ms']:.2f} | {result['p99_ms']:.2f} "
            f"| {cpu_us:.0f} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    for tool in ("wrk", "taskset", "redis-server"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is needed (Debian: apt-get install wrk util-linux redis-server)")

    image = png(1, size=128)
    body = multipart(image)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        body_file = Path(tmp) / "body.bin"
        body_file.write_bytes(body)
        redis_port, fake_port = free_port(), free_port()
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        with (
            process(["redis-server", "--port", str(redis_port), "--save", "", "--dir", tmp]),
            process([PY, "-m", "tests.fake_nomic", "--port", str(fake_port)]),
        ):
            time.sleep(0.5)
            teams = Path(tmp) / "teams.toml"
            teams.write_text(
                f'[[teams.bench.keys]]\nsha256 = "{key_hash(KEY)}"\n'
                f"[teams.limited.limits]\nrequests_per_minute = 1_000_000_000\n"
                f'[[teams.limited.keys]]\nsha256 = "{key_hash(LIMITED_KEY)}"\n'
            )
            base_env = {**os.environ, "NOMIC_API_KEY": FAKE_API_KEY,
                        "GATEWAY_UPSTREAM_URL": f"http://127.0.0.1:{fake_port}",
                        "GATEWAY_TEAMS_FILE": str(teams),
                        "GATEWAY_LOG_LEVEL": "warning"}  # fmt: skip
            on_redis = {"GATEWAY_REDIS_URL": redis_url}
            for name, extra, key in (
                ("gateway, embedded store", {}, KEY),
                ("gateway, Redis", on_redis, KEY),
                ("gateway, Redis, team with a per-minute limit", on_redis, LIMITED_KEY),
            ):
                port = free_port()
                env = {**base_env, **extra, "GATEWAY_PORT": str(port)}
                with process(["taskset", "-c", "0", PY, "-m", "gateway", "serve"], env) as proc:
                    url = f"http://127.0.0.1:{port}"
                    wait_http(url + "/healthz")
                    post(url + "/v1/embedding/image", body, key)  # the miss that fills the cache
                    rows.append(
                        measure(name, proc.pid, url + "/v1/embedding/image", body_file, args, key)
                    )

            vector = orjson.dumps(FakeNomic.embedding("nomic-embed-vision-v1.5", image))
            redis.Redis.from_url(redis_url).set(naive_key(image), vector)
            port = free_port()
            naive = [PY, "-m", "tests.bench.naive", str(port), redis_url]
            with process(["taskset", "-c", "0", *naive]) as proc:
                url = f"http://127.0.0.1:{port}/v1/embedding/image"
                wait_http(f"http://127.0.0.1:{port}/")
                rows.append(measure("naive baseline, Redis", proc.pid, url, body_file, args))

    print(f"1-image hits ({len(image):,}-byte PNG), server on 1 core, wrk -c{args.connections} "
          f"for {args.seconds}s")  # fmt: skip
    print("| server | requests/s | p50 ms | p99 ms | server CPU us/request |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
