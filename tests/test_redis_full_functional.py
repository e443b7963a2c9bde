"""Redis at its ``maxmemory`` under load (policy ``noeviction``, as Compose runs it): every
write is refused with OOM (cache stores, in-flight marks, admissions, settles, pacing).
Answers keep flowing, or are refused cleanly as configured, never with a 500; what the
process counted meanwhile lands once Redis takes writes again, equal to what Nomic billed."""

from __future__ import annotations

import asyncio
import itertools
import random
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import redis
import yaml
from aiohttp.test_utils import TestClient

from fake_nomic import FakeNomic, png
from tests.conftest import admin_get, free_port, spawn_redis, start_gateway, team_headers
from tests.helpers import image_form, metric_value
from tests.test_faults_functional import billed_by_fake, until

Client = TestClient[Any, Any]
TEAMS = {"plain": {}, "limited": {"requests_per_minute": 10**5, "tokens_per_day": 10**8}}
ROOM_BYTES = 400_000  # what Redis may take beyond what it holds once the load runs


class Answered(NamedTuple):
    team: str
    full: bool  # sent while Redis refused writes
    status: int
    cache: str
    retry_after: bool


def refused_writes() -> float:
    return metric_value("gateway_store_full_total")


class Load:
    """Clients of each team sending new images and ones they sent before, some of them
    hot in the process, some only in Redis, until :attr:`stopping`."""

    def __init__(self, gateway: Client, headers: dict[str, dict[str, str]]) -> None:
        self.gateway = gateway
        self.headers = headers
        self.team_of: dict[bytes, str] = {}
        self.answered: list[Answered] = []
        self.full = False
        self.stopping = asyncio.Event()
        self._seeds = itertools.count(1)

    async def client(self, team: str, seed: int) -> None:
        rng = random.Random(seed)
        seen: list[bytes] = []
        while not self.stopping.is_set():
            if not seen or rng.random() < 0.3:
                image = png(next(self._seeds))
                self.team_of[image] = team
                seen.append(image)
            images = [seen[-1] if rng.random() < 0.5 else rng.choice(seen)]
            full = self.full
            response = await self.gateway.post(
                "/v1/embedding/image", data=image_form(images), headers=self.headers[team]
            )
            await response.read()
            self.answered.append(Answered(team, full, response.status,
                                          response.headers.get("X-Cache", ""),
                                          "Retry-After" in response.headers))  # fmt: skip

    def run(self, clients_per_team: int = 3) -> asyncio.Future[list[None]]:
        return asyncio.gather(*(
            self.client(team, seed)
            for seed, team in enumerate(sorted(self.headers) * clients_per_team)
        ))  # fmt: skip


@pytest.fixture
def noeviction(tmp_path: Path) -> Iterator[redis.Redis]:
    """A redis-server of the test's own with maxmemory-policy noeviction (the test sets its
    maxmemory), and a client of it; gone at the test's end."""
    port = free_port()
    server = spawn_redis(port, str(tmp_path), "--maxmemory-policy", "noeviction")
    admin = redis.Redis(port=port)
    try:
        yield admin
    finally:
        admin.close()
        server.terminate()
        server.wait(10)


def _port(client: redis.Redis) -> int:
    port: int = client.connection_pool.connection_kwargs["port"]
    return port


