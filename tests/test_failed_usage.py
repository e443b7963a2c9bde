"""A request admitted that fails upstream counts in usage as a request with its inputs, as an
answered one does, and in ``upstream_errors`` (docs/teams-and-quotas.md, Usage)."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from fake_nomic import FakeNomic, png
from tests.conftest import EVERY_STORE, admin_get, chosen_store, team_headers
from tests.helpers import image_form

Client = TestClient[Any, Any]


@pytest.fixture(params=EVERY_STORE)
def store_url(request: pytest.FixtureRequest) -> str | None:
    return chosen_store(request)


@pytest.mark.parametrize("limits", [{}, {"requests_per_minute": 100}], ids=["buffered", "decided"])
async def test_a_failed_request_counts_its_request_and_inputs(
    gateway: Client, fake_nomic: FakeNomic, limits: dict[str, int]
) -> None:
    team = await team_headers(gateway, "fails", limits=limits)
    cached = await gateway.post("/v1/embedding/image", data=image_form([png(1)]), headers=team)
    assert cached.status == 200
    fake_nomic.fail_next = [500]
    failed = await gateway.post(
        "/v1/embedding/image", data=image_form([png(1), png(2), png(3)]), headers=team
    )
    assert failed.status == 502
    [row] = (await admin_get(gateway, "/admin/usage?team=fails"))["usage"]
    assert (row["requests"], row["images"], row["upstream_errors"]) == (2, 4, 1)
    assert (row["hits"], row["misses"]) == (1, 3)  # the failed one: 1 cached, 2 not
    assert row["billed_tokens"] == int(cached.headers["X-Billed-Tokens"])
