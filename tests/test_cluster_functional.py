"""A slot moving between Redis Cluster nodes under traffic: ASK and MOVED redirections are
followed by the client, never surfaced to users."""

from __future__ import annotations

import asyncio

import redis

from fake_nomic import FakeNomic, png
from gateway.keys import cache_key, content_digest
from gateway.models import Spec
from tests.conftest import flush, start_gateway
from tests.helpers import post_images


def node_clients(url: str) -> dict[str, redis.Redis]:
    """The cluster's masters by node id."""
    cluster = redis.RedisCluster.from_url(url)
    nodes = {
        node.name: redis.Redis(host=node.host, port=node.port) for node in cluster.get_primaries()
    }
    cluster.close()
    return {client.cluster("myid").decode(): client for client in nodes.values()}


async def test_a_slot_migrating_under_traffic_is_never_seen_by_clients(
    fake_nomic: FakeNomic, cluster_url: str
) -> None:
    flush(cluster_url)
    gateway = await start_gateway(fake_nomic, cluster_url, redis_mode="cluster")
    try:
        images = [png(seed) for seed in range(40)]
        assert (await post_images(gateway, images)).status == 200
        masters = node_clients(cluster_url)
        key = cache_key(Spec("nomic-embed-vision-v1.5", "image"), content_digest(images[0]))
        any_node = next(iter(masters.values()))
        slot = int(any_node.cluster("keyslot", key))
        source_id = next(i for i, c in masters.items() if c.cluster("countkeysinslot", slot))
        target_id = next(i for i in masters if i != source_id)
        source, target = masters[source_id], masters[target_id]

        traffic = asyncio.gather(*(post_images(gateway, images) for _ in range(30)))
        target.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        source.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        await asyncio.sleep(0.05)  # requests now meet ASK for the keys already moved
        keys = source.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000)
        host, port = (
            target.connection_pool.connection_kwargs["host"],
            target.connection_pool.connection_kwargs["port"],
        )
        source.execute_command("MIGRATE", host, port, "", 0, 5000, "KEYS", *keys)
        for client in masters.values():
            client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        responses = await traffic
        after = await post_images(gateway, images)  # clients' slot maps are stale: MOVED
        assert [r.status for r in responses] == [200] * 30
        assert after.status == 200
        assert after.headers["X-Cache"] == "HIT"
        assert int(target.cluster("countkeysinslot", slot)) >= 1
        for client in masters.values():
            client.close()
    finally:
        await gateway.close()
