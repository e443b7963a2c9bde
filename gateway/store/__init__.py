"""The store behind the cache: a narrow protocol with an embedded and a Redis implementation."""

from gateway.store.base import Store, StoreError
from gateway.store.memory import MemoryStore
from gateway.store.redis import RedisStore

__all__ = ["MemoryStore", "RedisStore", "Store", "StoreError"]
