"""The benchmark's servers, scenarios and table: what ``python -m tests.bench`` runs (its
``__main__`` says what it measures and how). Its imports need the project and its test extras
(orjson, redis, aiohttp, Pillow): ``__main__`` imports it once its arguments are parsed, so that
``--help`` needs none of them.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import hashlib
import itertools
import math
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import redis

from fake_nomic import FAKE_API_KEY, FakeNomic, png
from gateway.teams import key_hash, new_key
from tests.bench import harness, nginx
from tests.bench.harness import JSON, MODEL, TEXTS, image_part, multipart, multipart_head
from tests.bench.naive import key as naive_key
from tests.conftest import free_port

PY = sys.executable
SERVER_CPU, LOAD_CPU = "0", "1"
FAKE_LATENCY = 0.1  # seconds per upstream call, about what Nomic takes for one small batch
ZIPF_IMAGES, ZIPF_EXPONENT = 5000, 1.1
# Two rows of one run whose requests cost the same differ by about this much on a shared
# machine (the OpenAI float hits: 0.97 and 1.05 of the Nomic shape's CPU in two runs).
SAME_COST = 1.05
KEY = new_key()  # a team with every kind of limit (high enough never to reject here)
BUDGET_KEY = new_key()  # a team with token budgets only: no limit bears on a hit
TEAMS = f"""
[teams.bench.limits]
requests_per_minute = 1_000_000_000
images_per_minute = 1_000_000_000
texts_per_minute = 1_000_000_000
tokens_per_day = 1_000_000_000_000
tokens_per_month = 1_000_000_000_000
[[teams.bench.keys]]
sha256 = "{key_hash(KEY)}"