@pytest.mark.serial
@pytest.mark.parametrize(
    ("on_store_failure", "room"),
    [("open", "maxmemory raised"), ("closed", "maxmemory raised"), ("open", "entries deleted")],
)
async def test_redis_full_under_load_answers_and_loses_no_usage(
    fake_nomic: FakeNomic, noeviction: redis.Redis, on_store_failure: str, room: str
) -> None:
    admin = noeviction
    port = _port(admin)
    gateway = await start_gateway(fake_nomic, f"redis://127.0.0.1:{port}/0",
                                  on_store_failure=on_store_failure)  # fmt: skip
    try:
        headers = {team: await team_headers(gateway, team, limits=limits)
                   for team, limits in TEAMS.items()}  # fmt: skip
        refused_before = refused_writes()
        load = Load(gateway, headers)
        running = load.run()
        try:
            # Once the load has opened its connections (their buffers count in Redis's
            # memory too), the room left is what the cache entries fill.
            await until(lambda: len(load.answered) >= 100, "load")
            used = int(admin.info("memory")["used_memory"])
            admin.config_set("maxmemory", used + ROOM_BYTES)
            await until(lambda: refused_writes() > refused_before, "Redis full", within=60)
            load.full = True
            await until(lambda: sum(a.full for a in load.answered) >= 300, "load while full")
            load.full = False
            if room == "maxmemory raised":
                admin.config_set("maxmemory", 0)
                await asyncio.sleep(1.5)  # a usage flush, under load
        finally:
            load.stopping.set()
            await running
        if room == "entries deleted":  # as docs/operations.md says: never FLUSHALL
            # (under load, new entries would fill the room again within a second)
            for key in admin.scan_iter("ng:v2:emb:*", count=1000):
                admin.unlink(key)
        billed = await billed_by_fake(fake_nomic, load.team_of)
        await asyncio.sleep(1.5)  # the last settles' flush
        usage = {row["team"]: row for row in (await admin_get(gateway, "/admin/usage"))["usage"]}
    finally:
        await gateway.close()

    outcomes = Counter(f"{'full' if a.full else 'not full'} {a.team}: {a.status} {a.cache}"
                       for a in load.answered)  # fmt: skip
    print(f"\n  {on_store_failure}: {dict(sorted(outcomes.items()))}")
    unclean = [a for a in load.answered if a.status != 200 and not (
        on_store_failure == "closed" and a.status == 503 and a.retry_after
    )]  # fmt: skip
    assert not unclean, f"{len(unclean)} answers neither 200 nor a clean 503: {unclean[:5]}"
    while_full = [a for a in load.answered if a.full and a.status == 200]
    assert any(a.cache == "HIT" for a in while_full), "no hit answered while Redis was full"
    if on_store_failure == "open":
        assert any(a.cache == "MISS" for a in while_full), "no miss answered while full"
    assert {team: row["billed_tokens"] for team, row in usage.items()} == {
        team: billed[team] for team in TEAMS
    }
    # Every request answered is counted; one that failed after its admission (a miss whose
    # upstream call could not be paced, failing closed) may be counted too.
    answered = Counter(a.team for a in load.answered if a.status == 200)
    sent = Counter(a.team for a in load.answered)
    for team in TEAMS:
        assert answered[team] <= usage[team]["requests"] <= sent[team], (team, usage[team])


def test_the_redis_full_alert_fires_on_refused_writes(tmp_path: Path) -> None:
    """promtool runs the rules over a gateway whose Redis refuses writes for a while."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: the README's test command installs it (prometheus)"
    rules = Path(__file__).resolve().parent.parent / "deploy" / "prometheus" / "rules.yml"
    annotations = {
        rule["alert"]: {k: v.replace("{{ $value }}", "3") for k, v in rule["annotations"].items()}
        for group in yaml.safe_load(rules.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }

    def fired(alert: str) -> list[dict[str, Any]]:
        return [{"exp_labels": {"severity": "critical"}, "exp_annotations": annotations[alert]}]

    case = {
        "rule_files": [str(rules)],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                {"series": 'gateway_store_full_total{operation="settle"}',
                 "values": "0 0 5 10 15 20 25 30 35 40 45 50 55 60"},
                {"series": "gateway_usage_pending_settles", "values": "0 0 3x13"},
            ],
            "alert_rule_test": [
                {"eval_time": "1m", "alertname": "NomicGatewayRedisFull", "exp_alerts": []},
                {"eval_time": "5m", "alertname": "NomicGatewayRedisFull",
                 "exp_alerts": fired("NomicGatewayRedisFull")},
                {"eval_time": "13m", "alertname": "NomicGatewayUsageNotWritten",
                 "exp_alerts": fired("NomicGatewayUsageNotWritten")},
            ],
        }],
    }  # fmt: skip
    path = tmp_path / "redis-full-test.yml"
    path.write_text(yaml.safe_dump(case))
    result = subprocess.run([promtool, "test", "rules", str(path)], capture_output=True,
                            text=True, check=False)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
