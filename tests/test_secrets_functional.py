"""No team key, admin token or Nomic key in any log line, error body or metric."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from fake_nomic import FAKE_API_KEY, FakeNomic, png
from tests.conftest import ADMIN, ADMIN_TOKEN, GatewayFactory
from tests.helpers import image_form

Client = TestClient[Any, Any]


async def test_secrets_never_leave_the_gateway(
    make_gateway: GatewayFactory, fake_nomic: FakeNomic, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    gateway: Client = await make_gateway()
    team_key = gateway.team_key  # type: ignore[attr-defined]
    revoked_key = (await (await gateway.post("/admin/teams/test/keys", headers=ADMIN)).json())[
        "key"
    ]
    key_id = (await (await gateway.get("/admin/teams/test/keys", headers=ADMIN)).json())["keys"][
        -1
    ]["id"]
    await gateway.delete(f"/admin/teams/test/keys/{key_id}", headers=ADMIN)
    unknown_key = "nk-" + "Z" * 43
    bodies: list[str] = []

    async def send(method: str, path: str, authorization: str, **kwargs: Any) -> None:
        response = await gateway.request(
            method, path, headers={"Authorization": authorization}, **kwargs
        )
        bodies.append(str(response.headers) + await response.text())

    for key in (team_key, revoked_key, unknown_key, ADMIN_TOKEN, FAKE_API_KEY):
        await send("POST", "/v1/embedding/image", f"Bearer {key}", data=image_form([png(1)]))
        await send("GET", "/v1/user", f"Bearer {key}")
        await send("GET", "/admin/teams", f"Bearer {key}")
        await send("POST", "/v1/embedding/image", key, data=image_form([png(2)]))
    fake_nomic.fail_next = [401, 500, 429]  # the organisation's key refused, then failures
    for seed in (3, 4, 5):
        await send(
            "POST", "/v1/embedding/image", f"Bearer {team_key}", data=image_form([png(seed)])
        )
    await send("GET", "/metrics", "")
    await send("GET", "/readyz", "")

    everything = caplog.text + "".join(bodies)
    for secret in (team_key, revoked_key, unknown_key, ADMIN_TOKEN, FAKE_API_KEY):
        assert secret not in everything
        assert secret[3:20] not in everything  # nor a piece of one
    assert "credentials" in everything  # the refused-key path did run
