"""Team keys on the embedding API: who may call, and how fast revocation and rotation act."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from fake_nomic import FakeNomic, png
from tests.conftest import ADMIN, GatewayFactory, admin_get, team_headers
from tests.helpers import image_form

Client = TestClient[Any, Any]


async def embed(client: Client, headers: dict[str, str]) -> int:
    response = await client.post("/v1/embedding/image", data=image_form([png(1)]), headers=headers)
    return response.status


async def key_id_of(client: Client, team: str) -> str:
    keys = (await admin_get(client, f"/admin/teams/{team}/keys"))["keys"]
    return str(keys[-1]["id"])


@pytest.mark.parametrize(
    ("authorization", "word"),
    [
        (None, "missing team key"),
        ("", "missing team key"),
        ("Bearer", "malformed"),
        ("Bearer nk-short", "malformed"),
        ("Basic dXNlcjpwYXNz", "malformed"),
        ("Bearer sk-" + "a" * 43, "malformed"),
        ("Bearer nk-" + "a" * 43, "unknown, revoked or expired"),
    ],
)
async def test_requests_without_a_valid_team_key_are_401(
    gateway: Client, fake_nomic: FakeNomic, authorization: str | None, word: str
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    for path in ("/v1/embedding/image", "/v1/user", "/v1/usage"):
        method = gateway.post if path.endswith("image") else gateway.get
        # an empty Authorization header replaces the client's default one
        response = await method(path, headers=headers or {"Authorization": ""})
        assert response.status == 401, path
        assert response.headers["WWW-Authenticate"] == "Bearer"
        detail = (await response.json())["detail"][0]
        assert detail["loc"] == ["header", "authorization"]
        assert word in detail["msg"]
    assert fake_nomic.calls == []


async def test_user_endpoint_names_the_callers_team(gateway: Client) -> None:
    team = await team_headers(gateway, "research", name="Research")
    body = await (await gateway.get("/v1/user/", headers=team)).json()
    assert (body["id"], body["name"]) == ("research", "Research")


async def test_a_team_reads_its_own_usage(gateway: Client) -> None:
    team = await team_headers(gateway, "own")
    assert await embed(gateway, team) == 200
    rows = (await (await gateway.get("/v1/usage", headers=team)).json())["usage"]
    assert [(row["team"], row["images"], row["misses"]) for row in rows] == [("own", 1, 1)]
    bad = await gateway.get("/v1/usage?since=yesterday", headers=team)
    assert bad.status == 422


async def test_a_revoked_key_is_refused_within_the_cache_time(
    make_gateway: GatewayFactory,
) -> None:
    gateway = await make_gateway(key_cache_seconds=0.2)
    team = await team_headers(gateway, "revoked")
    assert await embed(gateway, team) == 200
    key_id = await key_id_of(gateway, "revoked")
    revoke = await gateway.delete(f"/admin/teams/revoked/keys/{key_id}", headers=ADMIN)
    assert revoke.status == 204
    await asyncio.sleep(0.25)
    assert await embed(gateway, team) == 401


async def test_a_rotated_key_works_through_its_grace_period_and_not_after(
    make_gateway: GatewayFactory,
) -> None:
    gateway = await make_gateway(key_cache_seconds=0.1)
    old = await team_headers(gateway, "rotating")
    key_id = await key_id_of(gateway, "rotating")
    response = await gateway.post(
        f"/admin/teams/rotating/keys/{key_id}/rotate", json={"grace_seconds": 1}, headers=ADMIN
    )
    assert response.status == 201
    rotated = await response.json()
    assert rotated["replaces"] == key_id
    new = {"Authorization": f"Bearer {rotated['key']}"}
    assert await embed(gateway, old) == 200
    assert await embed(gateway, new) == 200
    await asyncio.sleep(1.2)
    assert await embed(gateway, old) == 401
    assert await embed(gateway, new) == 200


async def test_deleting_a_team_stops_its_keys_and_keeps_its_usage(
    make_gateway: GatewayFactory,
) -> None:
    gateway = await make_gateway(key_cache_seconds=0.1)
    team = await team_headers(gateway, "gone")
    assert await embed(gateway, team) == 200
    assert (await gateway.delete("/admin/teams/gone", headers=ADMIN)).status == 204
    await asyncio.sleep(0.15)
    assert await embed(gateway, team) == 401
    rows = (await admin_get(gateway, "/admin/usage?team=gone"))["usage"]
    assert rows[0]["requests"] == 1


async def test_a_team_reading_its_usage_over_and_over_is_refused_not_the_others(
    gateway: Client,
) -> None:
    """Each day of usage asked for is a read of the store: a team gets 400 days' worth a
    second and as much again at once, then 429 with Retry-After; another team's reads are its
    own."""
    team = await team_headers(gateway, "curious")
    other = await team_headers(gateway, "other")
    longest = "/v1/usage?since=2025-10-23&until=2026-11-26"  # 400 days
    answers = [await gateway.get(longest, headers=team) for _ in range(6)]
    statuses = [answer.status for answer in answers]
    assert statuses[:2] == [200, 200]
    assert 429 in statuses  # back to back, far faster than 400 days a second
    refused = answers[statuses.index(429)]
    assert int(refused.headers["Retry-After"]) >= 1
    assert (await refused.json())["detail"][0]["loc"] == ["query"]
    assert (await gateway.get(longest, headers=other)).status == 200
