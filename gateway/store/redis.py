"""The Redis store: shared by any number of gateway processes and machines."""

from __future__ import annotations

import time
from collections.abc import Sequence

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway import metrics
from gateway.store.base import StoreError


class RedisStore:
    """Cache entries as plain string keys: one MGET per lookup, one pipeline per write."""

    def __init__(
        self, url: str, *, timeout_seconds: float = 1.0, max_connections: int = 64
    ) -> None:
        # A blocking pool: past max_connections a command waits (up to the timeout) for a
        # connection instead of failing, so bursts queue rather than error.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout_seconds,
            socket_timeout=timeout_seconds,
            socket_connect_timeout=timeout_seconds,
            health_check_interval=30,
        )
        self.client = self._redis = aioredis.Redis.from_pool(pool)

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        started = time.perf_counter()
        try:
            values = await self._redis.mget(keys)
        except (RedisError, OSError) as exc:
            raise StoreError(f"Redis MGET failed: {type(exc).__name__}") from exc
        finally:
            metrics.STORE_SECONDS.labels(operation="get").observe(time.perf_counter() - started)
        return [value if isinstance(value, bytes | None) else value.encode() for value in values]

    async def set_many(self, items: Sequence[tuple[str, bytes]], ttl_seconds: int | None) -> None:
        if not items:
            return
        started = time.perf_counter()
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key, value in items:
                    pipe.set(key, value, ex=ttl_seconds)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise StoreError(f"Redis SET failed: {type(exc).__name__}") from exc
        finally:
            metrics.STORE_SECONDS.labels(operation="set").observe(time.perf_counter() - started)

    async def ping(self) -> None:
        try:
            await self._redis.ping()
        except (RedisError, OSError) as exc:
            raise StoreError(f"Redis PING failed: {type(exc).__name__}") from exc

    async def close(self) -> None:
        await self._redis.aclose()
