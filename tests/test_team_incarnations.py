"""A team deleted and made again under the same id is a new team: a private cache of its
own, empty; its usage and budgets stay those of the id (docs/teams-and-quotas.md)."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from fake_nomic import FakeNomic, png
from gateway.teams import Limits, Team
from tests.conftest import ADMIN, EVERY_STORE, admin_get, chosen_store, team_headers
from tests.helpers import image_form

Client = TestClient[Any, Any]


@pytest.fixture(params=EVERY_STORE)
def store_url(request: pytest.FixtureRequest) -> str | None:
    return chosen_store(request)


async def cached(gateway: Client, headers: dict[str, str]) -> str:
    response = await gateway.post(
        "/v1/embedding/image", data=image_form([png(77)]), headers=headers
    )
    assert response.status == 200, await response.text()
    return response.headers["X-Cache"]


async def test_a_team_made_again_starts_with_an_empty_private_cache(
    gateway: Client, fake_nomic: FakeNomic
) -> None:
    first = await team_headers(gateway, "again", private_cache=True)
    assert await cached(gateway, first) == "MISS"
    assert await cached(gateway, first) == "HIT"
    assert (await gateway.delete("/admin/teams/again", headers=ADMIN)).status == 204
    second = await team_headers(gateway, "again", private_cache=True)
    assert await cached(gateway, second) == "MISS"  # not its predecessor's entry
    assert await cached(gateway, second) == "HIT"
    assert len(fake_nomic.items_received) == 2


def test_a_team_stored_before_incarnations_keeps_its_private_cache() -> None:
    old = {"id": "p", "name": "P", "limits": Limits().to_json(), "private_cache": True,
           "created": 1.0}  # fmt: skip
    assert Team.from_json(old).cache_scope == "team:p"  # the entries it has stay its own
    made = Team("p", "P", Limits(), private_cache=True, created=2.0, incarnation="a1")
    assert made.cache_scope == "team:p/a1"
    assert Team.from_json(made.to_json()) == made


async def test_a_team_made_again_inherits_the_ids_usage_and_spending(
    gateway: Client, fake_nomic: FakeNomic
) -> None:
    """Deleting a team and making it again never resets a budget: what the id spent today
    still counts, and its usage rows go on (docs/teams-and-quotas.md, "A private cache")."""
    first = await team_headers(gateway, "again", limits={"tokens_per_day": 25})
    for seed in (1, 2):  # the fake bills 10 tokens an image
        response = await gateway.post(
            "/v1/embedding/image", data=image_form([png(seed)]), headers=first
        )
        assert response.status == 200, await response.text()
    assert (await gateway.delete("/admin/teams/again", headers=ADMIN)).status == 204
    second = await team_headers(gateway, "again", limits={"tokens_per_day": 25})
    refused = await gateway.post("/v1/embedding/image", data=image_form([png(3)]), headers=second)
    assert refused.status == 429, await refused.text()  # 20 spent + 10 > 25
    assert refused.headers["X-RateLimit-Remaining"] == "5"
    [row] = (await admin_get(gateway, "/admin/usage?team=again"))["usage"]
    assert (row["billed_tokens"], row["requests"], row["rejected"]) == (20, 2, 1)
    assert len(fake_nomic.items_received) == 2
