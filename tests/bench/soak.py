"""A soak: mixed traffic for an hour over two gateway replicas, Redis restarted halfway.

``.venv/bin/python -m tests.bench.soak [--minutes 60] [--rate 30] [--sample-seconds 30]``

It starts everything on loopback by itself: a redis-server with AOF (``appendfsync always``,
so that a restart keeps every write it acknowledged), the fake Nomic as a process (50 ms a
call), and two gateways (``nomic-gateway serve``, one process each) on that Redis, with three
teams from a teams file and URL entries fresh for ``--url-ttl`` seconds (60), so that URLs
are fetched again all along. An open-loop driver sends ``--rate`` requests a second, spread
over both replicas and the three teams:

- images (45%): 1 to 4 small PNGs, a few of them often and most of them rarely;
- URLs (15%): 1 or 2 of a fixed set of :data:`URLS`, each a miss again once its entry aged;
- texts (40%): 1 to 10 passages, half through ``/v1/embedding/text``, half through
  ``/v1/embeddings`` (OpenAI's shape, float and base64 alike).

During the warm-up (the first quarter) half of the images and texts asked for are new, so
the set grows; afterwards ``--trickle`` of them (1%) are, and the rest are hits. At half
time Redis is killed (``--restart-signal``, SIGKILL) and started again on its files after
``--outage-seconds``. Every ``--sample-seconds`` it prints a line, flushed: each gateway's
RSS (``VmRSS``) and open descriptors, Redis's ``used_memory`` and keys, and the tokens the
fake billed. At the end: a table (one row per ``--table-minutes``), Redis's keys by kind,
and the verdicts. *Flat after warm-up* means the last half's highest sample is within
:data:`FLAT_TOLERANCE` of the sample that ends the warm-up (descriptors: or at most
:data:`FD_SLACK` more). *Usage equals billed* compares the admin API's ``billed_tokens``
summed over every team with what the fake answered: ``tokens_per_image`` a URL or image, and
every text the soak sends has the same token count (:func:`text`). It exits with 1 if usage
differs, or if any answer was a 500 or a 5xx without ``Retry-After``; flatness is reported,
not enforced (a short run is all warm-up). Every process it starts is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import NamedTuple
from urllib.parse import urlencode

import aiohttp
import redis

from fake_nomic import FAKE_API_KEY, FakeNomic, png
from gateway.teams import key_hash, new_key
from tests.bench import harness
from tests.conftest import free_port, spawn_redis

PY = sys.executable
ADMIN_TOKEN = new_key()
TEAM_KEYS = {team: new_key() for team in ("north", "south", "west")}
TOKENS_PER_IMAGE = 10  # what the fake bills an image or a URL
FAKE_LATENCY = 0.05
URLS = 120
WARMUP_FRACTION = 0.25
NEW_IN_WARMUP = 0.5
FLAT_TOLERANCE = 0.10
FD_SLACK = 8
MAX_IN_FLIGHT = 200
USAGE_WAIT_SECONDS = 30
# The fake has no rate limit: the gateway's pacing (4 calls a second by default) would only
# queue the warm-up's misses, and the soak is about what stays in the processes, not pacing.
UNPACED = {"GATEWAY_UPSTREAM_RATE_CALLS": "1000000", "GATEWAY_UPSTREAM_RATE_PERIOD_SECONDS": "1",
           "GATEWAY_UPSTREAM_RATE_BURST": "1000"}  # fmt: skip


def teams_file() -> str:
    limits = "requests_per_minute = 1_000_000\ntokens_per_day = 1_000_000_000_000\n"
    return "".join(f'[teams.{team}.limits]\n{limits}[[teams.{team}.keys]]\nsha256 = "'
                   f'{key_hash(key)}"\n\n' for team, key in TEAM_KEYS.items())  # fmt: skip


def text(n: int) -> str:
    """The n-th text: a number, then the bench's passage. Every one has the same token count
    in the fake (a number is one token), so texts billed are texts answered times it."""
    return f"{n:09d} {harness.PASSAGE}"


TEXT_TOKENS = FakeNomic.text_tokens(text(0))


def url(n: int) -> str:
    return f"https://images.example.com/soak/{n:04d}.jpg"


class Request(NamedTuple):
    kind: str  # "image", "url", "text" or "openai"
    path: str
    body: bytes
    content_type: str


@dataclass
class Workload:
    """What to ask for next: images and texts from sets that grow, picked skewed towards the
    first ones; URLs from a fixed set. Seeded: two runs send the same requests."""

    rng: random.Random
    images: list[bytes] = field(default_factory=list)
    texts: int = 0  # texts made so far: text(0) to text(texts - 1)

    def _pick(self, size: int, new: float) -> int | None:
        """An index below ``size``, skewed to 0; None (make a new one) with chance ``new``."""
        if size == 0 or self.rng.random() < new:
            return None
        return int(size * self.rng.random() ** 3)

    def image(self, new: float) -> bytes:
        index = self._pick(len(self.images), new)
        if index is None:
            self.images.append(png(10_000_000 + len(self.images), size=16))
            return self.images[-1]
        return self.images[index]

    def text(self, new: float) -> str:
        index = self._pick(self.texts, new)
        if index is None:
            self.texts += 1
            return text(self.texts - 1)
        return text(index)

    def next(self, new: float) -> Request:
        roll = self.rng.random()
        if roll < 0.45:
            images = [self.image(new) for _ in range(self.rng.randint(1, 4))]
            body = harness.multipart(images)
            return Request("image", "/v1/embedding/image", body, harness.MULTIPART)
        if roll < 0.60:
            urls = [url(self.rng.randrange(URLS)) for _ in range(self.rng.randint(1, 2))]
            body = urlencode([("model", harness.MODEL), *(("urls", u) for u in urls)]).encode()
            return Request("url", "/v1/embedding/image", body, URLENCODED)
        texts = [self.text(new) for _ in range(self.rng.randint(1, harness.TEXTS))]
        if roll < 0.80:
            return Request("text", harness.TEXT_PATH, harness.text_body(texts), harness.JSON)
        encoding = self.rng.choice(harness.OPENAI_ENCODINGS)
        body = harness.openai_body(texts, encoding)
        return Request("openai", harness.OPENAI_PATH, body, harness.JSON)


URLENCODED = "application/x-www-form-urlencoded"


class Sample(NamedTuple):
    at: float
    answered: int
    failed: int
    rss_mib: tuple[float, ...]  # each replica's
    fds: tuple[int, ...]
    redis_mib: float | None  # None while Redis is down
    redis_keys: int | None
    billed: int


@dataclass
class Tally:
    statuses: Counter[str] = field(default_factory=Counter)
    answered: int = 0
    failed: int = 0
    billed_seen: int = 0  # X-Billed-Tokens of the answers
    in_flight: int = 0


def rss_mib(pid: int) -> float:
    match = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(match.group(1)) / 1024 if match else 0.0


def descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def socket_peers(pid: int, ports: dict[int, str]) -> Counter[str]:
    """``pid``'s descriptors by what they are: a TCP connection to one of ``ports`` (named),
    another connection ("clients"), a listening socket, or anything else ("other")."""
    inodes: dict[str, tuple[int, int, str]] = {}  # inode: local port, remote port, state
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local, remote = (int(f.rsplit(":", 1)[1], 16) for f in fields[1:3])
                inodes[fields[9]] = (local, remote, fields[3])
    kinds: Counter[str] = Counter()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            inode = target.removeprefix("socket:[").removesuffix("]")
            if inode not in inodes:
                kinds["other"] += 1
                continue
            _, remote, state = inodes[inode]
            kinds["listening" if state == "0A" else ports.get(remote, "clients")] += 1
    return kinds


def redis_memory(client: redis.Redis) -> tuple[float | None, int | None]:
    try:
        used = client.info("memory")["used_memory"]
        return used / 2**20, client.dbsize()
    except redis.RedisError:
        return None, None


def fake_billed(fake_url: str) -> int:
    stats = harness.get_json(fake_url + "/_fake/stats")
    assert isinstance(stats, dict)
    items, texts = int(stats["answered_items"]), int(stats["answered_texts"])
    return TOKENS_PER_IMAGE * items + TEXT_TOKENS * texts


def key_kinds(client: redis.Redis) -> Counter[str]:
    """Redis's keys by kind: each key with its team tags, hashes and numbers starred."""
    kinds: Counter[str] = Counter()
    for key in client.scan_iter(count=1000):
        name = key.decode(errors="replace")
        name = re.sub(r"\{[^}]*\}", "{*}", name)
        kinds[re.sub(r"[0-9a-f]{16,}|(?<![v\d])\d+", "*", name)] += 1
    return kinds


