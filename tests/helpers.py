"""Request helpers shared by the functional tests."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient
from prometheus_client import REGISTRY

from gateway.breaker import Breaker
from gateway.config import Settings
from gateway.fetch import Fetcher
from gateway.hot import HotCache
from gateway.pipeline import Pipeline
from gateway.quota import TokenEstimator
from gateway.shield import Embedder, Policy, Shield
from gateway.store import Store
from gateway.store.base import Coordinator
from gateway.timings import MissTimings
from gateway.unattributed import Unattributed

DEFAULTS = Settings(nomic_api_key="not-a-real-key")


def metric_value(sample: str, **labels: str) -> float:
    """What this process's ``sample`` (e.g. ``gateway_store_errors_total``) counts, summed
    over every label set that has ``labels`` (none given: every one); 0 before any."""
    return sum(
        found.value
        for metric in REGISTRY.collect()
        for found in metric.samples
        if found.name == sample and labels.items() <= found.labels.items()
    )


def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py``, loaded from its file as it is run: scripts/ is no package."""
    path = Path(__file__).resolve().parent.parent / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def image_form(images: list[bytes], model: str | None = None) -> aiohttp.FormData:
    form = aiohttp.FormData()
    if model is not None:
        form.add_field("model", model)
    for data in images:
        form.add_field("images", data, filename="images", content_type="application/octet-stream")
    return form


async def post_images(
    client: TestClient[Any, Any], images: list[bytes], model: str | None = None
) -> aiohttp.ClientResponse:
    return await client.post("/v1/embedding/image", data=image_form(images, model))


async def post_urls(
    client: TestClient[Any, Any], urls: list[str], model: str | None = None
) -> aiohttp.ClientResponse:
    fields = [("urls", url) for url in urls]
    if model is not None:
        fields.append(("model", model))
    return await client.post("/v1/embedding/image", data=fields)


def policy(**changes: Any) -> Policy:
    """The shield's policy of the default settings, with ``changes``."""
    return Policy.of(DEFAULTS)._replace(**changes)


def timings(**changes: Any) -> MissTimings:
    """The miss path's timings of the default settings, with ``changes``."""
    return dataclasses.replace(MissTimings.of(DEFAULTS), **changes)


def breaker(**changes: Any) -> Breaker:
    """The breaker of the default settings, with ``changes`` (its arguments, by name)."""
    made = timings()
    arguments = {"failures_to_open": DEFAULTS.breaker_failures,
                 "open_seconds": made.breaker_open_seconds,
                 "max_open_seconds": made.breaker_max_open_seconds}  # fmt: skip
    return Breaker(**{**arguments, **changes})


def shield(upstream: Embedder, coordinator: Coordinator, policy: Policy, **changes: Any) -> Shield:
    """A shield as the app builds it (of the default settings), on ``policy``, with
    ``changes`` (its keyword arguments)."""
    arguments = {"breaker": breaker(), "lease_seconds": timings().lease_seconds}
    return Shield(upstream, coordinator, policy, **{**arguments, **changes})


class ComposedPipeline(Pipeline):
    """A pipeline composed as the app composes it, with its shield, and drained in the
    app's order (the fetcher's fetches, then the shield's calls)."""

    def __init__(
        self, store: Store, upstream: Embedder, coordinator: Coordinator, *, policy: Policy,
        estimator: TokenEstimator, shares_fetches: bool = False,
        unattributed: Unattributed | None = None, **changes: Any,
    ) -> None:  # fmt: skip
        self.shield = shield(upstream, coordinator, policy)
        hot = HotCache(0)
        fetcher = Fetcher(
            store, self.shield, coordinator, hot, estimator, timings(**changes),
            shares_fetches=shares_fetches, unattributed=unattributed,
        )  # fmt: skip
        super().__init__(store, hot, fetcher)

    async def drain(self) -> None:
        await self.fetcher.drain()
        await self.shield.drain()


async def run_official_client(
    script: str, base_url: str, token: str, home: Path, args: list[str]
) -> Any:
    """The JSON that ``script`` prints, run with ``args`` by the official ``nomic`` client.

    The client reads ``~/.nomic/credentials`` when it is imported and is synchronous, so it
    runs in a subprocess with ``home`` as HOME and ``ATLAS_API_PATH`` pointing at ``base_url``.
    """
    (home / ".nomic").mkdir(exist_ok=True)
    credentials = {"refresh_token": None, "token": token, "tenant": "production", "expires": None}
    (home / ".nomic" / "credentials").write_text(json.dumps(credentials))
    env = {**os.environ, "HOME": str(home), "ATLAS_API_PATH": base_url}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, *args,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, stderr.decode()[-3000:]
    return json.loads(stdout)
