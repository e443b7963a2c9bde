"""Redis Cluster resharding under load: hash slots move between masters (SETSLOT IMPORTING
and MIGRATING, MIGRATE of their keys, SETSLOT NODE) while the gateway serves. Its clients
meet MOVED, ASK and, for the multi-key scripts and pipelines of a slot half moved, TRYAGAIN:
no answer is a 500, and the usage recorded equals what the fake Nomic billed."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.crc import key_slot

from fake_nomic import FakeNomic
from gateway.keys import cache_key, content_digest
from gateway.models import DEFAULT_IMAGE_MODEL, Spec
from gateway.store.redis_keys import team_tag
from tests.conftest import (
    CLUSTER_URLS,
    admin_get,
    free_cluster_ports,
    start_cluster,
    start_gateway,
    stop_nodes,
    team_headers,
)
from tests.helpers import metric_value
from tests.test_faults_functional import billed_by_fake
from tests.test_redis_full_functional import Load

TEAMS = {"plain": {}, "limited": {"requests_per_minute": 10**5, "tokens_per_day": 10**8}}
PAUSE_SECONDS = 0.01  # between a migration's steps: requests meet each of its states


class Masters:
    """The masters of a cluster of the test's own, by node id."""

    def __init__(self, ports: list[int]) -> None:
        self.clients = {}
        for port in ports:
            client = redis.Redis(port=port)
            self.clients[client.cluster("myid").decode()] = client

    def owner(self, slot: int) -> str:
        any_node = next(iter(self.clients.values()))
        for start, end, master, *_ in any_node.execute_command("CLUSTER", "SLOTS"):
            if int(start) <= slot <= int(end):
                port = int(master[1])
                return next(i for i, c in self.clients.items() if _port(c) == port)
        raise AssertionError(f"no master serves slot {slot}")

    def migrate(self, slot: int, target_id: str) -> int:
        """Move ``slot`` to ``target_id`` as ``redis-cli --cluster reshard`` does, pausing
        between steps; the number of keys moved."""
        source_id = self.owner(slot)
        source, target = self.clients[source_id], self.clients[target_id]
        target.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        source.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        moved = 0
        while True:
            time.sleep(PAUSE_SECONDS)
            keys = source.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 10)
            if not keys:
                break
            source.execute_command("MIGRATE", "127.0.0.1", _port(target), "", 0, 5000,
                                   "KEYS", *keys)  # fmt: skip
            moved += len(keys)
        time.sleep(PAUSE_SECONDS)
        for client in (target, source, *self.clients.values()):
            client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        return moved

    def redirections(self) -> Counter[str]:
        """The MOVED, ASK and TRYAGAIN errors every master answered."""
        found = Counter[str]()
        for client in self.clients.values():
            for name, stat in client.info("errorstats").items():
                found[name.removeprefix("errorstat_")] += int(stat["count"])
        return Counter({name: found[name] for name in ("MOVED", "ASK", "TRYAGAIN")})

    def close(self) -> None:
        for client in self.clients.values():
            client.close()


def _port(client: redis.Redis) -> int:
    port: int = client.connection_pool.connection_kwargs["port"]
    return port


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[str]:
    """A 3-master Redis Cluster of the test's own (its slots are moved): a seed's URL."""
    ports = free_cluster_ports(3)
    workdir = tmp_path / "cluster"
    workdir.mkdir()
    nodes = start_cluster(ports, str(workdir), 0, 2000)
    url = f"redis://127.0.0.1:{ports[0]}/0"
    CLUSTER_URLS.add(url)
    try:
        yield url
    finally:
        CLUSTER_URLS.discard(url)
        stop_nodes(nodes)


def busy_slots(images: list[bytes]) -> list[int]:
    """The slots of the teams' keys, the upstream pacing keys, and the images' entries."""
    spec = Spec(DEFAULT_IMAGE_MODEL, "image")
    tags = [team_tag(team) for team in TEAMS] + ["{upstream}"]
    entries = [cache_key(spec, content_digest(image)) for image in images]
    return sorted({key_slot(key.encode()) for key in tags + entries})


@pytest.mark.serial
async def test_slots_moving_between_masters_under_load_cost_no_answer_and_no_usage(
    fake_nomic: FakeNomic, cluster: str
) -> None:
    gateway = await start_gateway(fake_nomic, cluster, redis_mode="cluster")
    seed = redis.RedisCluster.from_url(cluster)
    masters = Masters([node.port for node in seed.get_primaries()])
    seed.close()
    try:
        headers = {team: await team_headers(gateway, team, limits=limits)
                   for team, limits in TEAMS.items()}  # fmt: skip
        errors_before = store_errors()
        load = Load(gateway, headers)
        running = load.run()
        moved = Counter[str]()
        try:
            await asyncio.sleep(1.0)  # entries, usage and reservations in many slots
            for round_ in range(2):  # there and back: clients' slot maps go stale too
                for slot in busy_slots(list(load.team_of)[:200]):
                    owner = masters.owner(slot)
                    target = sorted(i for i in masters.clients if i != owner)[round_ % 2]
                    moved["slots"] += 1
                    moved["keys"] += await asyncio.to_thread(masters.migrate, slot, target)
            await asyncio.sleep(1.0)
        finally:
            load.stopping.set()
            await running
        errors = store_errors() - errors_before
        redirections = masters.redirections()
        billed = await billed_by_fake(fake_nomic, load.team_of)
        usage = {row["team"]: row for row in (await admin_get(gateway, "/admin/usage"))["usage"]}
    finally:
        await gateway.close()
        masters.close()

    outcomes = Counter(f"{a.team}: {a.status} {a.cache}" for a in load.answered)
    print(
        f"\n  moved {dict(moved)}; answered {dict(redirections)}; {dict(sorted(outcomes.items()))}"
    )
    assert all(redirections[name] for name in ("MOVED", "ASK", "TRYAGAIN")), redirections
    failed = [a for a in load.answered if a.status != 200]
    assert not failed, f"{len(failed)} answers not 200: {failed[:5]}"
    answered = Counter(a.team for a in load.answered)
    found = {team: (row["requests"], row["billed_tokens"]) for team, row in usage.items()}
    assert found == {team: (answered[team], billed[team]) for team in TEAMS}
    # Every admission was decided in Redis, none in the process for want of it.
    assert errors == 0, f"{errors:g} store operations failed while slots moved"


def store_errors() -> float:
    return metric_value("gateway_store_errors_total")
