"""The Redis store: shared by any number of gateway processes and machines.

Standalone Redis or Redis Cluster. On a cluster, cache keys spread over every slot: a lookup
is one MGET per node (``mget_nonatomic``) and a write one pipeline split by node; every Lua
script touches keys of one slot only (a team's keys share the ``{t:<id>}`` hash tag, the
upstream pacing keys ``{upstream}``), so CROSSSLOT cannot happen. MOVED, ASK and node
restarts are retried by the cluster client.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisClusterException, RedisError

from gateway import metrics
from gateway.store.base import StoreError

T = TypeVar("T")

Client = aioredis.Redis | aioredis.RedisCluster


async def call(what: str, awaitable: Awaitable[T]) -> T:
    """Await one Redis operation: timed, and its failures as :class:`StoreError` (the cluster
    client's own errors too, which are no ``RedisError``: a cluster it cannot reach)."""
    started = time.perf_counter()
    try:
        return await awaitable
    except (RedisError, RedisClusterException, OSError) as exc:
        raise StoreError(f"Redis {what} failed: {type(exc).__name__}") from exc
    finally:
        metrics.child(metrics.STORE_SECONDS, what).observe(time.perf_counter() - started)


async def pipelined(what: str, client: Client, queue: Callable[[Any], object]) -> list[Any]:
    """One pipeline of the commands ``queue`` adds to it, as one :func:`call`: entering a
    pipeline is inside the wrapper too, since on a cluster it may reach a node that is down."""

    async def run() -> list[Any]:
        async with client.pipeline(transaction=False) as pipe:
            queue(pipe)
            result: list[Any] = await pipe.execute()
            return result

    return await call(what, run())


class RedisStore:
    """Cache entries as plain string keys: one MGET per lookup, one pipeline per write."""

    def __init__(
        self,
        url: str,
        *,
        timeout_seconds: float = 1.0,
        max_connections: int = 64,
        cluster: bool = False,
    ) -> None:
        self.cluster = cluster
        self.client: Client
        if cluster:
            # The cluster client keeps a pool per node that refuses a command past its size
            # rather than waiting: sized for bursts.
            self.client = aioredis.RedisCluster.from_url(
                url,
                socket_timeout=timeout_seconds,
                socket_connect_timeout=timeout_seconds,
                max_connections=max(1000, max_connections * 16),
            )
        else:
            # A blocking pool: past max_connections a command waits (up to the timeout) for
            # a connection instead of failing, so bursts queue rather than error.
            pool = aioredis.BlockingConnectionPool.from_url(
                url,
                max_connections=max_connections,
                timeout=timeout_seconds,
                socket_timeout=timeout_seconds,
                socket_connect_timeout=timeout_seconds,
                health_check_interval=30,
            )
            self.client = aioredis.Redis.from_pool(pool)
        self._redis = self.client

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if isinstance(self._redis, aioredis.RedisCluster):
            values = await call("get", self._redis.mget_nonatomic(keys))
        else:
            values = await call("get", self._redis.mget(keys))
        return [value if isinstance(value, bytes | None) else value.encode() for value in values]

    async def set_many(self, items: Sequence[tuple[str, bytes]], ttl_seconds: int | None) -> None:
        if items:
            await pipelined(
                "set", self._redis, lambda pipe: [pipe.set(k, v, ex=ttl_seconds) for k, v in items]
            )

    async def ping(self) -> None:
        await call("ping", self._redis.ping())

    async def close(self) -> None:
        await self._redis.aclose()