class Soak:
    """The traffic, the samples and the Redis restart of one run, over servers started
    already: Redis (``redis_process``, on ``redis_port`` with its files in ``workdir``), the
    fake and the replicas (each a pid and a base URL)."""

    def __init__(self, args: argparse.Namespace, redis_process: subprocess.Popen[bytes],
                 redis_port: int, workdir: Path, fake_url: str,
                 replicas: list[tuple[int, str]]) -> None:  # fmt: skip
        self.args, self.redis_process = args, redis_process
        self.redis_port, self.workdir = redis_port, workdir
        self.fake_url, self.replicas = fake_url, replicas
        self.seconds = args.minutes * 60
        self.tally = Tally()
        self.samples: list[Sample] = []
        self.redis_client = redis.Redis(port=redis_port, socket_timeout=2)
        self.restarted_at: float | None = None
        self.kinds_at_warmup: Counter[str] = Counter()
        self.usage = self.billed = 0
        self.usage_by_account = Counter[str]()

    async def run(self) -> None:
        started = time.monotonic()
        stop = started + self.seconds
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            traffic = self.drive(session, started, stop)
            await asyncio.gather(traffic, self.sample_every(started, stop), self.restart(started))
            await self.settle(session)

    async def drive(self, session: aiohttp.ClientSession, started: float, stop: float) -> None:
        workload = Workload(random.Random(self.args.seed))
        keys = list(TEAM_KEYS.values())
        tasks: set[asyncio.Task[None]] = set()
        interval, sent = 1 / self.args.rate, 0
        while (now := time.monotonic()) < stop:
            warm = now - started < self.seconds * WARMUP_FRACTION
            request = workload.next(NEW_IN_WARMUP if warm else self.args.trickle)
            if self.tally.in_flight < MAX_IN_FLIGHT:
                replica = self.replicas[sent % len(self.replicas)][1]
                key = keys[workload.rng.randrange(len(keys))]
                task = asyncio.create_task(self.send(session, replica, request, key))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            else:
                self.tally.statuses["not sent: too many in flight"] += 1
            sent += 1
            await asyncio.sleep(max(0.0, started + sent * interval - time.monotonic()))
        await asyncio.gather(*tasks)

    async def send(
        self, session: aiohttp.ClientSession, base: str, request: Request, key: str
    ) -> None:
        headers = {"Authorization": f"Bearer {key}", "Content-Type": request.content_type}
        self.tally.in_flight += 1
        try:
            async with session.post(base + request.path, data=request.body,
                                    headers=headers) as response:  # fmt: skip
                await response.read()
                status = response.status
                self.tally.statuses[f"{request.kind} {status}"] += 1
                if status == 200:
                    self.tally.answered += 1
                    self.tally.billed_seen += int(response.headers.get("X-Billed-Tokens", 0))
                    return
                self.tally.failed += 1
                if status >= 500 and (status == 500 or "Retry-After" not in response.headers):
                    self.tally.statuses[f"{request.kind} {status} unclean"] += 1
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.tally.failed += 1
            self.tally.statuses[f"{request.kind} {type(exc).__name__}"] += 1
        finally:
            self.tally.in_flight -= 1

    async def sample_every(self, started: float, stop: float) -> None:
        warmup_end = started + self.seconds * WARMUP_FRACTION
        step = self.args.sample_seconds
        due, reported = started, Counter[str]()
        while True:
            self.samples.append(sample := await asyncio.to_thread(self.sample, started))
            print(sample_line(sample), flush=True)
            failures = Counter({name: count for name, count in self.tally.statuses.items()
                                if " 200" not in name}) - reported  # fmt: skip
            if failures:
                print(f"#   failed since the last sample: {dict(failures)}", flush=True)
                reported += failures
            if not self.kinds_at_warmup and time.monotonic() >= warmup_end:
                self.kinds_at_warmup = await asyncio.to_thread(key_kinds, self.redis_client)
            if due >= stop:
                return
            due = min(due + step, stop)
            await asyncio.sleep(max(0.0, due - time.monotonic()))

    def sample(self, started: float) -> Sample:
        pids = [pid for pid, _ in self.replicas]
        used, keys = redis_memory(self.redis_client)
        return Sample(time.monotonic() - started, self.tally.answered, self.tally.failed,
                      tuple(map(rss_mib, pids)), tuple(map(descriptors, pids)), used, keys,
                      fake_billed(self.fake_url))  # fmt: skip

    async def restart(self, started: float) -> None:
        await asyncio.sleep(self.seconds / 2)
        self.restarted_at = time.monotonic() - started
        self.redis_process.send_signal(signal.Signals[f"SIG{self.args.restart_signal}"])
        await asyncio.to_thread(self.redis_process.wait, 30)
        print(f"# {self.restarted_at:.0f} s: Redis stopped (SIG{self.args.restart_signal}), "
              f"down for {self.args.outage_seconds:g} s", flush=True)  # fmt: skip
        await asyncio.sleep(self.args.outage_seconds)
        self.redis_process = await asyncio.to_thread(start_redis, self.redis_port, self.workdir)
        print(f"# {time.monotonic() - started:.0f} s: Redis started again on its AOF", flush=True)

    async def settle(self, session: aiohttp.ClientSession) -> None:
        """Wait until usage equals what the fake billed, or :data:`USAGE_WAIT_SECONDS`."""
        deadline = time.monotonic() + USAGE_WAIT_SECONDS
        while True:
            self.usage = await self.usage_total(session)
            self.billed = await asyncio.to_thread(fake_billed, self.fake_url)
            if self.usage == self.billed or time.monotonic() > deadline:
                return
            await asyncio.sleep(1)

    async def usage_total(self, session: aiohttp.ClientSession) -> int:
        """billed_tokens over every account (the teams and, when Nomic billed what no team is
        charged, ``unattributed``), read from each replica in turn (each flushes its own
        counts when asked), the last reading kept in :attr:`usage_by_account`."""
        for _, base in self.replicas:
            headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            async with session.get(base + "/admin/usage", headers=headers) as response:
                if response.status != 200:
                    continue
                rows = (await response.json())["usage"]
            self.usage_by_account = Counter[str]()
            for row in rows:
                self.usage_by_account[row["team"]] += int(row["billed_tokens"])
        return sum(self.usage_by_account.values())