[teams.budget.limits]
tokens_per_day = 1_000_000_000_000
[[teams.budget.keys]]
sha256 = "{key_hash(BUDGET_KEY)}"
"""


@dataclass
class Target:
    """A server under test, and the wrk script (by salt) that loads it."""

    label: str
    kind: str  # "gateway", "naive", "ceiling", "nginx" or "direct"
    pid: int
    url: str
    script: Callable[[int], Path]
    during: Callable[[], None] | None = None  # done every second while it is loaded


@dataclass
class Row:
    scenario: str
    server: str
    result: harness.WrkResult
    cpu_us: float
    upstream: tuple[int, int] | None  # calls and images answered during the measured run
    rss_mib: float
    kind: str  # "gateway", "naive", "ceiling", "nginx" or "direct"
    ratios: dict[str, float] = field(default_factory=dict)


class Bench:
    def __init__(
        self, args: argparse.Namespace, tmp: Path, redis_url: str, fake_url: str, fake_pid: int
    ):
        self.args, self.tmp, self.redis_url, self.fake_url = args, tmp, redis_url, fake_url
        self.rows: list[Row] = []
        self.runs = 0
        self.fake_pid = fake_pid
        self.data_dirs = itertools.count()

    def gateway_env(self, **extra: str) -> dict[str, str]:
        teams = self.tmp / "teams.toml"
        teams.write_text(TEAMS)
        return {
            **os.environ,
            "NOMIC_API_KEY": FAKE_API_KEY,
            "GATEWAY_UPSTREAM_URL": self.fake_url,
            "GATEWAY_TEAMS_FILE": str(teams),
            "GATEWAY_REDIS_URL": self.redis_url,
            # Where an embedded-store gateway keeps its data: a directory of its own in the
            # run's temporary one (never the user's, and never one another server holds).
            "GATEWAY_DATA_DIR": str(self.tmp / f"data-{next(self.data_dirs)}"),
            "GATEWAY_LOG_LEVEL": "info",
            **extra,
        }

    @contextlib.contextmanager
    def server(
        self, kind: str, env: dict[str, str], cpus: str, path: str = "/v1/embedding/image"
    ) -> Iterator[tuple[int, str]]:
        """Start one server under test; yield its pid and the URL of its ``path``."""
        port = free_port()
        if kind == "gateway":
            args = [PY, "-m", "gateway", "serve", "--port", str(port)]
            probe = f"http://127.0.0.1:{port}/healthz"
        elif kind == "nginx":
            fake = self.fake_url.removeprefix("http://")
            args = nginx.command(self.tmp / f"nginx-{port}", port, fake, FAKE_API_KEY)
            probe = f"http://127.0.0.1:{port}{nginx.PROBE}"
        else:
            args = [PY, "-m", f"tests.bench.{kind}", str(port), self.redis_url]
            args += [self.fake_url, FAKE_API_KEY]  # for misses
            probe = f"http://127.0.0.1:{port}/"
        with harness.process(args, env, cpus) as proc:
            harness.wait_http(probe, proc)
            yield proc.pid, f"http://127.0.0.1:{port}{path}"

    def upstream(self) -> tuple[int, int]:
        """The fake's answered calls and inputs so far, images and texts."""
        stats = harness.get_json(self.fake_url + "/_fake/stats")
        assert isinstance(stats, dict)
        calls = stats["answered_calls"] + stats["answered_text_calls"]
        return calls, stats["answered_items"] + stats["answered_texts"]

    def compare(
        self,
        scenario: str,
        targets: list[Target],
        connections: int,
        wrk_cpus: str = LOAD_CPU,
    ) -> None:
        """Warm each server up, then load them in turns, ``--rounds`` times ``--seconds``
        each: a slow spell of this shared machine then falls on all of them, not on one."""
        for target in targets:
            print(f"  {scenario}: {target.label}", file=sys.stderr, flush=True)
            harness.run_wrk(target.url, target.script(self._salt()), 2, connections, wrk_cpus)
        samples: dict[str, list[tuple[harness.WrkResult, float, tuple[int, int]]]] = {
            target.label: [] for target in targets
        }
        for _ in range(self.args.rounds):
            for target in targets:
                samples[target.label].append(self._sample(target, connections, wrk_cpus))
        for target in targets:
            results = [result for result, _, _ in samples[target.label]]
            requests = sum(result.requests for result in results)
            combined = harness.WrkResult(
                rps=requests / (self.args.seconds * self.args.rounds),
                p50_ms=statistics.median(result.p50_ms for result in results),
                p99_ms=statistics.median(result.p99_ms for result in results),
                requests=requests,
            )
            cpu = sum(cpu for _, cpu, _ in samples[target.label])
            # None answered in the time (a loaded machine, a 1 s test run): no figure, not a crash.
            cpu_us = cpu / requests * 1e6 if requests else math.nan
            calls = sum(upstream[0] for _, _, upstream in samples[target.label])
            images = sum(upstream[1] for _, _, upstream in samples[target.label])
            rss = harness.peak_rss_mib(harness.tree(target.pid))
            self.rows.append(Row(scenario, target.label, combined, cpu_us, (calls, images), rss,
                                 target.kind))  # fmt: skip

    def _salt(self) -> int:
        self.runs += 1
        return self.runs

    def _sample(
        self, target: Target, connections: int, wrk_cpus: str
    ) -> tuple[harness.WrkResult, float, tuple[int, int]]:
        """One wrk run: its result, the server's CPU seconds, the upstream calls and images."""
        pids = harness.tree(target.pid)
        cpu_before, upstream_before = harness.cpu_seconds(pids), self.upstream()
        stop = threading.Event()
        if target.during is not None:
            threading.Thread(target=_every_second, args=(stop, target.during), daemon=True).start()
        try:
            result = harness.run_wrk(target.url, target.script(self._salt()), self.args.seconds,
                                     connections, wrk_cpus)  # fmt: skip
        finally:
            stop.set()
        time.sleep(2 * FAKE_LATENCY)  # upstream calls still running belong to this run
        upstream_after = self.upstream()
        upstream = (upstream_after[0] - upstream_before[0], upstream_after[1] - upstream_before[1])
        return result, harness.cpu_seconds(pids) - cpu_before, upstream


def _every_second(stop: threading.Event, action: Callable[[], None]) -> None:
    while not stop.wait(1):
        action()


def fixed_script(
    tmp: Path, body: bytes, key: str, content_type: str = harness.MULTIPART
) -> Callable[[int], Path]:
    digest = hashlib.blake2b(body, digest_size=4).hexdigest()  # bodies of one length differ
    name = f"{content_type.partition(';')[0].replace('/', '-')}-{len(body)}-{digest}"
    body_file = tmp / f"body-{name}.bin"
    body_file.write_bytes(body)
    path = harness.wrk_script(tmp / f"fixed-{name}-{key_hash(key)[:8]}.lua", key,
                              f'read("{body_file}")', content_type=content_type)  # fmt: skip
    return lambda _salt: path


