"""``create_app(settings)``: the composition root. Every part is built here from the settings
(the miss path's timings once, :class:`gateway.timings.MissTimings`), each resource in a
``cleanup_ctx`` of its own: opened in the order listed, closed in the reverse."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from gateway import metrics, teams_file
from gateway.accounts import Accounts, UsageBuffer, flushing
from gateway.appkeys import (
    ACCOUNTS,
    AUTH,
    BODY_BUDGET,
    BODY_LIMITS,
    COORDINATOR,
    ESTIMATOR,
    HEAVY_WORK,
    LEDGER,
    MODEL_ALIASES,
    PIPELINE,
    SETTINGS,
    SHIELD,
    STORE,
    TEXT_LIMITS,
    TIMINGS,
    UPSTREAM,
    USAGE,
)
from gateway.auth import Authenticator
from gateway.body_budget import BodyBudget
from gateway.breaker import Breaker
from gateway.config import Settings
from gateway.console import routes as console
from gateway.fetch import Fetcher
from gateway.forms import BodyLimits
from gateway.hot import HotCache
from gateway.middlewares import request_context
from gateway.pipeline import Pipeline
from gateway.quota import TokenEstimator
from gateway.routes import admin, embeddings, openai, ops, user
from gateway.shield import Shield
from gateway.store import MemoryStore, RedisStore, StoreError
from gateway.store.base import QuotaLedger
from gateway.store.data_dir import DataDir
from gateway.store.fallback import FallbackCoordinator, FallbackLedger
from gateway.store.memory_coordinator import MemoryCoordinator
from gateway.store.memory_ledger import MemoryLedger
from gateway.store.redis_backend import RedisBackend
from gateway.store.redis_coordinator import RedisCoordinator
from gateway.store.redis_ledger import RedisLedger, lease_for
from gateway.text_forms import TextLimits
from gateway.timings import MissTimings
from gateway.unattributed import Unattributed
from gateway.upstream import NomicClient

log = logging.getLogger(__name__)
STORE_RETRY_SECONDS = 2.0  # while the store is unreachable at start-up


def create_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[request_context], client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app[BODY_LIMITS] = BodyLimits(settings.max_image_bytes, settings.max_items, settings.models)
    app[TEXT_LIMITS] = TextLimits(settings.max_items, settings.max_text_bytes, settings.models)
    app[BODY_BUDGET] = BodyBudget(settings.body_bytes_in_flight, settings.max_body_bytes)
    app[TIMINGS] = MissTimings.of(settings)
    app[ESTIMATOR] = TokenEstimator(settings.tokens_per_item_estimate)  # for fetches and budgets
    # Closed in the reverse order: requests run to their end (and their settles) before the
    # fetcher stops, its fetches end before the shield stops sending, the shield's calls
    # before the session closes; the last usage is written before the store closes.
    app.cleanup_ctx.extend([_heavy_work_ctx, _store_ctx, _usage_ctx, _upstream_ctx, _shield_ctx,
                            _pipeline_ctx, _accounts_ctx])  # fmt: skip
    for path, handler in (("/v1/embedding/image", embeddings.embed_image),
                          ("/v1/embedding/text", embeddings.embed_text)):  # fmt: skip
        app.router.add_post(path, handler, expect_handler=embeddings.expect_body_later)
    app[MODEL_ALIASES] = dict(settings.model_aliases)
    openai.add_routes(app)
    app.router.add_get("/v1/user", user.current_user)
    app.router.add_get("/v1/user/", user.current_user)
    app.router.add_get("/v1/usage", user.own_usage)
    app.router.add_get("/healthz", ops.healthz)
    app.router.add_get("/readyz", ops.readyz)
    app.router.add_get("/metrics", ops.prometheus)
    if settings.admin_token is not None:
        app.add_subapp("/admin", admin.create_admin(settings.admin_token))
    else:
        log.info("the admin API is off: set GATEWAY_ADMIN_TOKEN to manage teams and keys")
    if settings.console:
        app.add_subapp("/console", console.create_console())
    return app


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    backend: RedisBackend | None = None
    data: DataDir | None = None
    if settings.redis_url is None and settings.data_dir is not None:
        data = await DataDir.open(
            Path(settings.data_dir), settings.disk_cache_bytes, settings.tags_per_day
        )
        app[STORE], app[LEDGER], app[COORDINATOR] = data.store, data.ledger, MemoryCoordinator()
    elif settings.redis_url is None:
        app[STORE] = MemoryStore(settings.memory_store_bytes)
        app[LEDGER] = MemoryLedger(settings.tags_per_day)
        app[COORDINATOR] = MemoryCoordinator()
    else:
        backend = RedisBackend(
            settings.redis_url,
            timeout_seconds=settings.redis_timeout_seconds,
            max_connections=settings.redis_max_connections,
            cluster=settings.redis_mode == "cluster",
        )
        app[STORE] = RedisStore(backend)
        lease = lease_for(settings.request_deadline_seconds)
        app[LEDGER] = RedisLedger(backend, lease, settings.tags_per_day)
        shared = RedisCoordinator(backend)
        fail_open = settings.on_store_failure == "open"
        app[COORDINATOR] = FallbackCoordinator(shared) if fail_open else shared
    where = _where(settings)
    log.info("store: %s", where)
    if settings.metrics_token is None:
        log.warning(
            "/metrics is open to anyone who reaches the port and names every team's usage: "
            "set GATEWAY_METRICS_TOKEN"
        )
    app[AUTH] = auth = Authenticator(app[LEDGER], settings.key_cache_seconds)
    retrying: asyncio.Task[None] | None = None
    try:
        await _prepare_store(app)
    except StoreError as exc:
        log.warning(
            "the store (%s) is unreachable: %s; answering what can be answered without it "
            "and trying again every %g s",
            where, exc, STORE_RETRY_SECONDS,
        )  # fmt: skip
        retrying = asyncio.create_task(_prepare_when_reachable(app, where))
    yield
    if retrying is not None:
        retrying.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await retrying
    await auth.drain()
    if backend is not None:
        await backend.close()
    if data is not None:
        await data.close()


async def _prepare_store(app: web.Application) -> None:
    """Check that the store answers and apply the teams file; raises StoreError."""
    await app[STORE].ping()
    teams = app[SETTINGS].teams_file
    if teams is not None:
        await teams_file.apply(teams_file.load(teams), app[LEDGER])


async def _prepare_when_reachable(app: web.Application, where: str) -> None:
    while True:
        await asyncio.sleep(STORE_RETRY_SECONDS)
        try:
            await _prepare_store(app)
        except StoreError:
            continue
        log.info("the store (%s) answers again", where)
        return


def _where(settings: Settings) -> str:
    if settings.redis_url is not None:
        return _redis_at(settings.redis_url)
    if settings.data_dir is None:
        return "embedded, in memory: teams, keys, usage and cache are forgotten when it stops"
    cache = settings.disk_cache_bytes / 2**20
    return f"embedded, kept in {settings.data_dir} (the cache up to {cache:g} MiB of it)"


def _redis_at(url: str) -> str:
    """Where a Redis URL points, without its credentials."""
    parts = urlsplit(url)
    return f"redis at {parts.path if parts.scheme == 'unix' else parts.netloc.rpartition('@')[2]}"


async def _heavy_work_ctx(app: web.Application) -> AsyncIterator[None]:
    """The thread a large request's parsing runs in: one, so such requests take turns there
    and leave the event loop (and the other core) to everyone else."""
    with ThreadPoolExecutor(1, thread_name_prefix="heavy-work") as executor:
        app[HEAVY_WORK] = executor
        yield


async def _usage_ctx(app: web.Application) -> AsyncIterator[None]:
    """Usage counted in the process (and what Nomic billed that no team is charged), written
    every ``usage_flush_seconds`` and once more at the end."""
    buffer = app[USAGE] = UsageBuffer(app[LEDGER], Unattributed())
    async with flushing(buffer, app[SETTINGS].usage_flush_seconds):
        yield


async def _upstream_ctx(app: web.Application) -> AsyncIterator[None]:
    """Nomic's client, on a session of its own."""
    settings = app[SETTINGS]
    timeout = aiohttp.ClientTimeout(total=settings.upstream_timeout_seconds)
    async with aiohttp.ClientSession(timeout=timeout, raise_for_status=False) as session:
        app[UPSTREAM] = NomicClient(
            session, settings.upstream_url, settings.nomic_api_key, app[USAGE].unattributed
        )
        yield