def sample_line(sample: Sample) -> str:
    replicas = "  ".join(f"gw{index} {rss:6.1f} MiB {fds:3d} fds" for index, (rss, fds)
                         in enumerate(zip(sample.rss_mib, sample.fds, strict=True), 1))  # fmt: skip
    redis_part = "Redis down"
    if sample.redis_mib is not None:
        redis_part = f"Redis {sample.redis_mib:6.1f} MiB {sample.redis_keys:7,d} keys"
    return (f"{sample.at:6.0f} s  {sample.answered:8,d} answered {sample.failed:5,d} failed  "
            f"{replicas}  {redis_part}  billed {sample.billed:,d}")  # fmt: skip


def table(samples: list[Sample], every: float) -> str:
    rows = ["| minute | answered | failed | gw1 RSS MiB | gw1 fds | gw2 RSS MiB | gw2 fds "
            "| Redis MiB | Redis keys | fake billed |", "|" + "---|" * 10]  # fmt: skip
    due = 0.0
    for index, sample in enumerate(samples):
        if sample.at + 1e-6 < due and index != len(samples) - 1:
            continue
        due += every
        redis_cells = ("down", "down") if sample.redis_mib is None else (
            f"{sample.redis_mib:.1f}", f"{sample.redis_keys:,d}")  # fmt: skip
        rows.append(f"| {sample.at / 60:.1f} | {sample.answered:,d} | {sample.failed:,d} | "
                    f"{sample.rss_mib[0]:.1f} | {sample.fds[0]} | {sample.rss_mib[1]:.1f} | "
                    f"{sample.fds[1]} | {redis_cells[0]} | {redis_cells[1]} | "
                    f"{sample.billed:,d} |")  # fmt: skip
    return "\n".join(rows)