def _parts(tmp: Path, image: bytes) -> str:
    """Lua setup: ``head`` (the body before an image), ``image``, ``tail`` (after it)."""
    head = multipart_head() + image_part(b"")[:-2]  # without the CRLF that ends the part
    tail = f"\r\n--{harness.BOUNDARY}--\r\n".encode()
    files = {"head": head, "image": image, "tail": tail}
    lines = []
    for name, data in files.items():
        (tmp / f"{name}.bin").write_bytes(data)
        lines.append(f'local {name} = read("{tmp / name}.bin")')
    return "\n".join(lines)


def misses_script(tmp: Path, image: bytes, key: str) -> Callable[[int], Path]:
    """Every request a new image: the base PNG with a distinct trailer after its end."""

    def script(salt: int) -> Path:
        return harness.wrk_script(
            tmp / f"misses-{salt}.lua", key, _parts(tmp, image),
            dynamic=f'head .. image .. string.format("{salt:04d}%012d", counter) .. tail',
        )  # fmt: skip

    return script


def text_misses_script(tmp: Path, key: str) -> Callable[[int], Path]:
    """Every request :data:`TEXTS` new texts: the passage behind the run's salt, the request's
    number and the text's position (``TAG`` replaced by ``"%04d %012d %02d"`` of them)."""
    template = tmp / "text-misses.json"
    template.write_bytes(harness.text_misses_template())

    def script(salt: int) -> Path:
        setup = (
            f'local template = read("{template}")\n'
            "local function texts()\n  local index = 0\n"
            f'  return (template:gsub("{harness.TAG}", function()\n    index = index + 1\n'
            f'    return string.format("%04d %012d %02d", {salt}, counter, index)\n  end))\nend'
        )
        return harness.wrk_script(tmp / f"text-misses-{salt}.lua", key, setup, dynamic="texts()",
                                  content_type=JSON)  # fmt: skip

    return script


def zipf_image(base: bytes, rank: int) -> bytes:
    return base + b"%08d" % rank


def zipf_script(tmp: Path, image: bytes, key: str) -> Callable[[int], Path]:
    weights = [1 / rank**ZIPF_EXPONENT for rank in range(1, ZIPF_IMAGES + 1)]
    total, running, cdf = sum(weights), 0.0, []
    for weight in weights:
        running += weight
        cdf.append(f"{running / total:.9f}")
    setup = (
        _parts(tmp, image) + "\nlocal cdf = {" + ",".join(cdf) + "}\n"
        "local function pick()\n  local r, lo, hi = math.random(), 1, #cdf\n"
        "  while lo < hi do\n    local mid = math.floor((lo + hi) / 2)\n"
        "    if cdf[mid] < r then lo = mid + 1 else hi = mid end\n  end\n  return lo\nend\n"
    )

    def script(salt: int) -> Path:
        return harness.wrk_script(
            tmp / f"zipf-{salt}.lua", key, setup + f"math.randomseed({salt})",
            dynamic='head .. image .. string.format("%08d", pick()) .. tail',
        )  # fmt: skip

    return script


def seed_baselines(client: redis.Redis, images: list[bytes]) -> None:
    """Store the fake's answer for each image as JSON text, the way the baselines read it."""
    with client.pipeline(transaction=False) as pipe:
        for image in images:
            pipe.set(naive_key(image), orjson.dumps(FakeNomic.embedding(MODEL, image)))
        pipe.execute()


def hits(
    bench: Bench,
    scenario: str,
    images: list[bytes],
    *,
    embedded: bool = False,
    proxy: bool = False,
    workers: int = 1,
) -> None:
    tmp, connections = bench.tmp, bench.args.connections
    body = multipart(images)
    cpus = "0,1" if workers > 1 else SERVER_CPU
    wrk_cpus = "0,1" if workers > 1 else LOAD_CPU
    variants = [(f"gateway --workers {workers}" if workers > 1 else "gateway", KEY, False)]
    if embedded:
        variants += [
            ("gateway, team with token budgets only", BUDGET_KEY, False),
            ("gateway, embedded store", KEY, True),
        ]
    scripts = {key: fixed_script(tmp, body, key) for key in (KEY, BUDGET_KEY)}
    with contextlib.ExitStack() as stack:
        targets = []
        for label, key, in_process in variants:
            env = bench.gateway_env(GATEWAY_WORKERS=str(workers))
            if in_process:
                del env["GATEWAY_REDIS_URL"]
            pid, url = stack.enter_context(bench.server("gateway", env, cpus))
            harness.post(url, body, key)  # the miss that fills the cache
            targets.append(Target(label, "gateway", pid, url, scripts[key]))
        for kind in ("naive", "ceiling"):
            pid, url = stack.enter_context(bench.server(kind, dict(os.environ), cpus))
            targets.append(Target(f"{kind} baseline", kind, pid, url, scripts[KEY]))
        if proxy:
            targets.append(warm_nginx(bench, stack, body, scripts[KEY], cpus))
        bench.compare(scenario, targets, connections, wrk_cpus)


