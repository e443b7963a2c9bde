"""The store behind the cache: a narrow protocol with an embedded and a Redis implementation."""

from gateway.store.base import Store, StoreError
from gateway.store.memory import MemoryStore
from gateway.store.redis import RedisStore
from gateway.store.redis_backend import RedisBackend

__all__ = ["MemoryStore", "RedisBackend", "RedisStore", "Store", "StoreError"]
