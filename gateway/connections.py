"""How many client connections a process keeps open, and which one goes when it is full.

A process has ``RLIMIT_NOFILE`` descriptors. Client connections may take all of them but a
reserve: Redis's pool, aiohttp's connections to Nomic, the listening socket and the sockets
``accept()`` takes in one burst, and files (stdio, the event loop's own, logs, metrics files).
Without that bound, idle connections once took every descriptor: ``/healthz`` hung, the
connection to Nomic failed for lack of a descriptor and opened the circuit breaker.

At the bound, a new connection takes the place of the longest-idle one (a keep-alive
connection between requests, or one that has not sent a byte of its request yet); when none
is idle, the new connection is closed at once.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import resource
from collections import OrderedDict
from typing import Protocol

from gateway import metrics
from gateway.config import Settings

log = logging.getLogger(__name__)

LISTEN_BACKLOG = 128  # connections the kernel queues for accept(); asyncio takes that many at once
UPSTREAM_CONNECTIONS = 100  # aiohttp's connector limit, which the session to Nomic keeps
FILES = 64  # stdio, the event loop's epoll and self-pipe, log and DNS sockets, spare
FILES_PER_WORKER = 8  # each worker's metrics files, which any worker's /metrics reads
SHED_SCAN = 512  # connections looked at for an idle one before a new one is refused
_UNLIMITED = 1 << 20  # what RLIM_INFINITY is taken as


@dataclasses.dataclass(frozen=True)
class DescriptorBudget:
    """The process's descriptor limit, the reserve kept from clients, and the bound."""

    limit: int
    reserve: int
    bound: int
    configured: bool  # the bound is GATEWAY_MAX_CONNECTIONS, not derived

    def describe(self) -> str:
        source = "GATEWAY_MAX_CONNECTIONS" if self.configured else "derived"
        return (
            f"at most {self.bound} client connections per process ({source}; descriptor limit "
            f"{self.limit}, {self.reserve} kept for Redis, Nomic, the listener and files)"
        )

    @property
    def overcommitted(self) -> bool:
        """The configured bound leaves less than the reserve: descriptors may run out."""
        return self.bound > self.limit - self.reserve


def raise_descriptor_limit() -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit where allowed; the soft limit after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _UNLIMITED if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):  # not allowed here (a container's cap): keep the soft one
            pass
    return _UNLIMITED if soft == resource.RLIM_INFINITY else soft


MAX_DERIVED_CONNECTIONS = 10_000


def budget(settings: Settings, limit: int) -> DescriptorBudget:
    """The bound on client connections under a descriptor ``limit``. Pure."""
    redis = settings.redis_max_connections if settings.redis_url is not None else 0
    reserve = (
        FILES
        + FILES_PER_WORKER * settings.workers
        + 2 * LISTEN_BACKLOG  # accepted in one burst, not yet counted, and as many closing
        + 2  # listening sockets (IPv4 and IPv6 for a name or "::")
        + UPSTREAM_CONNECTIONS
        + redis
    )
    if settings.max_connections is not None:
        return DescriptorBudget(limit, reserve, settings.max_connections, configured=True)
    derived = max(limit // 4, limit - reserve)  # a tiny limit: a quarter for clients, at least
    # A container's limit can be a million: each connection also holds read buffers (tens of
    # KiB that aiohttp reads ahead of the handler), so memory bounds it too.
    derived = min(derived, MAX_DERIVED_CONNECTIONS)
    return DescriptorBudget(limit, reserve, derived, configured=False)


class Connection(Protocol):
    """What the guard needs of a connection."""

    def is_idle(self) -> bool:
        """No request is being read or handled on it."""
        ...

    def shed(self) -> None:
        """Close it now."""
        ...


class ConnectionGuard:
    """Keeps at most ``bound`` connections open; see the module's docstring.

    Connections are kept in the order of their last activity (opened, a request started, an
    answer sent), so the longest-idle one is near the front: the scan for it skips the
    connections busy with a request (each moves to the back) and looks at ``SHED_SCAN`` at
    most, so a full process of busy connections refuses a new one in bounded time.
    """

    def __init__(self, bound: int) -> None:
        self.bound = bound
        self._by_activity: OrderedDict[Connection, None] = OrderedDict()

    @property
    def open(self) -> int:
        return len(self._by_activity)

    def admit(self, connection: Connection) -> bool:
        """Count a new connection in; False if it must be closed (the bound, nothing idle)."""
        if len(self._by_activity) >= self.bound:
            idle = self._longest_idle()
            if idle is None:
                metrics.child(metrics.CONNECTIONS_SHED, "refused").inc()
                log.warning("%d connections open: refused a new one, none is idle", self.bound)
                return False
            self.forget(idle)
            idle.shed()
            metrics.child(metrics.CONNECTIONS_SHED, "idle").inc()
            log.warning("%d connections open: closed the longest-idle one", self.bound)
        self._by_activity[connection] = None
        metrics.CONNECTIONS_OPEN.set(len(self._by_activity))
        return True

    def active(self, connection: Connection) -> None:
        """``connection`` did something: it moves to the back of the idle order."""
        if connection in self._by_activity:
            self._by_activity.move_to_end(connection)

    def forget(self, connection: Connection) -> None:
        """``connection`` is closed, or closing (idempotent)."""
        if connection in self._by_activity:
            del self._by_activity[connection]
            metrics.CONNECTIONS_OPEN.set(len(self._by_activity))

    def _longest_idle(self) -> Connection | None:
        for connection in list(itertools.islice(self._by_activity, SHED_SCAN)):
            if connection.is_idle():
                return connection
            self._by_activity.move_to_end(connection)
        return None
