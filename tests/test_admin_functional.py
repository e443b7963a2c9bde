"""The admin API: its fixed calls (docs/teams-and-quotas.md), and clear answers to bad calls."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from fake_nomic import FakeNomic
from gateway.app import create_app
from tests.conftest import ADMIN, gateway_settings

Client = TestClient[Any, Any]
LIMITS = {"requests_per_minute": 600, "images_per_minute": 6000, "texts_per_minute": 20000,
          "tokens_per_day": 1000000, "tokens_per_month": 20000000,
          "upstream_calls_per_minute": 240}  # fmt: skip


async def call(client: Client, method: str, path: str, status: int, body: Any = None) -> Any:
    response = await client.request(method, path, json=body, headers=ADMIN)
    assert response.status == status, await response.text()
    return await response.json() if response.status != 204 else None


async def test_admin_api_is_off_without_a_token(fake_nomic: FakeNomic) -> None:
    client: Client = TestClient(TestServer(create_app(gateway_settings(fake_nomic, None))))
    await client.start_server()
    try:
        response = await client.get("/admin/teams", headers=ADMIN)
        assert response.status == 404
    finally:
        await client.close()


@pytest.mark.parametrize("authorization", ["", "Bearer wrong", f"{ADMIN['Authorization']}x"])
async def test_admin_api_needs_the_token(gateway: Client, authorization: str) -> None:
    response = await gateway.get("/admin/teams", headers={"Authorization": authorization})
    assert response.status == 401
    assert (await response.json())["detail"][0]["type"] == "authentication_error"


async def test_team_lifecycle(gateway: Client) -> None:
    created = await call(gateway, "POST", "/admin/teams", 201,
                         {"id": "research", "name": "Research", "limits": LIMITS})  # fmt: skip
    assert created["id"] == "research"
    assert created["name"] == "Research"
    assert created["limits"] == LIMITS
    assert created["count_hits"] is True

    partial = await call(gateway, "POST", "/admin/teams", 201,
                         {"id": "ml", "name": "ML", "limits": {"tokens_per_day": 5}})  # fmt: skip
    assert partial["limits"] == {"requests_per_minute": None, "images_per_minute": None,
                                 "texts_per_minute": None, "tokens_per_day": 5,
                                 "tokens_per_month": None,
                                 "upstream_calls_per_minute": None}  # fmt: skip

    listed = await call(gateway, "GET", "/admin/teams", 200)
    assert [team["id"] for team in listed["teams"]] == ["ml", "research", "test"]
    assert (await call(gateway, "GET", "/admin/teams/research", 200)) == created

    updated = await call(gateway, "PATCH", "/admin/teams/research", 200,
                         {"limits": {"tokens_per_day": None, "requests_per_minute": 10},
                          "count_hits": False})  # fmt: skip
    assert updated["limits"] == {**LIMITS, "tokens_per_day": None, "requests_per_minute": 10}
    texts = await call(gateway, "PATCH", "/admin/teams/research", 200,
                       {"limits": {"texts_per_minute": 50}})  # fmt: skip
    assert texts["limits"] == {**updated["limits"], "texts_per_minute": 50}
    unlimited = await call(gateway, "PATCH", "/admin/teams/research", 200,
                           {"limits": {"texts_per_minute": None}})  # fmt: skip
    assert unlimited["limits"]["texts_per_minute"] is None
    calls = await call(gateway, "PATCH", "/admin/teams/research", 200,
                       {"limits": {"upstream_calls_per_minute": 60}})  # fmt: skip
    assert calls["limits"] == {**unlimited["limits"], "upstream_calls_per_minute": 60}
    assert updated["count_hits"] is False
    assert updated["name"] == "Research"

    await call(gateway, "DELETE", "/admin/teams/research", 204)
    await call(gateway, "GET", "/admin/teams/research", 404)
    await call(gateway, "DELETE", "/admin/teams/research", 404)


ROUNDS = 30  # each a race; before team writes were atomic, about half went wrong on Redis


async def test_a_patch_racing_a_delete_never_brings_the_team_back(gateway: Client) -> None:
    for round in range(ROUNDS):
        team = f"racing-{round}"
        await call(gateway, "POST", "/admin/teams", 201, {"id": team})
        patches = [gateway.patch(f"/admin/teams/{team}", json={"name": f"Renamed {n}"},
                                 headers=ADMIN) for n in range(4)]  # fmt: skip
        *patched, deleted = await asyncio.gather(
            *patches, gateway.delete(f"/admin/teams/{team}", headers=ADMIN)
        )
        assert deleted.status == 204
        for answer in patched:  # before the delete, or a 404 after it: never a team again
            assert answer.status in (200, 404), await answer.text()
            if answer.status == 404:
                assert (await answer.json())["detail"][0]["loc"] == ["path", "team"]
        await call(gateway, "GET", f"/admin/teams/{team}", 404)
    listed = await call(gateway, "GET", "/admin/teams", 200)
    assert [team["id"] for team in listed["teams"]] == ["test"]


async def test_concurrent_patches_of_different_fields_all_land(gateway: Client) -> None:
    for round in range(ROUNDS):
        team = f"patched-{round}"
        await call(gateway, "POST", "/admin/teams", 201, {"id": team})
        bodies = [{"name": f"Name {round}"}, {"limits": {"requests_per_minute": round}},
                  {"limits": {"tokens_per_day": 1000 + round}}, {"count_hits": False},
                  {"private_cache": True}]  # fmt: skip
        answers = await asyncio.gather(
            *(gateway.patch(f"/admin/teams/{team}", json=body, headers=ADMIN) for body in bodies)
        )
        assert [answer.status for answer in answers] == [200] * len(bodies)
        shown = await call(gateway, "GET", f"/admin/teams/{team}", 200)
        assert (shown["name"], shown["count_hits"], shown["private_cache"]) == (
            f"Name {round}", False, True)  # fmt: skip
        limits = shown["limits"]
        assert (limits["requests_per_minute"], limits["tokens_per_day"]) == (round, 1000 + round)


async def test_a_patch_of_no_team_is_a_404_and_makes_none(gateway: Client) -> None:
    await call(gateway, "PATCH", "/admin/teams/nobody", 404, {"name": "Somebody"})
    await call(gateway, "GET", "/admin/teams/nobody", 404)


@pytest.mark.parametrize(
    ("body", "word"),
    [
        ({"id": "Has Spaces"}, "team id"),
        ({"id": ""}, "team id"),
        ({"name": "no id"}, "team id"),
        ({"id": "x", "limits": {"tokens_per_day": -1}}, "tokens_per_day"),
        ({"id": "x", "limits": {"tokens_per_day": 1.5}}, "tokens_per_day"),
        ({"id": "x", "limits": {"tokens_per_day": True}}, "tokens_per_day"),
        ({"id": "x", "limits": {"tokens_per_day": 10**20}}, "from 0 to 9007199254740992"),
        ({"id": "x", "limits": {"texts_per_minute": -1}}, "limits.texts_per_minute must be"),
        ({"id": "x", "limits": {"texts_per_minute": "10"}}, "limits.texts_per_minute must be"),
        ({"id": "x", "limits": {"per_year": 1}}, "unknown limit"),
        ({"id": "x", "limits": {"texts_per_hour": 1}}, "images_per_minute, texts_per_minute"),
        ({"id": "x", "limits": []}, "limits must be an object"),
        ({"id": "x", "count_hits": "yes"}, "count_hits"),
        ({"id": "x", "colour": "red"}, "unknown field"),
        ({"id": "x", "name": ""}, "name"),
    ],
)
async def test_bad_team_bodies_are_422s_naming_the_field(
    gateway: Client, body: dict[str, Any], word: str
) -> None:
    detail = (await call(gateway, "POST", "/admin/teams", 422, body))["detail"][0]
    assert word in detail["msg"]


async def test_bad_json_and_duplicates(gateway: Client) -> None:
    response = await gateway.post("/admin/teams", data=b"{nope", headers=ADMIN)
    assert response.status == 422
    await call(gateway, "POST", "/admin/teams", 409, {"id": "test"})


async def test_key_lifecycle(gateway: Client) -> None:
    await call(gateway, "POST", "/admin/teams", 201, {"id": "keys"})
    made = await call(gateway, "POST", "/admin/teams/keys/keys", 201)
    assert made["key"].startswith("nk-")
    assert len(made["key"]) == 46
    assert made["id"].startswith("key_")
    listed = (await call(gateway, "GET", "/admin/teams/keys/keys", 200))["keys"]
    assert [key["id"] for key in listed] == [made["id"]]
    assert listed[0]["prefix"] == made["key"][:7]
    assert "sha256" not in listed[0]
    assert made["key"] not in str(listed)

    await call(gateway, "DELETE", f"/admin/teams/keys/keys/{made['id']}", 204)
    listed = (await call(gateway, "GET", "/admin/teams/keys/keys", 200))["keys"]
    assert listed[0]["revoked"] is not None
    await call(gateway, "POST", f"/admin/teams/keys/keys/{made['id']}/rotate", 409)
    await call(gateway, "DELETE", "/admin/teams/keys/keys/key_nothing", 404)
    await call(gateway, "POST", "/admin/teams/nobody/keys", 404)


@pytest.mark.parametrize("grace", [-1, 40 * 86400, "1", 1.5])
async def test_rotation_grace_is_checked(gateway: Client, grace: Any) -> None:
    key_id = (await call(gateway, "GET", "/admin/teams/test/keys", 200))["keys"][0]["id"]
    detail = await call(gateway, "POST", f"/admin/teams/test/keys/{key_id}/rotate", 422,
                        {"grace_seconds": grace})  # fmt: skip
    assert detail["detail"][0]["loc"] == ["body", "grace_seconds"]


@pytest.mark.parametrize(
    ("query", "word"),
    [("since=2026-13-01", "since"), ("until=soon", "until"),
     ("since=2026-02-02&until=2026-02-01", "after"), ("since=2020-01-01&until=2026-01-01", "400")],
)  # fmt: skip
async def test_usage_range_is_checked(gateway: Client, query: str, word: str) -> None:
    detail = await call(gateway, "GET", f"/admin/usage?{query}", 422)
    assert word in detail["detail"][0]["msg"]


BAD_USAGE_QUERIES = [
    ("until=0001-01-01", "until"), ("until=1970-01-03&since=0001-01-01", "since"),
    ("since=0001-01-01", "since"), ("since=1969-12-31&until=1970-01-01", "since"),
    ("since=0001-01-01&until=9999-12-31", "since"), ("since=9999-12-31", "since"),
    ("until=10000-01-01", "until"), ("until=0000-12-31", "until"), ("until=2026-02-30", "until"),
    ("until=20260101", "until"), ("since=2026-W01-1", "since"), ("since=2026-01-01%00", "since"),
    ("since=%EF%BC%92%EF%BC%90%EF%BC%92%EF%BC%96-01-01", "since"),  # full-width digits
]  # fmt: skip


@pytest.mark.parametrize(
    ("path", "query", "named"),
    [("/admin/usage", "team=No%20Such%20Team", "team")]
    + [(path, query, named) for path in ("/v1/usage", "/admin/usage")
       for query, named in BAD_USAGE_QUERIES],
)  # fmt: skip
async def test_every_bad_usage_query_is_a_422_naming_its_parameter(
    gateway: Client, path: str, query: str, named: str
) -> None:
    """Dates at the ends of the calendar were a 500 (a date overflow working out the range)."""
    headers = ADMIN if path == "/admin/usage" else {}  # else the client's team key
    response = await gateway.get(f"{path}?{query}", headers=headers)
    assert response.status == 422, await response.text()
    [detail] = (await response.json())["detail"]
    assert (detail["loc"], detail["type"]) == (["query", named], "value_error")
    assert named in detail["msg"]


@pytest.mark.parametrize(
    "query",
    [
        "until=9999-12-31",
        "since=9999-12-31&until=9999-12-31",
        "until=1970-01-01",
        "since=1970-01-01&until=1970-01-01",
    ],
)
@pytest.mark.parametrize("path", ["/v1/usage", "/admin/usage"])
async def test_usage_at_the_ends_of_the_calendar_is_read(
    gateway: Client, path: str, query: str
) -> None:
    response = await gateway.get(f"{path}?{query}", headers=ADMIN if "admin" in path else {})
    assert response.status == 200, await response.text()
    assert (await response.json())["usage"] == []


async def test_usage_of_every_team(gateway: Client) -> None:
    from fake_nomic import png
    from tests.helpers import post_images

    assert (await post_images(gateway, [png(1), png(1)])).status == 200
    rows = (await call(gateway, "GET", "/admin/usage", 200))["usage"]
    assert len(rows) == 1
    row = rows[0]
    assert {k: row[k] for k in ("team", "requests", "images", "texts", "hits", "misses")} == {
        "team": "test", "requests": 1, "images": 2, "texts": 0, "hits": 1, "misses": 1}  # fmt: skip
    assert set(row) >= {"day", "billed_tokens", "saved_tokens", "upstream_errors", "rejected"}


async def test_a_non_ascii_admin_header_is_a_401_not_a_crash(gateway: Client) -> None:
    import asyncio

    reader, writer = await asyncio.open_connection(gateway.host, gateway.port)
    writer.write(b"GET /admin/teams HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\r\n\r\n")
    await writer.drain()
    head = await asyncio.wait_for(reader.read(4096), 5)
    writer.close()
    assert head.startswith(b"HTTP/1.1 401")


async def run_cli(gateway: Client, *args: str) -> tuple[int, str, str]:
    import asyncio
    import os
    import sys

    from tests.conftest import ADMIN_TOKEN

    env = {**os.environ, "GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", *args, "--url", gateway.base,  # type: ignore[attr-defined]
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_the_cli_drives_teams_and_keys(gateway: Client) -> None:
    import csv
    import io
    import json

    code, out, _ = await run_cli(gateway, "teams", "create", "cli", "--name", "CLI",
                                 "--tokens-per-day", "1_000", "--texts-per-minute", "3_000",
                                 "--upstream-calls-per-minute", "60",
                                 "--count-hits", "no")  # fmt: skip
    assert code == 0
    header, row = out.splitlines()
    assert "cli" in row
    columns = dict(zip(header.split(), row.split(), strict=True))
    assert (columns["texts_per_minute"], columns["tokens_per_day"]) == ("3000", "1000")
    assert columns["upstream_calls_per_minute"] == "60"
    assert columns["images_per_minute"] == "-"
    code, out, _ = await run_cli(gateway, "keys", "create", "cli", "--json")
    [made] = json.loads(out)
    assert made["key"].startswith("nk-")
    code, out, _ = await run_cli(gateway, "teams", "update", "cli", "--tokens-per-day", "none",
                                 "--private-cache", "yes")  # fmt: skip
    assert code == 0
    code, out, _ = await run_cli(gateway, "teams", "show", "cli", "--json")
    [shown] = json.loads(out)
    assert (shown["limits"]["tokens_per_day"], shown["count_hits"]) == (None, False)
    assert shown["private_cache"] is True
    assert shown["limits"]["texts_per_minute"] == 3000  # left as it was
    code, out, _ = await run_cli(gateway, "teams", "update", "cli", "--texts-per-minute", "none",
                                 "--csv")  # fmt: skip
    assert code == 0
    [updated] = csv.DictReader(io.StringIO(out))
    assert (updated["texts_per_minute"], updated["count_hits"]) == ("", "False")
    code, _, err = await run_cli(gateway, "teams", "update", "cli", "--texts-per-minute", "lots")
    assert code == 1
    assert err.strip() == "nomic-gateway: --texts-per-minute takes a whole number or none"
    code, out, _ = await run_cli(gateway, "keys", "revoke", "cli", made["id"])
    assert code == 0
    code, out, _ = await run_cli(gateway, "keys", "list", "cli", "--csv")
    assert out.splitlines()[0] == "id,prefix,created,last_used,expires,revoked"
    assert out.splitlines()[1].split(",")[5] != ""  # revoked
    code, _, err = await run_cli(gateway, "teams", "show", "nobody")
    assert (code, err.strip()) == (1, "nomic-gateway: HTTP 404: no team 'nobody'")


async def test_the_cli_says_when_the_admin_api_is_off(fake_nomic: FakeNomic) -> None:
    server = TestServer(create_app(gateway_settings(fake_nomic, None, admin_token=None)))
    client: Client = TestClient(server)
    await client.start_server()
    try:
        client.base = str(server.make_url("")).rstrip("/")  # type: ignore[attr-defined]
        code, out, err = await run_cli(client, "teams", "list")
    finally:
        await client.close()
    assert (code, out) == (1, "")
    assert err.strip() == (
        f"nomic-gateway: the admin API is off on the gateway at {client.base}: start the "  # type: ignore[attr-defined]
        "gateway with GATEWAY_ADMIN_TOKEN set (24 characters or more) to turn it on"
    )
