"""What Nomic billed, or may have billed, that no team is charged: counted in a metric and
in the usage of the reserved ``unattributed`` account, never silently."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from fake_nomic import FakeNomic, png
from gateway import quota, unattributed
from gateway.accounts import UsageBuffer
from gateway.appkeys import ACCOUNTS
from gateway.assembly import FetchFailed
from gateway.errors import UpstreamError, UpstreamTimeout
from gateway.forms import ParsedRequest
from gateway.models import Spec
from gateway.quota import Demand, TokenEstimator
from gateway.store import MemoryStore
from gateway.store.base import Ledger
from gateway.store.data_dir import DataDir
from gateway.store.memory_coordinator import MemoryCoordinator
from gateway.teams import Limits, Team
from gateway.upstream import NomicClient, UpstreamResult
from tests.conftest import ADMIN, EVERY_STORE, chosen_store, team_headers
from tests.helpers import ComposedPipeline, image_form, metric_value, policy

Client = TestClient[Any, Any]
NOW = 1_800_000_000.0
AT = quota.window(NOW)
IMAGE = Spec("nomic-embed-vision-v1.5", "image")


@pytest.fixture(params=EVERY_STORE)
def store_url(request: pytest.FixtureRequest) -> str | None:
    return chosen_store(request)


def counted(name: str, reason: str) -> float:
    return metric_value(f"gateway_unattributed_{name}_total", reason=reason)


class _Answer:
    def __init__(self, body: bytes) -> None:
        self.status, self.headers, self._body = 200, {}, body

    async def read(self) -> bytes:
        return self._body

    async def __aenter__(self) -> _Answer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


class _Session:
    """Stands in for the session to Nomic: answers ``body`` with a 200, or raises ``error``."""

    def __init__(self, body: bytes = b"", error: BaseException | None = None) -> None:
        self.body, self.error = body, error

    def post(self, *args: object, **kwargs: object) -> _Answer:
        if self.error is not None:
            raise self.error
        return _Answer(self.body)


async def test_a_200_with_a_wrong_count_is_billed_to_the_unattributed_account() -> None:
    body = orjson.dumps({"embeddings": [[0.5] * 4], "usage": {"total_tokens": 40}})
    found = unattributed.Unattributed()
    client = NomicClient(_Session(body), "http://nomic.test", "nk-x", found)  # type: ignore[arg-type]
    before = counted("tokens", "malformed_answer")
    with pytest.raises(UpstreamError, match="wrong number"):
        await client.embed(IMAGE, [png(1), png(2)])
    assert counted("tokens", "malformed_answer") == before + 40
    assert found.take() == (40, {"misses": 2, "upstream_errors": 1})


async def test_a_timed_out_call_is_counted_its_tokens_unknown() -> None:
    found = unattributed.Unattributed()
    session = _Session(error=TimeoutError())
    client = NomicClient(session, "http://nomic.test", "nk-x", found)  # type: ignore[arg-type]
    before = counted("items", "timeout")
    with pytest.raises(UpstreamTimeout):
        await client.embed(IMAGE, [png(1), png(2), png(3)])
    assert counted("items", "timeout") == before + 3
    assert found.take() == (0, {"misses": 3, "upstream_errors": 1})


async def test_the_usage_buffer_writes_the_account_on_every_store(ledger: Ledger) -> None:
    buffer = UsageBuffer(ledger, clock=lambda: NOW)
    buffer.unattributed.record("unstorable", tokens=7, items=1)
    buffer.unattributed.record("malformed_answer", tokens=30, items=2)
    await buffer.flush()
    [row] = await ledger.usage(unattributed.TEAM_ID, [AT.day])
    assert (row["billed_tokens"], row["misses"], row["upstream_errors"]) == (37, 3, 2)
    await buffer.flush()  # taken once: nothing counted twice
    assert (await ledger.usage(unattributed.TEAM_ID, [AT.day]))[0] == row


async def test_a_killed_process_reservations_go_to_the_account_when_the_store_opens(
    tmp_path: Path,
) -> None:
    path = Path(tempfile.mkdtemp(dir=tmp_path))
    team = Team("t1", "T", Limits(tokens_per_day=1000), True, NOW)
    data = await DataDir.open(path, 10_000_000)
    await data.ledger.admit(team, Demand(1, 2, 0, 120), AT, {}, "in-flight")
    await data.close()  # never settled: the process was killed
    before = counted("tokens", "killed")
    data = await DataDir.open(path, 10_000_000)
    try:
        [account] = await data.ledger.usage(unattributed.TEAM_ID, [AT.day])
        admitted = await data.ledger.admit(team, Demand(1, 1, 0, 1000), AT, {}, "next")
    finally:
        await data.close()
    assert admitted.allowed  # the killed request's reservation no longer holds the budget
    assert (account["billed_tokens"], account["upstream_errors"]) == (120, 1)
    assert counted("tokens", "killed") == before + 120


async def test_the_account_cannot_be_created_and_is_shown_in_admin_usage(gateway: Client) -> None:
    response = await gateway.post("/admin/teams", json={"id": unattributed.TEAM_ID}, headers=ADMIN)
    assert response.status == 422, await response.text()
    assert "reserved" in (await response.json())["detail"][0]["msg"]
    gateway.app[ACCOUNTS].buffer.unattributed.record("malformed_answer", tokens=11, items=1)
    response = await gateway.get("/admin/usage", headers=ADMIN)
    rows = (await response.json())["usage"]
    [row] = [row for row in rows if row["team"] == unattributed.TEAM_ID]
    assert (row["billed_tokens"], row["misses"], row["upstream_errors"]) == (11, 1, 1)


async def test_the_chargeback_lists_the_account_so_it_adds_up_to_what_nomic_billed(
    gateway: Client, fake_nomic: FakeNomic
) -> None:
    image = await gateway.post("/v1/embedding/image", data=image_form([png(1), png(2)]))
    assert image.status == 200, await image.text()
    gateway.app[ACCOUNTS].buffer.unattributed.record("malformed_answer", tokens=11, items=1)
    nomic_billed = 2 * fake_nomic.tokens_per_image + 11  # what the fake, and the bad call, billed
    for by in ("team", "tag"):
        response = await gateway.get(f"/admin/chargeback?by={by}", headers=ADMIN)
        rows = (await response.json())["chargeback"]
        assert rows[-1]["team"] == unattributed.TEAM_ID
        assert rows[-1]["billed_tokens"] == 11
        assert sum(row["billed_tokens"] for row in rows) == nomic_billed


async def test_a_team_deleted_this_month_stays_in_the_chargeback_named_deleted(
    gateway: Client, fake_nomic: FakeNomic
) -> None:
    """Its usage was billed by Nomic all the same: without its row the export would not add
    up. A team deleted before the month has none."""
    gone = await team_headers(gateway, "gone")
    image = await gateway.post("/v1/embedding/image", data=image_form([png(3)]), headers=gone)
    assert image.status == 200, await image.text()
    assert (await gateway.delete("/admin/teams/gone", headers=ADMIN)).status == 204
    assert (await gateway.delete("/admin/teams/idle", headers=ADMIN)).status == 404
    await team_headers(gateway, "idle")
    assert (await gateway.delete("/admin/teams/idle", headers=ADMIN)).status == 204
    for by in ("team", "tag"):
        response = await gateway.get(f"/admin/chargeback?by={by}", headers=ADMIN)
        rows = (await response.json())["chargeback"]
        [row] = [row for row in rows if row["team"] == "gone"]
        assert row["name"] == "Gone (deleted)"
        assert row["billed_tokens"] == fake_nomic.tokens_per_image
        assert row["tokens_per_month"] is None
        assert "idle" not in {row["team"] for row in rows}  # deleted with no usage: no row
    made_again = await team_headers(gateway, "gone")  # one id: one row, the team's own
    assert made_again
    rows = (await (await gateway.get("/admin/chargeback", headers=ADMIN)).json())["chargeback"]
    assert [row["name"] for row in rows if row["team"] == "gone"] == ["Gone"]


class _OneUnstorable:
    """Nomic's answer for two images, the second's vector no numbers: 5 tokens each."""

    async def embed(self, spec: Spec, items: Sequence[bytes]) -> UpstreamResult:
        vectors: list[list[Any]] = [[0.5, 0.25], ["x", "y"]][: len(items)]
        return UpstreamResult(vectors, 5 * len(items))


async def test_a_vector_that_cannot_be_stored_is_billed_to_the_unattributed_account() -> None:
    found = unattributed.Unattributed()
    pipeline = ComposedPipeline(
        MemoryStore(10_000_000), _OneUnstorable(), MemoryCoordinator(),
        policy=policy(batch_items=8, linger_seconds=0, max_attempts=1),
        url_ttl_seconds=60, stale_grace_seconds=0, estimator=TokenEstimator(1),
        unattributed=found,
    )  # fmt: skip
    lookup = await pipeline.lookup(ParsedRequest.of(IMAGE.model, "image", [png(1), png(2)]))
    with pytest.raises(FetchFailed) as failed:
        await pipeline.complete(lookup, time.monotonic() + 10)
    assert failed.value.billed_tokens == 5  # the team pays for the image it could have
    assert found.take() == (5, {"misses": 1, "upstream_errors": 1})  # the other's share
