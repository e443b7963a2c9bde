"""The pipeline with a counting embedder, for orderings the HTTP tests cannot force."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import orjson
import pytest

from fake_nomic import FakeNomic, png
from gateway.assembly import Answer, FetchFailed, assemble
from gateway.errors import UpstreamServerError, UpstreamUnavailable
from gateway.forms import ParsedRequest
from gateway.models import Spec
from gateway.pipeline import Pipeline
from gateway.quota import TokenEstimator
from gateway.store import MemoryStore
from gateway.store.base import Mark
from gateway.store.memory_coordinator import MemoryCoordinator
from gateway.upstream import UpstreamResult
from tests.helpers import ComposedPipeline, policy

MODEL = "nomic-embed-vision-v1.5"


class CountingEmbedder:
    def __init__(self) -> None:
        self.items: list[bytes] = []
        self.fail_with: Exception | None = None

    async def embed(self, spec: Spec, items: Sequence[bytes]) -> UpstreamResult:
        self.items.extend(items)
        await asyncio.sleep(0)
        if self.fail_with is not None:
            raise self.fail_with
        vectors = [FakeNomic.embedding(spec.model, item) for item in items]
        return UpstreamResult(vectors, 3 * len(items))


class StaleReadStore(MemoryStore):
    """Reads, then holds the answer until ``release`` is set: a lookup overtaken by a write."""

    def __init__(self) -> None:
        super().__init__(10_000_000)
        self.hold = False
        self.release = asyncio.Event()

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        values = await super().get_many(keys)
        if self.hold:
            self.hold = False
            await self.release.wait()
        return values


def make_pipeline(store: MemoryStore, embedder: CountingEmbedder) -> ComposedPipeline:
    return ComposedPipeline(
        store, embedder, MemoryCoordinator(),
        policy=policy(batch_items=8, linger_seconds=0, max_attempts=1),
        url_ttl_seconds=60, stale_grace_seconds=0, estimator=TokenEstimator(1),
    )  # fmt: skip


async def embed(pipeline: Pipeline, request: ParsedRequest) -> Answer:
    lookup = await pipeline.lookup(request)
    if not lookup.missing:
        return assemble(lookup)
    return (await pipeline.complete(lookup, time.monotonic() + 10)).answer


def request(*images: bytes) -> ParsedRequest:
    return ParsedRequest.of(MODEL, "image", list(images))


async def test_a_lookup_overtaken_by_another_requests_fill_does_not_fetch_again() -> None:
    store, embedder = StaleReadStore(), CountingEmbedder()
    pipeline = make_pipeline(store, embedder)
    store.hold = True
    slow = asyncio.create_task(embed(pipeline, request(png(1))))  # its lookup saw nothing yet
    await asyncio.sleep(0.01)
    fast = await embed(pipeline, request(png(1)))  # fetches, stores, finishes
    store.release.set()
    late = await slow
    assert embedder.items == [png(1)]
    assert fast.billed_tokens == 3
    assert late.billed_tokens == 0
    assert late.body == fast.body
    await pipeline.drain()


async def test_a_failed_fetch_is_forgotten_at_once_so_the_next_request_retries() -> None:
    embedder = CountingEmbedder()
    pipeline = make_pipeline(MemoryStore(10_000_000), embedder)
    embedder.fail_with = UpstreamUnavailable("down")
    with pytest.raises(FetchFailed) as failed:
        await embed(pipeline, request(png(1)))
    assert isinstance(failed.value.error, UpstreamUnavailable)
    assert failed.value.billed_tokens == 0
    embedder.fail_with = None
    answer = await embed(pipeline, request(png(1)))
    assert embedder.items == [png(1), png(1)]
    assert orjson.loads(answer.body)["embeddings"] == [FakeNomic.embedding(MODEL, png(1))]


async def test_a_client_that_goes_away_does_not_cancel_the_fetch_others_wait_for() -> None:
    embedder = CountingEmbedder()
    store = MemoryStore(10_000_000)
    pipeline = make_pipeline(store, embedder)
    first = asyncio.create_task(embed(pipeline, request(png(1))))
    await asyncio.sleep(0)
    second = asyncio.create_task(embed(pipeline, request(png(1))))
    await asyncio.sleep(0)
    first.cancel()
    answer = await second
    assert orjson.loads(answer.body)["embeddings"] == [FakeNomic.embedding(MODEL, png(1))]
    await pipeline.drain()
    assert embedder.items == [png(1)]
    assert len(store) == 1


class SharedMarks(MemoryCoordinator):
    """A coordinator whose in-flight marks are shared by the pipelines given it, as Redis's
    are by replicas (a mark taken only where none is, read with the entry)."""

    def __init__(self, store: MemoryStore) -> None:
        super().__init__()
        self._store = store
        self.marks: dict[str, str] = {}

    async def claim_fetches(self, keys: Sequence[str], holder: str, lease_ms: int) -> list[Mark]:
        stored = await self._store.get_many(keys)
        held = [self.marks.setdefault(key, holder) == holder and key for key in keys]
        return [Mark(bool(h), s) for h, s in zip(held, stored, strict=True)]

    async def release_fetches(self, keys: Sequence[str], holder: str) -> None:
        for key in keys:
            if self.marks.get(key) == holder:
                del self.marks[key]

    async def fetching(self, keys: Sequence[str]) -> list[Mark]:
        stored = await self._store.get_many(keys)
        return [Mark(key in self.marks, s) for key, s in zip(keys, stored, strict=True)]


class FailingWhenReleased(CountingEmbedder):
    def __init__(self) -> None:
        super().__init__()
        self.called = asyncio.Event()
        self.release = asyncio.Event()

    async def embed(self, spec: Spec, items: Sequence[bytes]) -> UpstreamResult:
        self.called.set()
        await self.release.wait()
        raise UpstreamServerError("Nomic answered HTTP 500")


def replica(
    store: MemoryStore, coordinator: SharedMarks, embedder: CountingEmbedder
) -> ComposedPipeline:
    return ComposedPipeline(
        store, embedder, coordinator,
        policy=policy(batch_items=8, linger_seconds=0, max_attempts=1),
        url_ttl_seconds=60, stale_grace_seconds=0, estimator=TokenEstimator(1),
        shares_fetches=True,
    )  # fmt: skip


async def test_a_fetch_taken_over_while_the_pipeline_drains_is_answered_and_the_drain_ends() -> (
    None
):
    store = MemoryStore(10_000_000)
    marks = SharedMarks(store)
    dying, draining = FailingWhenReleased(), CountingEmbedder()
    other, shutting = replica(store, marks, dying), replica(store, marks, draining)
    await embed(shutting, request(png(9)))  # its image lane is running
    owner = asyncio.create_task(embed(other, request(png(1))))
    await dying.called.wait()
    lookup = await shutting.lookup(request(png(1)))
    watcher = asyncio.create_task(shutting.complete(lookup, time.monotonic() + 5))
    await asyncio.sleep(0.1)  # it watches the other replica's fetch
    drained = asyncio.create_task(shutting.drain())  # SIGTERM: its requests run to their end
    await asyncio.sleep(0.1)
    dying.release.set()  # the other replica's call fails: this one takes the image over
    with pytest.raises(FetchFailed):
        await owner
    answer = (await asyncio.wait_for(watcher, 2)).answer
    assert orjson.loads(answer.body)["embeddings"] == [FakeNomic.embedding(MODEL, png(1))]
    assert answer.billed_tokens == 3
    await asyncio.wait_for(drained, 2)
    with pytest.raises(FetchFailed) as late:  # nothing sends it now: refused, not left waiting
        await asyncio.wait_for(embed(shutting, request(png(2))), 2)
    assert isinstance(late.value.error, UpstreamUnavailable)
    await other.drain()