NGINX = "nginx proxy_cache"


def warm_nginx(
    bench: Bench, stack: contextlib.ExitStack, body: bytes, script: Callable[[int], Path], cpus: str
) -> Target:
    """nginx with ``body``'s answer in its cache, so that its row measures hits."""
    pid, url = stack.enter_context(bench.server("nginx", dict(os.environ), cpus))
    harness.post(url, body, KEY)  # the miss that fills the cache
    status = harness.cache_status(url, body, KEY)
    if status != "HIT":
        raise RuntimeError(f"nginx answered a repeated body with X-Cache-Status {status!r}")
    return Target(NGINX, "nginx", pid, url, script)


def misses(bench: Bench) -> None:
    """Every image new. One client shows what the gateway adds to a lone miss; eight show
    their misses sharing upstream calls (the fake then embeds several images a call), where
    nginx sends one call a request."""
    image = png(3, size=128)
    through, direct = (
        misses_script(bench.tmp, image, KEY),
        misses_script(bench.tmp, image, FAKE_API_KEY),
    )
    fake = bench.fake_url + "/v1/embedding/image"
    # Nomic's own rate (1200 calls / 5 min) would make this a measure of the pacing.
    env = bench.gateway_env(GATEWAY_UPSTREAM_RATE_CALLS="1000000000",
                            GATEWAY_UPSTREAM_RATE_BURST="1000")  # fmt: skip
    with contextlib.ExitStack() as stack:
        pid, url = stack.enter_context(bench.server("gateway", env, SERVER_CPU))
        del env["GATEWAY_REDIS_URL"]  # what the gateway adds without a round trip to Redis
        alone_pid, alone_url = stack.enter_context(bench.server("gateway", env, SERVER_CPU))
        proxy = bench.server("nginx", dict(os.environ), SERVER_CPU)
        nginx_pid, nginx_url = stack.enter_context(proxy)
        naive = bench.server("naive", dict(os.environ), SERVER_CPU)
        naive_pid, naive_url = stack.enter_context(naive)
        ceiling = bench.server("ceiling", dict(os.environ), SERVER_CPU)
        ceiling_pid, ceiling_url = stack.enter_context(ceiling)
        for clients in (1, 8):
            targets = [
                Target("fake Nomic, direct", "direct", bench.fake_pid, fake, direct),
                Target("gateway", "gateway", pid, url, through),
            ]
            if clients == 1:
                targets.append(Target("gateway, embedded store", "gateway", alone_pid, alone_url,
                                      through))  # fmt: skip
            targets.append(Target(NGINX, "nginx", nginx_pid, nginx_url, through))
            targets.append(Target("naive baseline", "naive", naive_pid, naive_url, through))
            targets.append(Target("ceiling baseline", "ceiling", ceiling_pid, ceiling_url,
                                  through))  # fmt: skip
            bench.compare(f"c. misses, {clients} client{'s' if clients > 1 else ''}", targets,
                          clients)  # fmt: skip


