"""Every Prometheus metric, defined once. Labels are bounded: never a key, an image or a URL."""

from __future__ import annotations

from typing import Any, TypeVar

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

M = TypeVar("M", bound=MetricWrapperBase)
_children: dict[tuple[MetricWrapperBase, tuple[str, ...]], Any] = {}


def child(metric: M, *values: str) -> M:
    """``metric.labels(*values)``, looked up once: ``labels()`` validates and locks on every
    call, a few microseconds each on the request path. Not for a metric whose children are
    ever removed."""
    key = (metric, values)
    found = _children.get(key)
    if found is None:
        found = _children[key] = metric.labels(*values)
    return found


_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

REQUESTS = Counter("gateway_requests_total", "HTTP requests answered", ["route", "status_class"])
REQUEST_SECONDS = Histogram(
    "gateway_request_seconds", "HTTP request latency", ["route"], buckets=_LATENCY_BUCKETS
)
ITEMS = Counter(
    "gateway_items_total",
    "Embedding inputs by how they were answered (hit: cache; miss: not in cache; "
    "coalesced: a miss that joined another request's upstream call)",
    ["model", "outcome"],
)
UPSTREAM_CALLS = Counter(
    "gateway_upstream_calls_total", "Calls to Nomic by HTTP status or failure kind", ["outcome"]
)
UPSTREAM_ITEMS = Histogram(
    "gateway_upstream_items_per_call", "Items sent in one upstream call", buckets=_BATCH_BUCKETS
)
UPSTREAM_SECONDS = Histogram(
    "gateway_upstream_seconds", "Latency of one upstream call", buckets=_LATENCY_BUCKETS
)
BILLED_TOKENS = Counter(
    "gateway_billed_tokens_total",
    "Tokens Nomic billed, by the team that caused them",
    ["team", "model"],
)
SAVED_TOKENS = Counter(
    "gateway_saved_tokens_total",
    "Tokens the cache saved a team (what its hits would have cost)",
    ["team", "model"],
)
QUOTA_REJECTIONS = Counter(
    "gateway_quota_rejections_total", "Requests refused for a team limit", ["team", "limit"]
)
TEAM_ITEMS = Counter(
    "gateway_team_items_total",
    "Inputs answered per team, by kind (image: images and URLs; text) and outcome (hit: not "
    "paid upstream by this request; miss: paid)",
    ["team", "kind", "outcome"],
)
TEAM_LIMIT = Gauge(
    "gateway_team_limit",
    "A team's limit, as this process last read it (+Inf: unlimited)",
    ["team", "limit"],
    multiprocess_mode="livemax",
)
UPSTREAM_RATE_LIMIT = Gauge(
    "gateway_upstream_rate_limit_per_second",
    "The configured upstream rate, all replicas together (calls per second)",
    multiprocess_mode="livemax",
)
STORE_SECONDS = Histogram(
    "gateway_store_seconds",
    "Latency of one store operation",
    ["operation"],
    buckets=(0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)
UNATTRIBUTED_TOKENS = Counter(
    "gateway_unattributed_tokens_total",
    "Tokens Nomic billed, or may have billed, that no team is charged (gateway/unattributed.py)",
    ["reason"],
)
UNATTRIBUTED_ITEMS = Counter(
    "gateway_unattributed_items_total",
    "Inputs sent to Nomic whose cost no team is charged, known or not (gateway/unattributed.py)",
    ["reason"],
)
STORE_ERRORS = Counter("gateway_store_errors_total", "Store operations that failed", ["operation"])
STORE_FULL = Counter(
    "gateway_store_full_total",
    "Store writes Redis refused because it is at its maxmemory (noeviction)",
    ["operation"],
)
USAGE_PENDING = Gauge(
    "gateway_usage_pending_settles",
    "Settles kept in the process until the store takes writes again (merged per team and day)",
    multiprocess_mode="livesum",
)
UPSTREAM_QUEUE = Gauge(
    "gateway_upstream_queue_items",
    "Misses waiting for an upstream call",
    multiprocess_mode="livesum",
)
UPSTREAM_PACED_SECONDS = Histogram(
    "gateway_upstream_paced_seconds",
    "How long a call waited for the global upstream rate",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
UPSTREAM_RETRIES = Counter(
    "gateway_upstream_retries_total", "Upstream calls retried, by what failed", ["reason"]
)
BREAKER_STATE = Gauge(
    "gateway_upstream_breaker_state",
    "The upstream circuit breaker: 0 closed, 1 half-open, 2 open",
    multiprocess_mode="livemax",
)
REPLICA_WAITS = Counter(
    "gateway_replica_coalesced_items_total",
    "Misses that waited for another replica's upstream call instead of making their own",
)
STALE_SERVED = Counter(
    "gateway_stale_items_total", "URL entries past their TTL served because Nomic failed"
)
BODY_BYTES_IN_FLIGHT = Gauge(
    "gateway_body_bytes_in_flight",
    "Request body bytes claimed by requests being read or answered",
    multiprocess_mode="livesum",
)
BODIES_REFUSED = Counter(
    "gateway_bodies_refused_total",
    "Requests refused for body bytes in flight: the process's budget full (503), or the "
    "team's share of it used (429)",
    ["reason"],
)
ANSWER_ROOM_WAITS = Counter(
    "gateway_answer_room_waits_total",
    "Requests whose answer found no room in the budget of unsent answer bytes before it was "
    "built, and waited: served (room came) or refused (503)",
    ["outcome"],
)
CONNECTIONS_OPEN = Gauge(
    "gateway_connections_open",
    "Client connections open (bounded by GATEWAY_MAX_CONNECTIONS per process)",
    multiprocess_mode="livesum",
)
CONNECTIONS_SHED = Counter(
    "gateway_connections_shed_total",
    "Client connections the gateway closed to protect itself: at the bound idle, slow_headers, "
    "slow_body, slow_reader or lingering (one that may go, for a new one), refused (a new one, "
    "none may go); header_timeout, headers_too_large, header_budget, unsent_budget, "
    "write_timeout",
    ["reason"],
)
