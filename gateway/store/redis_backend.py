"""The one way to Redis: the client, the Lua scripts, and the wrapper every operation goes through.

Standalone Redis or Redis Cluster. On a cluster, cache keys spread over every slot: a lookup
is one MGET per node (``mget_nonatomic``) and a write one pipeline split by node; every Lua
script touches keys of one slot only (a team's keys share the ``{t:<id>}`` hash tag, the
upstream pacing keys ``{upstream}``), so CROSSSLOT cannot happen. MOVED, ASK and node
restarts are retried by the cluster client. While a slot is being moved between masters
(resharding) a multi-key command or script over it is answered TRYAGAIN until the move
ends: the client retries a few times in a few hundred ms, then gives up ("TTL exhausted");
scripts, pipelines and lookups are then sent again here, with backoff, for up to the
operation's timeout (:func:`patiently`).

:class:`RedisStore`, :class:`RedisLedger` and :class:`RedisCoordinator` run on one
:class:`RedisBackend`; whoever opens it closes it.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from importlib import resources
from typing import Any, TypeVar

import redis
import redis.asyncio as aioredis
from redis.exceptions import (
    ClusterError,
    OutOfMemoryError,
    RedisClusterException,
    RedisError,
    ResponseError,
)

from gateway import metrics
from gateway.store.base import StoreError, StoreFull, StoreRefused

T = TypeVar("T")

Client = aioredis.Redis | aioredis.RedisCluster

# How Redis names a line of the script it ran, in the errors it answers ("user_script:12").
_SCRIPT_LINE = re.compile(r"user_script:(\d+)")


def _pauses() -> Iterator[float]:
    """Seconds to wait before each new try: doubling from 10 ms, then 200 ms each."""
    pause = 0.01
    while True:
        yield pause
        pause = min(2 * pause, 0.2)


def _slot_moving(exc: BaseException) -> bool:
    """Whether the cluster client gave up on redirections (MOVED, ASK, TRYAGAIN), each an
    answer that the command was not run: its slot is being moved."""
    return isinstance(exc, ClusterError) and "TTL exhausted" in str(exc)


async def patiently(
    make: Callable[[], Awaitable[T]],
    patience_seconds: float,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> T:
    """Await ``make()``, and again after a pause while its slot is being moved, until
    ``patience_seconds`` of pauses have passed (0: once)."""
    waited = 0.0
    for pause in _pauses():
        try:
            return await make()
        except ClusterError as exc:
            if not _slot_moving(exc) or waited >= patience_seconds:
                raise
        await sleep(pause)
        waited += pause
    raise AssertionError("unreachable")


class ScriptError(ResponseError):
    """A Lua script failed in Redis; the message names the file and line of ``lua/``."""


class Script:
    """One file of ``lua/``, run after its ``prelude`` (a file of shared functions, if any).

    Redis sees one script, the prelude's lines first; an error it answers names a line of
    that whole, which :meth:`locate` turns back into the file and line it came from.
    """

    def __init__(
        self, client: Client, name: str, prelude: str | None = None, patience_seconds: float = 0.0
    ) -> None:
        self.name = name
        self._patience_seconds = patience_seconds
        self.prelude = prelude
        before = "" if prelude is None else _lua(prelude)
        self._prelude_lines = before.count("\n")
        self._registered = client.register_script(before + _lua(name))

    async def __call__(self, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        try:
            return await patiently(
                lambda: self._registered(keys=keys, args=args), self._patience_seconds
            )
        except ResponseError as exc:
            raise ScriptError(self.locate(str(exc))) from exc

    def locate(self, message: str) -> str:
        """Redis's error ``message`` with each line of the script it ran named by its file
        and line; one that names no line (say, out of memory) is prefixed with the file."""
        located, named = _SCRIPT_LINE.subn(lambda found: self.where(int(found[1])), message)
        return located if named else f"lua/{self.name}: {message}"

    def where(self, line: int) -> str:
        """``lua/<file>:<line>`` of a line of the script as Redis ran it (counted from 1)."""
        if self.prelude is not None and line <= self._prelude_lines:
            return f"lua/{self.prelude}:{line}"
        return f"lua/{self.name}:{line - self._prelude_lines}"


def _out_of_memory(exc: BaseException) -> bool:
    """Whether Redis refused a write for its ``maxmemory`` (in a script or a pipeline too;
    a script refused at its first write has written nothing)."""
    cause = exc.__cause__ if isinstance(exc, ScriptError) else exc
    return isinstance(cause, OutOfMemoryError) or "OOM command not allowed" in str(exc)


def _not_connected(exc: BaseException) -> bool:
    """Whether no connection could be made, so the command was never sent."""
    return isinstance(exc, redis.ConnectionError) and "connecting to" in str(exc)


def _raised_in_redis_py(exc: BaseException) -> bool:
    """Whether ``exc`` was raised by the code of the redis package itself."""
    frame = exc.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    return frame is not None and _REDIS_PY in frame.tb_frame.f_code.co_filename


_REDIS_PY = os.path.dirname(redis.__file__) + os.sep


def _lua(name: str) -> str:
    text = resources.files("gateway.store").joinpath("lua", name).read_text()
    return text if text.endswith("\n") else text + "\n"


class RedisBackend:
    """Owns the client (standalone or cluster) and the scripts registered on it; every
    operation goes through :meth:`call`, which times it and turns its failures into
    :class:`StoreError`."""

    def __init__(
        self,
        url: str,
        *,
        timeout_seconds: float = 1.0,
        max_connections: int = 64,
        cluster: bool = False,
    ) -> None:
        self.cluster = cluster
        # On a cluster, how long an operation whose slot is being moved is tried again.
        self.patience_seconds = timeout_seconds if cluster else 0.0
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
        self._scripts: dict[tuple[str, str | None], Script] = {}

    def script(self, name: str, *, prelude: str | None = None) -> Script:
        """The script of ``lua/<name>`` run after ``lua/<prelude>``, registered once; call it
        inside :meth:`call`."""
        found = self._scripts.get((name, prelude))
        if found is None:
            found = self._scripts[(name, prelude)] = Script(
                self.client, name, prelude, self.patience_seconds
            )
        return found

    async def call(self, what: str, awaitable: Awaitable[T]) -> T:
        """Await one Redis operation: timed, and its failures as :class:`StoreError` (the
        cluster client's own errors too, which are no ``RedisError``: a cluster it cannot
        reach). A script's error keeps its message, which names the file and line."""
        started = time.perf_counter()
        try:
            return await awaitable
        except (RedisError, RedisClusterException, OSError) as exc:
            if _out_of_memory(exc):
                metrics.child(metrics.STORE_FULL, what).inc()
                raise StoreFull(f"Redis {what} failed: Redis is full (maxmemory)") from exc
            reason = f"ScriptError: {exc}" if isinstance(exc, ScriptError) else type(exc).__name__
            if _slot_moving(exc):
                reason = "its slot is still being moved (resharding)"
            failure = StoreRefused if _not_connected(exc) or _slot_moving(exc) else StoreError
            raise failure(f"Redis {what} failed: {reason}") from exc
        except Exception as exc:
            if not _raised_in_redis_py(exc):
                raise
            # redis-py's own bug, not ours: during a cluster failover its connection may
            # raise AttributeError ('NoneType' object has no attribute 'writelines'; redis-py
            # issue 4287). The store failed; the request path knows what to do with that.
            raise StoreError(f"Redis {what} failed: {type(exc).__name__} in redis-py") from exc
        finally:
            metrics.child(metrics.STORE_SECONDS, what).observe(time.perf_counter() - started)

    async def pipelined(self, what: str, queue: Callable[[Any], object]) -> list[Any]:
        """One pipeline of the commands ``queue`` adds to it, as one :meth:`call`: entering a
        pipeline is inside the wrapper too, since on a cluster it may reach a node that is
        down."""

        async def run() -> list[Any]:
            async with self.client.pipeline(transaction=False) as pipe:
                queue(pipe)
                result: list[Any] = await pipe.execute()
                return result

        return await self.call(what, patiently(run, self.patience_seconds))

    async def ping(self) -> None:
        await self.call("ping", self.client.ping())

    async def close(self) -> None:
        await self.client.aclose()
