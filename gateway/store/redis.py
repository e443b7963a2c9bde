"""The Redis store: the embedding cache shared by any number of gateway processes and machines."""

from __future__ import annotations

from collections.abc import Sequence

from redis.asyncio import RedisCluster

from gateway.store.redis_backend import RedisBackend, patiently


class RedisStore:
    """Cache entries as plain string keys: one MGET per lookup (one per node on a cluster),
    one pipeline per write."""

    def __init__(self, backend: RedisBackend) -> None:
        self._backend = backend
        self._redis = backend.client

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if isinstance(self._redis, RedisCluster):
            cluster, patience = self._redis, self._backend.patience_seconds
            lookup = patiently(lambda: cluster.mget_nonatomic(keys), patience)
            values = await self._backend.call("get", lookup)
        else:
            values = await self._backend.call("get", self._redis.mget(keys))
        return [value if isinstance(value, bytes | None) else value.encode() for value in values]

    async def set_many(self, items: Sequence[tuple[str, bytes]], ttl_seconds: int | None) -> None:
        if items:
            await self._backend.pipelined(
                "set", lambda pipe: [pipe.set(k, v, ex=ttl_seconds) for k, v in items]
            )

    async def ping(self) -> None:
        await self._backend.ping()