def zipf(bench: Bench) -> str:
    """Zipf-distributed hits, the cache filled beforehand by another gateway process (as if
    another replica had fetched every image earlier): the measured one starts with nothing
    in its process, everything in Redis. Returns what the filling cost upstream."""
    scenario, base, connections = "d. Zipf mix, 64 clients", png(4, size=128), 64
    images = [zipf_image(base, rank) for rank in range(1, ZIPF_IMAGES + 1)]
    seed_baselines(redis.Redis.from_url(bench.redis_url), images)
    script = zipf_script(bench.tmp, base, KEY)
    env = bench.gateway_env(GATEWAY_UPSTREAM_RATE_CALLS="1000000000",
                            GATEWAY_UPSTREAM_RATE_BURST="1000")  # fmt: skip
    before = bench.upstream()
    with bench.server("gateway", env, SERVER_CPU) as (_, url):
        bodies = [multipart(images[i : i + 50]) for i in range(0, len(images), 50)]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda body: harness.post(url, body, KEY), bodies))
    after = bench.upstream()
    with contextlib.ExitStack() as stack:
        pid, url = stack.enter_context(bench.server("gateway", env, SERVER_CPU))
        metrics_url = url.replace("/v1/embedding/image", "/metrics")
        targets = [Target("gateway", "gateway", pid, url, script,
                          during=lambda: harness.fetch(metrics_url))]  # fmt: skip
        for kind in ("naive", "ceiling"):
            pid, url = stack.enter_context(bench.server(kind, dict(os.environ), SERVER_CPU))
            targets.append(Target(f"{kind} baseline", kind, pid, url, script))
        bench.compare(scenario, targets, connections)
    return (f"d. the cache was filled beforehand by another gateway process with "
            f"{after[0] - before[0]:,} upstream calls for {after[1] - before[1]:,} images; "
            f"Zipf exponent {ZIPF_EXPONENT} over {ZIPF_IMAGES:,} images; /metrics scraped "
            f"every second")  # fmt: skip


def texts(bench: Bench) -> str:
    """Texts, as the official client sends them, :data:`TEXTS` a request. Hits: the same
    texts every time, beside the naive baseline, and beside them the same texts in OpenAI's
    shape (``POST /v1/embeddings``), answered from the same entries in either encoding.
    Misses: every text new, from 1 client and from 8, beside the fake called directly and the
    naive baseline (one upstream call a request, the body passed on whole). Returns what the
    texts were."""
    hit_texts = [f"{index:02d} {harness.PASSAGE}" for index in range(TEXTS)]
    hit_body = harness.text_body(hit_texts)
    hit_script = fixed_script(bench.tmp, hit_body, KEY, JSON)
    openai_bodies = {encoding: harness.openai_body(hit_texts, encoding)
                     for encoding in harness.OPENAI_ENCODINGS}  # fmt: skip
    through = text_misses_script(bench.tmp, KEY)
    direct = text_misses_script(bench.tmp, FAKE_API_KEY)
    fake = bench.fake_url + harness.TEXT_PATH
    env = bench.gateway_env(GATEWAY_UPSTREAM_RATE_CALLS="1000000000",
                            GATEWAY_UPSTREAM_RATE_BURST="1000")  # fmt: skip
    with contextlib.ExitStack() as stack:
        pid, url = stack.enter_context(bench.server("gateway", env, SERVER_CPU, harness.TEXT_PATH))
        naive = bench.server("naive", dict(os.environ), SERVER_CPU, harness.TEXT_PATH)
        naive_pid, naive_url = stack.enter_context(naive)
        for filling in (url, naive_url):
            harness.post(filling, hit_body, KEY, JSON)  # the miss that fills the cache
        openai_url = url.replace(harness.TEXT_PATH, harness.OPENAI_PATH)
        openai = [Target(openai_label(encoding), "gateway", pid, openai_url,
                         openai_hits(bench, openai_url, body))
                  for encoding, body in openai_bodies.items()]  # fmt: skip
        bench.compare(f"f. {TEXTS}-text hits", [
            Target("gateway", "gateway", pid, url, hit_script),
            *openai,
            Target("naive baseline", "naive", naive_pid, naive_url, hit_script),
        ], bench.args.connections)  # fmt: skip
        for clients in (1, 8):
            targets = [
                Target("fake Nomic, direct", "direct", bench.fake_pid, fake, direct),
                Target("gateway", "gateway", pid, url, through),
                Target("naive baseline", "naive", naive_pid, naive_url, through),
            ]
            bench.compare(f"f. text misses, {clients} client{'s' if clients > 1 else ''}",
                          targets, clients)  # fmt: skip
    options = ", ".join(f"{name} {value}" for name, value in harness.TEXT_OPTIONS.items())
    return (f"f. {TEXTS} texts a request, each a {len(harness.PASSAGE)}-byte passage behind a "
            f"tag of its own, with the official client's options ({options}); the gateway's "
            f"upstream calls hold at most 10 texts (its default); the OpenAI-shape hits send "
            f"the same texts and model with Nomic's options left to the gateway, answered "
            f"from the entries the Nomic-shape body filled")  # fmt: skip


def openai_label(encoding: str) -> str:
    return f"gateway, OpenAI shape, {encoding}"


