"""The console in a real browser: Debian's chromium, headless, driven by selenium.

A team signs in and its page shows what ``GET /v1/usage`` says, with its chart drawn and no
trace of another team; the operator rotates a key in the page and the old key gets 401 on
both replicas of a Redis-backed pair; a form posted from another page is refused; and the
key is in no log line, cookie, URL or page source."""

from __future__ import annotations

import asyncio
import datetime
import logging
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.conftest import ADMIN, ADMIN_TOKEN, GatewayFactory, make_team
from tests.console_browser import browser
from tests.test_console import console_client, embed_texts

pytestmark = pytest.mark.slow
FIELDS = ("requests", "images", "texts", "hits", "misses", "billed_tokens", "saved_tokens")


def number(text: str) -> int:
    return int(text.replace(",", ""))


async def test_a_team_sees_its_own_usage_and_chart_and_nothing_of_another(
    fake_nomic: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    gateway = await console_client(fake_nomic)
    base = str(gateway.make_url("")).rstrip("/")
    try:
        key = await make_team(gateway.session, base, "research", name="Research")
        other = await make_team(gateway.session, base, "marketing", name="Marketing Dept")
        await embed_texts(gateway, key, ["one", "two words", "three words here"], "reindex")
        await embed_texts(gateway, key, ["one", "two words"])  # hits, untagged
        await embed_texts(gateway, key, ["a question asked once"], "adhoc")
        await embed_texts(gateway, other, ["marketing's own text"], "marketing-campaign")
        async with browser() as chrome:
            await chrome.sign_in(base, key)
            assert (await chrome.url()).endswith("/console/team")
            today = datetime.datetime.now(datetime.UTC).date()
            since = (today - datetime.timedelta(days=29)).isoformat()
            usage = await gateway.get(
                f"/v1/usage?since={since}", headers={"Authorization": f"Bearer {key}"}
            )
            expected = {row["day"]: row for row in (await usage.json())["usage"]}
            assert expected
            rows = await chrome.find_all("#days tbody tr[data-day]")
            shown = {}
            for row in rows:
                day = await chrome.attribute(row, "data-day")
                cells = {}
                for field in FIELDS:
                    cell = await chrome.call(
                        row.find_element, "css selector", f"[data-field={field}]"
                    )
                    cells[field] = number(await chrome.call(lambda c=cell: c.text))
                shown[day] = cells
            assert shown == {day: {f: row[f] for f in FIELDS} for day, row in expected.items()}
            by_tag = await gateway.get(
                f"/v1/usage?since={since}&by=tag", headers={"Authorization": f"Bearer {key}"}
            )
            tagged = {row["tag"]: row for row in (await by_tag.json())["usage"]}
            assert set(tagged) == {"reindex", "adhoc", "untagged"}
            for tag, row in tagged.items():  # one day: the tag's row is its day's
                cell = await chrome.find(f"tr[data-tag='{tag}'] [data-field=billed_tokens]")
                assert number(await chrome.call(lambda c=cell: c.text)) == row["billed_tokens"]
            billed = sum(row["billed_tokens"] for row in expected.values())
            assert number(await chrome.text("[data-total=billed_tokens]")) == billed
            assert (
                number(await chrome.text("[data-field=billed_today]"))
                == (expected[today.isoformat()]["billed_tokens"])
            )
            bars = await chrome.find_all("svg.chart g.day")
            assert len(bars) == 30
            drawn = await chrome.find(
                f"svg.chart g.day[data-day='{today.isoformat()}'] rect.billed"
            )
            assert float(await chrome.attribute(drawn, "height")) > 0
            await chrome.screenshot(tmp_path / "team.png")
            assert (tmp_path / "team.png").stat().st_size > 10_000

            source = await chrome.source()
            assert "marketing" not in source.lower()
            assert other[3:] not in source
            cookies = await chrome.cookies()
            assert [c["name"] for c in cookies] == ["ng_console"]
            assert cookies[0]["httpOnly"] is True
            assert cookies[0]["sameSite"] == "Strict"
            for secret in (key[3:], other[3:]):
                assert secret not in source
                assert secret not in await chrome.url()
                assert all(secret not in c["value"] for c in cookies)
            stored = await chrome.call(
                chrome.driver.execute_script,
                "return localStorage.length + sessionStorage.length",
            )
            assert stored == 0
        # the gateway's and aiohttp's log lines (selenium's own debug lines carry the cookie
        # it read from the browser for this test)
        for record in caplog.records:
            if record.name.startswith(("selenium", "urllib3")):
                continue
            text = str(record.__dict__)
            assert key[3:] not in text
            assert cookies[0]["value"] not in text
    finally:
        await gateway.close()


async def test_the_operator_rotates_a_key_and_the_old_one_fails_on_both_replicas(
    make_redis_gateway: GatewayFactory,
) -> None:
    first = await make_redis_gateway()
    second = await make_redis_gateway()
    old = first.team_key
    headers = {"Authorization": f"Bearer {old}"}
    for gateway in (first, second):  # each replica has the key in its cache now
        assert (await gateway.get("/v1/user", headers=headers)).status == 200
    listed = await (await first.get("/admin/teams/test/keys", headers=ADMIN)).json()
    (key_id,) = [k["id"] for k in listed["keys"] if old.startswith(k["prefix"])]
    async with browser() as chrome:
        await chrome.sign_in(first.base, ADMIN_TOKEN)
        assert (await chrome.url()).endswith("/console/operator")
        row = f"section[data-manage='test'] tr[data-key='{key_id}']"
        await chrome.click(f"{row} select[name=grace_seconds] option[value='0']")
        await chrome.click(f"{row} button[data-action=rotate]")
        await chrome.wait_for(lambda url: url.endswith("/rotate"))
        new = await chrome.text("[data-new-key]")
    assert new.startswith("nk-")
    assert new != old
    for gateway in (first, second):
        await until_status(gateway, old, 401)
        assert (
            await gateway.get("/v1/user", headers={"Authorization": f"Bearer {new}"})
        ).status == 200


async def until_status(gateway: Any, key: str, status: int, within: float = 10.0) -> None:
    """Poll until ``key`` gets ``status`` (generous: the machine may be busy)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        response = await gateway.get("/v1/user", headers={"Authorization": f"Bearer {key}"})
        if response.status == status:
            return
        assert loop.time() < deadline, f"still {response.status} after {within} s"
        await asyncio.sleep(0.05)


async def test_a_form_posted_from_another_page_is_refused(fake_nomic: Any) -> None:
    gateway = await console_client(fake_nomic)
    base = str(gateway.make_url("")).rstrip("/")
    key = await make_team(gateway.session, base, "research")
    listed = await (await gateway.get("/admin/teams/research/keys", headers=ADMIN)).json()
    key_id = listed["keys"][0]["id"]
    forged = (
        "<!doctype html><title>cats</title>"
        f'<form method="post" action="{base}/console/operator/teams/research/keys/{key_id}/revoke">'
        '<input type="hidden" name="csrf" value="guessed">'
        '<button id="go" type="submit">See cats</button></form>'
    )

    async def attacker_page(request: web.Request) -> web.Response:
        return web.Response(text=forged, content_type="text/html")

    attacker = web.Application()
    attacker.router.add_get("/", attacker_page)
    elsewhere = TestServer(attacker, host="127.0.0.1")
    await elsewhere.start_server()
    try:
        async with browser() as chrome:
            await chrome.sign_in(base, ADMIN_TOKEN)
            await chrome.get(str(elsewhere.make_url("/")))
            await chrome.click("#go")
            await chrome.wait_for(lambda url: url.endswith("/revoke"))
            assert "nothing was done" in await chrome.source()
        assert (
            await gateway.get("/v1/user", headers={"Authorization": f"Bearer {key}"})
        ).status == 200
        listed = await (await gateway.get("/admin/teams/research/keys", headers=ADMIN)).json()
        assert listed["keys"][0]["revoked"] is None
    finally:
        await elsewhere.close()
        await gateway.close()