class Flatness(NamedTuple):
    what: str
    at_warmup: float
    last_half_max: float
    flat: bool


def flatness(samples: list[Sample], seconds: float) -> list[Flatness]:
    """Each series's value at the end of the warm-up beside its highest in the last half."""
    warm = next(s for s in samples if s.at >= seconds * WARMUP_FRACTION)
    last = [s for s in samples if s.at >= seconds / 2]
    series: list[tuple[str, float, list[float], float]] = []
    for index in range(len(warm.rss_mib)):
        series.append((f"gw{index + 1} RSS MiB", warm.rss_mib[index],
                       [s.rss_mib[index] for s in last], 0))  # fmt: skip
        series.append((f"gw{index + 1} descriptors", warm.fds[index],
                       [s.fds[index] for s in last], FD_SLACK))  # fmt: skip
    if warm.redis_mib is not None:
        up = [s.redis_mib for s in last if s.redis_mib is not None]
        series.append(("Redis used_memory MiB", warm.redis_mib, up, 0))
    found = []
    for what, start, values, slack in series:
        most = max(values, default=start)
        found.append(Flatness(what, start, most, most <= max(start * (1 + FLAT_TOLERANCE),
                                                            start + slack)))  # fmt: skip
    return found


def report(soak: Soak) -> bool:
    """Print the table and verdicts; whether usage equals billed and no answer was unclean."""
    tally = soak.tally
    print(f"\n{table(soak.samples, soak.args.table_minutes * 60)}\n")
    print("answers: " + ", ".join(f"{name} {count:,d}" for name, count
                                  in sorted(tally.statuses.items())))  # fmt: skip
    print(f"Redis restarted at {soak.restarted_at or 0:.0f} s (SIG{soak.args.restart_signal}, "
          f"down {soak.args.outage_seconds:g} s)")  # fmt: skip
    kinds = key_kinds(soak.redis_client)
    print("Redis keys by kind (end of warm-up -> end):")
    for kind in sorted(set(kinds) | set(soak.kinds_at_warmup)):
        print(f"  {kind}: {soak.kinds_at_warmup[kind]:,d} -> {kinds[kind]:,d}")
    for pid, _ in soak.replicas:
        fake_port = int(soak.fake_url.rsplit(":", 1)[1])
        peers = socket_peers(pid, {soak.redis_port: "Redis", fake_port: "Nomic"})
        print(f"descriptors of {pid} at the end: " + ", ".join(
            f"{kind} {count}" for kind, count in sorted(peers.items())))  # fmt: skip
    flat = flatness(soak.samples, soak.seconds)
    for item in flat:
        print(f"flat after warm-up, {item.what}: {'met' if item.flat else 'NOT met'} "
              f"({item.at_warmup:.1f} at the warm-up's end, at most {item.last_half_max:.1f} in "
              f"the last half)")  # fmt: skip
    unclean = sum(count for name, count in tally.statuses.items() if "unclean" in name)
    equal = soak.usage == soak.billed
    print(
        f"usage equals billed: {'met' if equal else 'NOT met'} (usage billed_tokens "
        f"{soak.usage:,d}, the fake billed {soak.billed:,d}, answers said {tally.billed_seen:,d})"
    )
    print("usage by account: " + ", ".join(f"{account} {tokens:,d}" for account, tokens
                                           in sorted(soak.usage_by_account.items())))  # fmt: skip
    print(f"no 500 and every other 5xx with Retry-After: {'met' if not unclean else 'NOT met'} "
          f"({unclean} unclean)")  # fmt: skip
    return equal and not unclean