async def _shield_ctx(app: web.Application) -> AsyncIterator[None]:
    """The upstream shield and its breaker: at the end, what it holds is sent before it
    stops."""
    settings, timings = app[SETTINGS], app[TIMINGS]
    policy = timings.shield
    metrics.UPSTREAM_RATE_LIMIT.set(policy.rate_calls / policy.rate_period_seconds)
    breaker = Breaker(
        settings.breaker_failures, timings.breaker_open_seconds, timings.breaker_max_open_seconds
    )
    shield = app[SHIELD] = Shield(
        app[UPSTREAM], app[COORDINATOR], policy, breaker=breaker,
        lease_seconds=timings.lease_seconds,
    )  # fmt: skip
    yield
    await shield.drain()


async def _pipeline_ctx(app: web.Application) -> AsyncIterator[None]:
    """The pipeline: the hot cache and the fetcher in front of the shield. At the end, the
    fetches under way are stored (one taken over from another replica is handed to the
    shield, which is still sending)."""
    settings = app[SETTINGS]
    hot = HotCache(settings.hot_cache_bytes)
    fetcher = Fetcher(
        app[STORE], app[SHIELD], app[COORDINATOR], hot, app[ESTIMATOR], app[TIMINGS],
        shares_fetches=settings.redis_url is not None, unattributed=app[USAGE].unattributed,
    )  # fmt: skip
    app[PIPELINE] = Pipeline(app[STORE], hot, fetcher)
    yield
    await fetcher.drain()


async def _accounts_ctx(app: web.Application) -> AsyncIterator[None]:
    """Admission and settling. At the end, requests whose handlers the shutdown cancelled
    still run to their end and are settled, while the fetcher and the shield (closed after)
    still serve them."""
    settings, buffer = app[SETTINGS], app[USAGE]
    ledger: QuotaLedger = app[LEDGER]
    if settings.redis_url is not None or settings.data_dir is not None:  # one that can fail
        fail_open = settings.on_store_failure == "open"
        ledger = FallbackLedger(app[LEDGER], buffer.pending, fail_open=fail_open)
    accounts = app[ACCOUNTS] = Accounts(
        ledger, buffer, app[ESTIMATOR], learn_wait_seconds=app[TIMINGS].deadline_seconds
    )
    yield
    await accounts.drain()
