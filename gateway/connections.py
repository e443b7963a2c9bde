"""How many client connections a process keeps open, and which one goes when it is full.

A process has ``RLIMIT_NOFILE`` descriptors. Client connections may take all of them but a
reserve: Redis's pool, aiohttp's connections to Nomic, the listening socket and the sockets
``accept()`` takes in one burst, and files (stdio, the event loop's own, logs, metrics files).
Without that bound, idle connections once took every descriptor: ``/healthz`` hung, the
connection to Nomic failed for lack of a descriptor and opened the circuit breaker.

At the bound, a new connection takes the place of the longest-idle or slowest one; when none
may go, the new connection is closed at once. A connection may go when it is idle (a keep-alive
connection between requests, or one that has not sent a byte of its request yet), or when it
holds its place without using it: its request line and headers are not in after a short time
(they come in one packet or two from any client that means to send them), its body comes
slower than a floor rate, aiohttp is reading away the rest of a body it already answered, or
its client has not read any of its answer for a short time. Which of those a connection is in
is the connection's to say (:meth:`Connection.shed_reason`); the guard only picks.
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
SHED_SCAN = 512  # connections looked at for one that may go before a new one is refused
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


@dataclasses.dataclass(frozen=True)
class Patience:
    """How long a connection may hold its place without using it before it may go for a new
    one (only at the bound: below it, the header, body and write timeouts rule)."""

    slow_seconds: float  # its headers not in, or its answer not read at all, for this long
    body_bytes_per_second: float  # a body coming slower than this ...
    body_window_seconds: float  # ... over this long (and no sooner than this into the body)

    @classmethod
    def of(cls, settings: Settings) -> Patience:
        return cls(
            settings.slow_client_seconds,
            settings.min_body_bytes_per_second,
            settings.body_rate_window_seconds,
        )

    def body_rate(self, now: float, window_start: float, window_bytes: int) -> float | None:
        """Bytes a second of a body over ``[window_start, now]``; None while that is shorter
        than the window (too soon to judge). Pure."""
        elapsed = now - window_start
        return window_bytes / elapsed if elapsed >= self.body_window_seconds else None

    def stall(
        self,
        now: float,
        *,
        idle: bool,
        lingering: bool,
        headers_since: float | None,
        unread_since: float | None,
        body_rate: float | None,
    ) -> str | None:
        """Why a connection in this state may go at ``now``, or None. Pure.

        ``headers_since``: its request line and headers began then and are not all in;
        ``unread_since``: its answer waits in the send buffer, none of it read since then;
        ``body_rate``: its body's rate over the last window (None: not judged yet);
        ``lingering``: answered, while aiohttp still reads away the rest of its body.
        """
        if idle:
            return "idle"
        if lingering:
            return "lingering"
        if unread_since is not None and now - unread_since >= self.slow_seconds:
            return "slow_reader"
        if headers_since is not None and now - headers_since >= self.slow_seconds:
            return "slow_headers"
        if body_rate is not None and body_rate < self.body_bytes_per_second:
            return "slow_body"
        return None


class Connection(Protocol):
    """What the guard needs of a connection."""

    def shed_reason(self, now: float) -> str | None:
        """Why it may be closed for a new connection at ``now`` (idle, or slow at something),
        or None while it is in use."""
        ...

    def shed(self) -> None:
        """Close it now."""
        ...


class ConnectionGuard:
    """Keeps at most ``bound`` connections open; see the module's docstring.

    Connections are kept in the order of their last activity (opened, a request started, an
    answer sent), so the longest-idle or longest-stalled one is near the front: the scan for
    one that may go skips the connections in use (each moves to the back) and looks at
    ``SHED_SCAN`` at most, so a full process of busy connections refuses a new one in bounded
    time.
    """

    def __init__(self, bound: int) -> None:
        self.bound = bound
        self._by_activity: OrderedDict[Connection, None] = OrderedDict()

    @property
    def open(self) -> int:
        return len(self._by_activity)

    def admit(self, connection: Connection, now: float) -> bool:
        """Count a new connection in; False if it must be closed (the bound, none may go)."""
        if len(self._by_activity) >= self.bound:
            found = self._first_sheddable(now)
            if found is None:
                metrics.child(metrics.CONNECTIONS_SHED, "refused").inc()
                log.warning("%d connections open: refused a new one, none is idle or slow",
                            self.bound)  # fmt: skip
                return False
            victim, reason = found
            self.forget(victim)
            victim.shed()
            metrics.child(metrics.CONNECTIONS_SHED, reason).inc()
            log.warning("%d connections open: closed one for a new one (%s)", self.bound, reason)
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

    def _first_sheddable(self, now: float) -> tuple[Connection, str] | None:
        for connection in list(itertools.islice(self._by_activity, SHED_SCAN)):
            reason = connection.shed_reason(now)
            if reason is not None:
                return connection, reason
            self._by_activity.move_to_end(connection)
        return None