def log_problems(logs: Sequence[Path]) -> None:
    for log in logs:
        lines = log.read_text(errors="replace").splitlines()
        tracebacks = sum("Traceback" in line for line in lines)
        print(f"{log.name}: {len(lines)} log lines, {tracebacks} tracebacks")
        for line in [line for line in lines if "Traceback" in line or "ERROR" in line][:5]:
            print(f"  {line[:300]}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60, help="how long traffic runs")
    parser.add_argument("--rate", type=float, default=30, help="requests a second, in all")
    parser.add_argument("--sample-seconds", type=float, default=30, help="between samples")
    parser.add_argument("--table-minutes", type=float, default=5, help="between table rows")
    parser.add_argument("--url-ttl", type=int, default=60, help="GATEWAY_URL_TTL_SECONDS")
    parser.add_argument(
        "--trickle",
        type=float,
        default=0.01,
        help="share of images and texts that are new after the warm-up",
    )
    parser.add_argument("--restart-signal", choices=("KILL", "TERM"), default="KILL")
    parser.add_argument("--outage-seconds", type=float, default=5, help="Redis down this long")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep the logs and Redis's files here (default: a temporary "
        "directory, removed at the end)",
    )
    return parser.parse_args(argv)


def start_redis(port: int, workdir: Path) -> subprocess.Popen[bytes]:
    """A redis-server whose every acknowledged write is in its AOF when it is killed."""
    return spawn_redis(port, str(workdir), "--appendonly", "yes", "--appendfsync", "always")