def openai_hits(bench: Bench, url: str, body: bytes) -> Callable[[int], Path]:
    """The wrk script posting ``body`` to ``url``, once it has been seen answered from the
    entries the Nomic-shape body filled (a HIT with no upstream call of its own)."""
    before = bench.upstream()
    status = harness.cache_status(url, body, KEY, JSON, header="X-Cache")
    if status != "HIT" or bench.upstream() != before:
        raise RuntimeError(f"the OpenAI-shape body was answered X-Cache {status!r}, not from "
                           f"the Nomic-shape body's entries")  # fmt: skip
    return fixed_script(bench.tmp, body, KEY, JSON)


def entry_bytes(redis_url: str) -> tuple[int, int, int]:
    """MEMORY USAGE of one cached gateway entry and one baseline JSON entry, and the
    gateway entry's value length."""
    client = redis.Redis.from_url(redis_url)
    gateway_key = next(client.scan_iter("ng:v2:emb:*", count=1000))
    baseline_key = next(client.scan_iter("naive:*", count=1000))
    return (
        int(client.memory_usage(gateway_key) or 0),
        int(client.memory_usage(baseline_key) or 0),
        int(client.strlen(gateway_key)),
    )


def table(rows: list[Row]) -> str:
    lines = [
        "| scenario | server | requests/s | p50 ms | p99 ms | server CPU us/req | x naive "
        "| x ceiling | upstream calls / inputs | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in sorted(rows, key=lambda r: r.scenario):  # stable: measured order within one
        baselines = {r.kind: r.result.rps for r in rows if r.scenario == row.scenario}
        ratio = {k: _ratio(row.result.rps, baselines[k]) for k in ("naive", "ceiling")
                 if k in baselines}  # fmt: skip
        row.ratios = ratio
        cells = [
            row.scenario, row.server, f"{row.result.rps:,.0f}", f"{row.result.p50_ms:.2f}",
            f"{row.result.p99_ms:.2f}", f"{row.cpu_us:.0f}",
            f"{ratio['naive']:.2f}" if "naive" in ratio else "",
            f"{ratio['ceiling']:.2f}" if "ceiling" in ratio else "",
            f"{row.upstream[0]:,} / {row.upstream[1]:,}" if row.upstream else "",
            f"{row.rss_mib:.0f}",
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets(rows: list[Row]) -> list[str]:
    def find(scenario: str, server: str) -> Row | None:
        return next((r for r in rows if r.scenario.startswith(scenario) and r.server == server),
                    None)  # fmt: skip

    out = []
    one, eight = find("a.", "gateway"), find("b.", "gateway")
    if one is not None:
        naive, ceiling = one.ratios.get("naive", 0), one.ratios.get("ceiling", 0)
        out.append(f"a. 1-image hits >= 1.6x naive: {_met(naive >= 1.6)} ({naive:.2f}x); "
                   f">= 0.6x ceiling: {_met(ceiling >= 0.6)} ({ceiling:.2f}x)")  # fmt: skip
    if eight is not None:
        naive = eight.ratios.get("naive", 0)
        out.append(f"b. 8-image hits >= 2.5x naive: {_met(naive >= 2.5)} ({naive:.2f}x)")
    lone = "c. misses, 1 "
    direct, naive_row = find(lone, "fake Nomic, direct"), find(lone, "naive baseline")
    servers = [(label, row) for label, server in (("Redis", "gateway"),
               ("embedded store", "gateway, embedded store"), ("nginx", NGINX),
               ("the ceiling", "ceiling baseline"))
               if (row := find(lone, server)) is not None]  # fmt: skip
    if direct is not None and servers:
        added = {label: row.result.p50_ms - direct.result.p50_ms for label, row in servers}
        gateway = [added[label] for label in ("Redis", "embedded store") if label in added]
        out.append(
            f"c. a lone miss adds <= 1.5 ms at p50 over the fake called directly: "
            f"{_met(max(gateway) <= 1.5)} ("
            + "; ".join(f"{label} {ms:.2f} ms" for label, ms in added.items())
            + ")"
        )
    if naive_row is not None and servers:
        naive_cpu = naive_row.cpu_us
        cpu = {label: _ratio(row.cpu_us, naive_cpu) for label, row in servers
               if label in ("Redis", "embedded store")}  # fmt: skip
        out.append(
            f"c. CPU per miss <= 2x the naive baseline's ({naive_cpu:.0f} us): "
            f"{_met(max(cpu.values()) <= 2)} ("
            + "; ".join(f"{label} {ratio:.2f}x" for label, ratio in cpu.items())
            + ")"
        )
    return out + _text_notes(find)


def _text_notes(find: Callable[[str, str], Row | None]) -> list[str]:
    """No target is set for texts: what the bench shows of them."""
    out = []
    hit = find(f"f. {TEXTS}-text hits", "gateway")
    if hit is not None:
        out.append(f"f. {TEXTS}-text hits (no target): {hit.ratios.get('naive', 0):.2f}x naive")
    for encoding in harness.OPENAI_ENCODINGS:
        shaped = find(f"f. {TEXTS}-text hits", openai_label(encoding))
        if hit is not None and shaped is not None:
            rps = _ratio(shaped.result.rps, hit.result.rps)
            cpu = _ratio(shaped.cpu_us, hit.cpu_us)
            out.append(f"f. OpenAI-shape {TEXTS}-text hits, {encoding}, cost no more CPU than "
                       f"the Nomic shape's (within {SAME_COST - 1:.0%}): {_met(cpu <= SAME_COST)} "
                       f"({cpu:.2f}x its CPU per request, {rps:.2f}x its requests/s)")  # fmt: skip
    lone = "f. text misses, 1 "
    direct, gateway, naive = (find(lone, server) for server in (
        "fake Nomic, direct", "gateway", "naive baseline"))  # fmt: skip
    if direct is not None and gateway is not None and naive is not None:
        added = {label: row.result.p50_ms - direct.result.p50_ms
                 for label, row in (("gateway", gateway), ("naive", naive))}  # fmt: skip
        cpu = _ratio(gateway.cpu_us, naive.cpu_us)
        out.append(f"f. a lone text miss (no target) adds at p50 over the fake called directly: "
                   f"gateway {added['gateway']:.2f} ms, naive {added['naive']:.2f} ms; CPU per "
                   f"request {cpu:.2f}x the naive baseline's")  # fmt: skip
    return out


def _ratio(value: float, base: float) -> float:
    """``value / base``; NaN where ``base`` is nothing (a row that got no answer in its time)."""
    return value / base if base else math.nan


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def run(args: argparse.Namespace) -> None:
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        redis_port, fake_port = free_port(), free_port()
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        fake = [PY, "-m", "fake_nomic", "--port", str(fake_port),
                "--latency", str(FAKE_LATENCY)]  # fmt: skip
        with (
            harness.process(["redis-server", "--port", str(redis_port), "--save", "",
                             "--appendonly", "no", "--dir", name], cpus=LOAD_CPU),
            harness.process(fake, cpus=LOAD_CPU) as fake_proc,
        ):  # fmt: skip
            fake_url = f"http://127.0.0.1:{fake_port}"
            harness.wait_http(fake_url + "/_fake/stats", fake_proc)
            bench = Bench(args, tmp, redis_url, fake_url, fake_proc.pid)
            notes: list[str] = []
            one, eight = [png(1, size=128)], [png(10 + i, size=128) for i in range(8)]
            seed_baselines(redis.Redis.from_url(redis_url), one + eight)
            if "a" in args.only:
                hits(bench, "a. 1-image hits", one, embedded=True, proxy=True)
            if "b" in args.only:
                hits(bench, "b. 8-image hits", eight)
            if "c" in args.only:
                misses(bench)
            if "d" in args.only:
                notes.append(zipf(bench))
            if "e" in args.only:
                hits(bench, "e. 1-image hits, --workers 2", one, workers=2)
            if "f" in args.only:
                notes.append(texts(bench))
            gateway_entry, baseline_entry, value = entry_bytes(redis_url)
    signal.alarm(0)
    print(f"\nnomic-gateway benchmark, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, "
          f"{len(one[0]):,}-byte PNGs, wrk -c{args.connections} for hits; each server "
          f"{args.rounds} x {args.seconds} s, in turns with the others of its scenario; the "
          f"fake Nomic's latency {FAKE_LATENCY * 1000:.0f} ms a call\n")  # fmt: skip
    print(table(bench.rows))
    print(f"\nRedis MEMORY USAGE per cached 768-dim embedding: gateway {gateway_entry:,} bytes "
          f"({value:,}-byte value), baselines' JSON text {baseline_entry:,} bytes")  # fmt: skip
    print("\n".join(["", *notes, *targets(bench.rows)]))
    print(f"\n(ran in {time.monotonic() - started:.0f} s)")
