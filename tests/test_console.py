"""The console through aiohttp's test client: sessions, CSRF, revocation, the sign-in limit,
headers, escaping, and what a team may see. The browser tests are in test_console_browser.py."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import create_app
from gateway.console import sessions
from gateway.console.routes import SIGN_IN_BURST
from gateway.store.base import Ledger
from tests.conftest import ADMIN, ADMIN_TOKEN, gateway_settings, make_team
from tests.fake_nomic import FakeNomic

Client = TestClient[Any, Any]
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


async def console_client(fake: FakeNomic, store_url: str | None = None, **overrides: Any) -> Client:
    settings = gateway_settings(fake, store_url, **{"admin_token": ADMIN_TOKEN, **overrides})
    client: Client = TestClient(TestServer(create_app(settings), host="127.0.0.1"))
    await client.start_server()
    return client


@pytest.fixture
async def console(fake_nomic: FakeNomic) -> AsyncIterator[Client]:
    client = await console_client(fake_nomic)
    yield client
    await client.close()


def csrf_of(page: str) -> str:
    found = CSRF.search(page)
    assert found is not None, page
    return found.group(1)


async def sign_in(client: Client, secret: str, **headers: str) -> ClientResponse:
    form = await client.get("/console")
    token = csrf_of(await form.text())
    return await client.post(
        "/console/sign-in", data={"csrf": token, "secret": secret}, allow_redirects=False,
        headers=headers,
    )  # fmt: skip


async def new_key(client: Client, team: str, **fields: Any) -> str:
    return await make_team(client.session, str(client.make_url("")).rstrip("/"), team, **fields)


async def embed_texts(client: Client, key: str, texts: list[str]) -> None:
    body = {"texts": texts, "model": "nomic-embed-text-v1.5"}
    response = await client.post(
        "/v1/embedding/text", json=body, headers={"Authorization": f"Bearer {key}"}
    )
    assert response.status == 200, await response.text()


def set_cookie(response: ClientResponse, name: str) -> str:
    for header in response.headers.getall("Set-Cookie", []):
        if header.startswith(f"{name}="):
            return header
    raise AssertionError(f"no {name} cookie set")


# --- the store's shared secret -------------------------------------------------------------


async def test_the_shared_secret_is_made_once_and_kept(ledger: Ledger) -> None:
    first = await ledger.shared_secret("console-sessions")
    assert len(first) == 32
    assert await ledger.shared_secret("console-sessions") == first
    assert await ledger.shared_secret("another") != first


# --- sessions, pure ------------------------------------------------------------------------


def test_a_session_is_refused_tampered_expired_or_under_another_secret() -> None:
    secret = b"s" * 32
    session = sessions.Session("team", "research", "key_1", "", "nonce", 1000.0)
    sealed = sessions.seal(secret, session)
    assert sessions.unseal(secret, sealed, 999.0) == session
    assert sessions.unseal(secret, sealed, 1000.0) is None  # expired
    assert sessions.unseal(b"t" * 32, sealed, 999.0) is None
    payload, _, mac = sealed.partition(".")
    forged = sessions.seal(b"x" * 32, session._replace(team="other")).partition(".")[0]
    assert sessions.unseal(secret, f"{forged}.{mac}", 999.0) is None
    for junk in ("", ".", "a.b", payload, "é.é", "x" * 2000):
        assert sessions.unseal(secret, junk, 999.0) is None


def test_an_operator_session_ends_when_the_admin_token_changes() -> None:
    secret = b"s" * 32
    token = "a" * 32
    session = sessions.Session(
        "operator", "", "", sessions.admin_token_mac(secret, token), "n", 10.0
    )
    assert sessions.operator_still(secret, session, token)
    assert not sessions.operator_still(secret, session, "b" * 32)
    assert not sessions.operator_still(secret, session, None)
    assert token not in sessions.seal(secret, session)


# --- over HTTP -------------------------------------------------------------------------------


async def test_pages_and_errors_carry_the_security_headers(console: Client) -> None:
    for path in ("/console", "/console/nowhere", "/console/team"):
        response = await console.get(path)
        headers = response.headers
        csp = headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp
        assert "script-src 'none'" in csp
        assert "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp
        assert headers["X-Frame-Options"] == "DENY"
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Referrer-Policy"] == "no-referrer"
        assert headers["Cache-Control"] == "no-store"
        assert response.content_type == "text/html"
        assert "<script" not in (await response.text()).lower()
        assert " style=" not in await response.text()
    missing = await console.get("/console/nowhere")
    assert missing.status == 404
    css = await console.get("/console/static/console.css")
    assert css.status == 200
    assert css.content_type == "text/css"


async def test_a_team_signs_in_with_its_key_and_the_cookie_holds_no_secret(
    console: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    key = await new_key(console, "research")
    response = await sign_in(console, key)
    assert response.status == 303
    assert response.headers["Location"] == "/console/team"
    cookie = set_cookie(response, sessions.COOKIE)
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert "Path=/console" in cookie
    assert "Secure" not in cookie  # plain http, no trusted proxy
    assert "Max-Age=28800" in cookie
    jar = console.session.cookie_jar.filter_cookies(console.make_url("/console"))
    value = jar[sessions.COOKIE].value
    page = await console.get("/console/team")
    text = await page.text()
    assert page.status == 200
    assert 'data-team="research"' in text
    for secret in (key[3:], value):  # the key without its nk-, and the session
        assert secret not in text
        assert secret not in str(page.url)
        assert all(secret not in str(record.__dict__) for record in caplog.records)
    assert key[3:] not in cookie


async def test_the_cookie_is_secure_over_https_to_a_trusted_proxy(fake_nomic: FakeNomic) -> None:
    for trusted, secure in ((True, True), (False, False)):
        client = await console_client(fake_nomic, trust_forwarded=trusted)
        try:
            response = await sign_in(client, ADMIN_TOKEN, **{"X-Forwarded-Proto": "https"})
            assert response.status == 303
            assert ("; Secure" in set_cookie(response, sessions.COOKIE)) is secure
        finally:
            await client.close()


async def test_a_wrong_secret_is_refused_and_the_form_shown_again(console: Client) -> None:
    for wrong in ("nk-" + "A" * 43, "not-the-token", ""):
        response = await sign_in(console, wrong)
        assert response.status == 401
        assert sessions.COOKIE + "=" not in " ".join(response.headers.getall("Set-Cookie", []))
        assert 'type="password"' in await response.text()


async def test_sign_in_attempts_are_limited_per_address(console: Client) -> None:
    statuses = [(await sign_in(console, "wrong-" * 5)).status for _ in range(SIGN_IN_BURST + 1)]
    assert statuses[:SIGN_IN_BURST] == [401] * SIGN_IN_BURST
    assert statuses[-1] == 429
    refused = await sign_in(console, ADMIN_TOKEN)  # the right token too, while limited
    assert refused.status == 429
    assert int(refused.headers["Retry-After"]) >= 1


async def test_a_form_without_the_sessions_csrf_token_does_nothing(console: Client) -> None:
    assert (await sign_in(console, ADMIN_TOKEN)).status == 303
    for token in (None, "", "forged", sessions.csrf_token(b"x" * 32, "n")):
        data = {"id": "mallory", "name": "Mallory"}
        if token is not None:
            data["csrf"] = token
        response = await console.post("/console/operator/teams", data=data, allow_redirects=False)
        assert response.status == 403
        assert response.content_type == "text/html"
    teams = await (await console.get("/admin/teams", headers=ADMIN)).json()
    assert "mallory" not in [team["id"] for team in teams["teams"]]
    # and the sign-in form's own token is needed to sign in
    response = await console.post(
        "/console/sign-in", data={"secret": ADMIN_TOKEN}, allow_redirects=False
    )
    assert response.status == 403


async def test_a_revoked_keys_session_ends_at_the_next_page(console: Client) -> None:
    key = await new_key(console, "research")
    assert (await sign_in(console, key)).status == 303
    assert (await console.get("/console/team")).status == 200
    keys = await (await console.get("/admin/teams/research/keys", headers=ADMIN)).json()
    key_id = keys["keys"][0]["id"]
    revoked = await console.delete(f"/admin/teams/research/keys/{key_id}", headers=ADMIN)
    assert revoked.status == 204
    page = await console.get("/console/team", allow_redirects=False)
    assert page.status == 303
    assert page.headers["Location"] == "/console"
    assert 'ng_console=""' in set_cookie(page, sessions.COOKIE)


async def test_sessions_are_good_on_every_replica_until_the_admin_token_changes(
    fake_nomic: FakeNomic, redis_client: Any, redis_url: str
) -> None:
    first = await console_client(fake_nomic, redis_url)
    same = await console_client(fake_nomic, redis_url)
    other = await console_client(
        fake_nomic, redis_url, admin_token="another-admin-token-0123456789ab"
    )
    try:
        assert (await sign_in(first, ADMIN_TOKEN)).status == 303
        cookie = first.session.cookie_jar.filter_cookies(first.make_url("/console"))
        value = cookie[sessions.COOKIE].value
        headers = {"Cookie": f"{sessions.COOKIE}={value}"}
        assert (await same.get("/console/operator", headers=headers)).status == 200
        moved = await other.get("/console/operator", headers=headers, allow_redirects=False)
        assert moved.status == 303  # a session of the old token: sign in again
    finally:
        for client in (first, same, other):
            await client.close()


async def test_a_team_sees_only_itself_and_names_are_escaped(console: Client) -> None:
    mine = await new_key(console, "research", name="<script>alert(1)</script>")
    theirs = await new_key(console, "marketing", name="Marketing Secret Team")
    await embed_texts(console, theirs, ["only marketing's text"])
    await embed_texts(console, mine, ["a", "b"])
    assert (await sign_in(console, mine)).status == 303
    page = await (await console.get("/console/team?days=90")).text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script>alert" not in page
    assert "marketing" not in page.lower()
    # the operator's page escapes it too
    console.session.cookie_jar.clear()
    assert (await sign_in(console, ADMIN_TOKEN)).status == 303
    operator = await (await console.get("/console/operator")).text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in operator
    assert "<script>alert" not in operator
    assert "Marketing Secret Team" in operator


async def test_a_team_session_cannot_use_the_operators_pages(console: Client) -> None:
    key = await new_key(console, "research")
    assert (await sign_in(console, key)).status == 303
    page = await console.get("/console/operator", allow_redirects=False)
    assert page.status == 303
    token = csrf_of(await (await console.get("/console/team")).text())
    posted = await console.post(
        "/console/operator/teams", data={"csrf": token, "id": "x"}, allow_redirects=False
    )
    assert posted.status == 403


async def test_the_operator_manages_teams_and_keys_in_the_page(console: Client) -> None:
    assert (await sign_in(console, ADMIN_TOKEN)).status == 303
    token = csrf_of(await (await console.get("/console/operator")).text())
    made = await console.post(
        "/console/operator/teams",
        data={"csrf": token, "id": "research", "name": "Research", "tokens_per_month": "1,000"},
        allow_redirects=False,
    )
    assert made.status == 303
    team = await (await console.get("/admin/teams/research", headers=ADMIN)).json()
    assert team["limits"]["tokens_per_month"] == 1000
    changed = await console.post(
        "/console/operator/teams/research/limits",
        data={
            "csrf": token,
            "name": "Research",
            "tokens_per_month": "",
            "requests_per_minute": "60",
        },
        allow_redirects=False,
    )
    assert changed.status == 303
    team = await (await console.get("/admin/teams/research", headers=ADMIN)).json()
    assert team["limits"]["tokens_per_month"] is None
    assert team["limits"]["requests_per_minute"] == 60
    created = await console.post("/console/operator/teams/research/keys", data={"csrf": token})
    assert created.status == 201
    key = re.search(r"data-new-key>([^<]+)<", await created.text())
    assert key is not None
    headers = {"Authorization": f"Bearer {key.group(1)}"}
    assert (await console.get("/v1/user", headers=headers)).status == 200
    listed = await (await console.get("/admin/teams/research/keys", headers=ADMIN)).json()
    key_id = listed["keys"][0]["id"]
    rotated = await console.post(
        f"/console/operator/teams/research/keys/{key_id}/rotate",
        data={"csrf": token, "grace_seconds": "0"},
    )
    assert rotated.status == 201
    assert "no longer works" in await rotated.text()
    listed = await (await console.get("/admin/teams/research/keys", headers=ADMIN)).json()
    old, new = listed["keys"]
    assert old["id"] == key_id
    assert old["expires"] is not None
    assert new["expires"] is None
    revoked = await console.post(
        f"/console/operator/teams/research/keys/{new['id']}/revoke",
        data={"csrf": token},
        allow_redirects=False,
    )
    assert revoked.status == 303
    listed = await (await console.get("/admin/teams/research/keys", headers=ADMIN)).json()
    assert listed["keys"][1]["revoked"] is not None
    bad = await console.post(
        "/console/operator/teams/research/limits", data={"csrf": token, "tokens_per_day": "many"}
    )
    assert bad.status == 422
    assert "whole number" in await bad.text()


async def test_the_console_can_be_turned_off(fake_nomic: FakeNomic) -> None:
    client = await console_client(fake_nomic, console=False)
    try:
        response = await client.get("/console")
        assert response.status == 404
        assert response.content_type == "application/json"
    finally:
        await client.close()


async def test_the_chargeback_csv_keeps_a_team_name_from_being_a_formula(console: Client) -> None:
    await new_key(console, "research", name='=HYPERLINK("http://x")')
    assert (await sign_in(console, ADMIN_TOKEN)).status == 303
    exported = await console.get("/console/operator/chargeback.csv")
    assert exported.status == 200
    assert "attachment" in exported.headers["Content-Disposition"]
    assert "'=HYPERLINK" in await exported.text()