@contextlib.contextmanager
def servers(args: argparse.Namespace, workdir: Path, logs: Sequence[Path]) -> Iterator[Soak]:
    """Redis, the fake and one gateway per log, each up; all stopped when the block ends."""
    teams = workdir / "teams.toml"
    teams.write_text(teams_file())
    redis_port, fake_port = free_port(), free_port()
    fake_url = f"http://127.0.0.1:{fake_port}"
    fake = [PY, "-m", "fake_nomic", "--port", str(fake_port),
            "--latency", str(FAKE_LATENCY)]  # fmt: skip
    with contextlib.ExitStack() as stack:
        soak: Soak | None = None
        redis_process = start_redis(redis_port, workdir)  # replaced by the restart
        stack.callback(lambda: stop(redis_process if soak is None else soak.redis_process))
        fake_log = stack.enter_context((workdir / "fake.log").open("wb"))
        fake_proc = stack.enter_context(harness.process(fake, dict(os.environ), log=fake_log))
        harness.wait_http(fake_url + "/_fake/stats", fake_proc)
        replicas = []
        for log in logs:
            port = free_port()
            env = {**os.environ, "NOMIC_API_KEY": FAKE_API_KEY, "GATEWAY_UPSTREAM_URL": fake_url,
                   "GATEWAY_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
                   "GATEWAY_TEAMS_FILE": str(teams), "GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN,
                   "GATEWAY_URL_TTL_SECONDS": str(args.url_ttl),
                   "GATEWAY_DATA_DIR": str(workdir / f"data-{port}"),
                   "GATEWAY_LOG_LEVEL": "warning", "GATEWAY_WORKERS": "1",
                   **UNPACED}  # fmt: skip
            handle = stack.enter_context(log.open("wb"))
            serve = [PY, "-m", "gateway", "serve", "--port", str(port)]
            proc = stack.enter_context(harness.process(serve, env, log=handle))
            harness.wait_http(f"http://127.0.0.1:{port}/healthz", proc)
            replicas.append((proc.pid, f"http://127.0.0.1:{port}"))
        soak = Soak(args, redis_process, redis_port, workdir, fake_url, replicas)
        yield soak


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        proc.wait(20)


def _stop(_signum: int, _frame: FrameType | None) -> None:
    raise SystemExit("soak: stopped by SIGTERM; stopping everything it started")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _stop)  # both unwind every `with`: what it started stops
    signal.signal(signal.SIGINT, signal.default_int_handler)  # ignored if started with &
    print(f"soak: {args.minutes:g} min at {args.rate:g} requests/s over 2 replicas; Redis "
          f"restarted at {args.minutes / 2:g} min; warm-up {args.minutes * WARMUP_FRACTION:g} "
          f"min; a text is {TEXT_TOKENS} tokens", flush=True)  # fmt: skip
    with contextlib.ExitStack() as stack:
        if args.workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="soak-")))
        else:
            workdir = args.workdir
            workdir.mkdir(parents=True, exist_ok=True)
        logs = [workdir / f"gateway-{index}.log" for index in (1, 2)]
        with servers(args, workdir, logs) as soak:
            asyncio.run(soak.run())
            ok = report(soak)
        log_problems(logs)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
