"""Ops endpoints: liveness, readiness, Prometheus metrics."""

from __future__ import annotations

import os

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    generate_latest,
    multiprocess,
)

from gateway.appkeys import SETTINGS, STORE, UPSTREAM
from gateway.auth import bearer_matches
from gateway.errors import Unauthorized
from gateway.store import StoreError


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready when the store answers. Nomic's health is reported, not required: a gateway whose
    upstream fails still serves every hit, so it should stay in the load balancer."""
    upstream = request.app[UPSTREAM].last_outcome
    try:
        await request.app[STORE].ping()
    except StoreError as exc:
        body = {"status": "unavailable", "store": str(exc), "upstream_last_call": upstream}
        return web.json_response(body, status=503)
    return web.json_response({"status": "ok", "store": "ok", "upstream_last_call": upstream})


async def prometheus(request: web.Request) -> web.Response:
    """This process's metrics; with ``--workers``, every worker's, added up. They name every
    team and its spend, so with ``GATEWAY_METRICS_TOKEN`` set only its bearer reads them."""
    token = request.app[SETTINGS].metrics_token
    if token is not None and not bearer_matches(request.headers.get("Authorization"), token):
        raise Unauthorized("/metrics needs Authorization: Bearer <GATEWAY_METRICS_TOKEN>")
    registry = REGISTRY
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    response = web.Response(body=generate_latest(registry))
    response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    response.charset = "utf-8"
    return response
