"""The console through aiohttp's test client: sessions, CSRF, revocation, the sign-in limit,
headers, escaping, and what a team may see. The browser tests are in test_console_browser.py."""

from __future__ import annotations

import argparse
import asyncio
import csv
import gzip
import io
import logging
import re
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer

from fake_nomic import FakeNomic
from gateway import admin_cli, spend
from gateway.app import create_app
from gateway.console import pages, sessions
from gateway.console import routes as console_routes
from gateway.console.routes import FORM_BYTES, SIGN_IN_BURST, address_bucket
from gateway.store import memory_ledger
from gateway.store.base import Ledger
from gateway.store.rate import Rates
from tests.conftest import ADMIN, ADMIN_TOKEN, EMBEDDED, gateway_settings, make_team

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


async def embed_texts(client: Client, key: str, texts: list[str], tag: str | None = None) -> None:
    body = {"texts": texts, "model": "nomic-embed-text-v1.5"}
    headers = {"Authorization": f"Bearer {key}", **({"X-Gateway-Tag": tag} if tag else {})}
    response = await client.post("/v1/embedding/text", json=body, headers=headers)
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


# --- what a review found: forms, cookies and errors that were 500s or worse ------------------


KEY_LIKE = "nk-" + "K" * 43  # not a team's key: what must never reach a log line


async def raw_request(client: Client, head: bytes, body: bytes = b"") -> bytes:
    """One request written as bytes (a header no client library would send), its answer."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(head + b"\r\n\r\n" + body)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    return answer


async def form_post(
    client: Client, body: bytes, content_type: str, **headers: str
) -> ClientResponse:
    """A sign-in post with the form's own CSRF token and nonce cookie in ``body``'s place."""
    token = csrf_of(await (await client.get("/console")).text())
    body = body.replace(b"CSRF", token.encode())
    headers = {"Content-Type": content_type, **headers}
    return await client.post("/console/sign-in", data=body, headers=headers, allow_redirects=False)


def assert_a_page(response: ClientResponse, status: int) -> None:
    assert response.status == status
    assert response.content_type == "text/html"
    assert "script-src 'none'" in response.headers["Content-Security-Policy"]


async def test_a_compressed_form_is_refused_unread(console: Client) -> None:
    inflates = gzip.compress(b"csrf=CSRF&secret=" + b"a" * (4 << 20), 9)  # 4 MiB from ~4 KB
    for encoding, body in (("gzip", inflates), ("deflate", zlib.compress(b"secret=a"))):
        response = await form_post(
            console, body, "application/x-www-form-urlencoded", **{"Content-Encoding": encoding}
        )
        assert_a_page(response, 415)
    identity = await form_post(
        console, b"csrf=CSRF&secret=" + ADMIN_TOKEN.encode(), "application/x-www-form-urlencoded",
        **{"Content-Encoding": "identity"},
    )  # fmt: skip
    assert identity.status == 303


async def test_a_form_is_read_to_64_kib_whatever_its_headers(console: Client) -> None:
    async def chunked(size: int) -> AsyncIterator[bytes]:
        yield b"csrf=CSRF&secret=" + ADMIN_TOKEN.encode() + b"&pad="
        yield b"a" * size

    for size, status in ((100, 303), (FORM_BYTES, 413)):
        token = csrf_of(await (await console.get("/console")).text())

        async def body(size: int = size, token: str = token) -> AsyncIterator[bytes]:
            async for chunk in chunked(size):
                yield chunk.replace(b"CSRF", token.encode())

        response = await console.post(
            "/console/sign-in", data=body(), allow_redirects=False,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )  # fmt: skip
        assert response.status == status  # no Content-Length: chunked
        console.session.cookie_jar.clear()
    too_long = await form_post(
        console, b"a" * (FORM_BYTES + 1), "application/x-www-form-urlencoded"
    )
    assert_a_page(too_long, 413)


async def test_a_form_the_console_never_sends_is_a_4xx_and_nothing_of_it_is_logged(
    console: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    key = KEY_LIKE.encode()
    multipart = b"--B\r\n" + key + b"\r\n\r\nx\r\n--B--\r\n"
    sent = [
        (b"secret=" + key, "application/x-www-form-urlencoded; charset=utf-16", 415),
        (b"secret=" + key, "application/x-www-form-urlencoded; charset=nonexistent", 415),
        (multipart, "multipart/form-data; boundary=B", 415),
        (multipart, "multipart/form-data", 415),
        (b"csrf=CSRF&secret=%ff" + key, "application/x-www-form-urlencoded", 400),
        (b"&".join([b"a=1"] * 65) + b"&secret=" + key, "application/x-www-form-urlencoded", 400),
    ]
    for body, content_type, status in sent:
        assert_a_page(await form_post(console, body, content_type), status)
    assert KEY_LIKE not in caplog.text
    assert KEY_LIKE[3:] not in caplog.text
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]


async def test_a_sign_in_cookie_the_gateway_did_not_make_is_no_nonce(console: Client) -> None:
    chosen = "chosen-by-the-client"
    page = await console.get("/console", headers={"Cookie": f"{sessions.SIGN_IN_COOKIE}={chosen}"})
    token = csrf_of(await page.text())
    assert chosen not in set_cookie(page, sessions.SIGN_IN_COOKIE)  # a new one, made here
    console.session.cookie_jar.clear()
    response = await console.post(
        "/console/sign-in", data={"csrf": token, "secret": ADMIN_TOKEN}, allow_redirects=False,
        headers={"Cookie": f"{sessions.SIGN_IN_COOKIE}={chosen}"},
    )  # fmt: skip
    assert response.status == 403
    # a cookie of bytes that are no text, or too long: a new form, not a 500
    for value in (b"a\xffb", b"n" * 100):
        answer = await raw_request(
            console, b"GET /console HTTP/1.1\r\nHost: x\r\nConnection: close\r\nCookie: "
            + sessions.SIGN_IN_COOKIE.encode() + b"=" + value,
        )  # fmt: skip
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]


def test_a_sign_in_nonce_is_good_only_as_made_and_until_it_expires() -> None:
    secret = b"s" * 32
    nonce, cookie = sessions.new_sign_in(secret, 1000.0, 3600)
    assert sessions.sign_in_nonce(secret, cookie, 1000.0) == nonce
    assert sessions.sign_in_nonce(secret, cookie, 4600.0) is None  # expired
    assert sessions.sign_in_nonce(b"t" * 32, cookie, 1000.0) is None
    made, expiry, mac = cookie.split(".")
    assert sessions.sign_in_nonce(secret, f"{made}.{int(expiry) + 10**6}.{mac}", 1000.0) is None
    for junk in (None, "", nonce, "é.1.x", cookie + "x", "a" * 65 + cookie[len(nonce) :]):
        assert sessions.sign_in_nonce(secret, junk, 1000.0) is None


async def test_what_no_handler_expected_is_a_page_that_logs_its_type_only(
    console: Client, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(*args: object) -> str:
        raise RuntimeError(f"a message that quotes the request: {KEY_LIKE}")

    monkeypatch.setattr(pages, "sign_in_page", failing)
    response = await console.get("/console")
    assert_a_page(response, 500)
    assert KEY_LIKE not in await response.text()
    assert "RuntimeError" in caplog.text
    assert KEY_LIKE not in caplog.text
    assert all(record.exc_info is None for record in caplog.records)


async def test_numbers_in_the_operators_forms_are_ascii_digits(console: Client) -> None:
    await new_key(console, "research")
    assert (await sign_in(console, ADMIN_TOKEN)).status == 303
    token = csrf_of(await (await console.get("/console/operator")).text())
    for value in ("\u0663", "\u00b2", "9" * 5000):  # an Arabic-Indic 3, a superscript 2
        limits = await console.post(
            "/console/operator/teams/research/limits",
            data={"csrf": token, "tokens_per_day": value},
        )
        assert_a_page(limits, 422)
    team = await (await console.get("/admin/teams/research", headers=ADMIN)).json()
    assert team["limits"]["tokens_per_day"] is None
    listed = await (await console.get("/admin/teams/research/keys", headers=ADMIN)).json()
    key_id = listed["keys"][0]["id"]
    for value in ("\u00b2", "9" * 5000, "\u0663"):
        rotated = await console.post(
            f"/console/operator/teams/research/keys/{key_id}/rotate",
            data={"csrf": token, "grace_seconds": value},
        )
        assert_a_page(rotated, 422)


async def test_a_month_out_of_range_is_a_422_or_its_rows(console: Client) -> None:
    assert (await sign_in(console, ADMIN_TOKEN)).status == 303
    for month, status in (("9999-12", 200), ("0001-01", 200), ("0000-01", 422),
                          ("2024-13", 422), ("\u0662\u0660\u0662\u0664-01", 422),
                          ("10000-01", 422)):  # fmt: skip
        exported = await console.get("/console/operator/chargeback.csv", params={"month": month})
        assert exported.status == status, month
        api = await console.get("/admin/chargeback", params={"month": month}, headers=ADMIN)
        assert api.status == status, month


def test_the_requested_month_and_its_days() -> None:
    assert spend.requested_month(None, 0.0) == ("1970-01", spend.month_days("1970-01"))
    month, days = spend.requested_month("2024-02", 0.0)
    assert (month, days[0], days[-1], len(days)) == ("2024-02", "2024-02-01", "2024-02-29", 29)
    assert spend.requested_month("9999-12", 0.0)[1][-1] == "9999-12-31"
    for bad in ("2024-2", "2024-02-01", "0000-01", "\u0662\u0660\u0662\u0664-01", "x" * 5000):
        with pytest.raises(ValueError):
            spend.requested_month(bad, 0.0)


def test_a_csv_cell_is_never_a_formula_in_either_separators_locale() -> None:
    out = io.StringIO()
    rows: list[dict[str, object]] = [
        {"team": "a", "name": "=1+1", "n": 1},
        {"team": "b", "name": "a;=1+1", "n": 2},
        {"team": "c", "name": "@SUM(1)", "n": None},
        {"team": "d", "name": 'x, "-1;+2', "n": 3},
        {"team": "e", "name": "a;b, c", "n": 4},
    ]
    spend.write_csv(out, ["team", "name", "n"], rows)
    lines = out.getvalue().splitlines()
    assert lines == [
        "team,name,n",
        '"a","\'=1+1","1"',
        '"b","a;\'=1+1","2"',
        '"c","\'@SUM(1)",""',
        '"d","x,\' ""-1;\'+2","3"',
        '"e","a;b, c","4"',
    ]
    for row in csv.reader(lines[1:]):
        assert not any(cell.startswith(spend.FORMULA_STARTS) for cell in row), row
    for line in lines[1:]:  # as a spreadsheet whose separator is ; splits them
        assert not any(
            cell.lstrip(' "').startswith(spend.FORMULA_STARTS) for cell in line.split(";")
        )


def test_the_clis_csv_neutralises_cells_as_the_consoles_does(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = argparse.Namespace(json=False, csv=True)
    admin_cli._print(
        [{"team": "t", "name": "=1+1"}, {"team": "u", "name": "a;@x"}], ["team", "name"], args
    )
    assert capsys.readouterr().out.splitlines() == ["team,name", '"t","\'=1+1"', '"u","a;\'@x"']


def test_sign_ins_are_counted_per_address_as_proxies_write_it() -> None:
    bucket = address_bucket
    assert bucket("::ffff:192.0.2.1") == bucket("192.0.2.1") == "192.0.2.1"
    assert bucket("::ffff:192.0.2.1") != bucket("::ffff:192.0.2.2")
    assert bucket("192.0.2.1:4711") == "192.0.2.1"  # Azure's Application Gateway
    assert bucket("[2001:db8::1]:443") == bucket("2001:db8::2") == "2001:db8::/64"
    assert bucket("[2001:db8::1]") == "2001:db8::/64"
    assert bucket("unparsable") != bucket("another")
    assert len(bucket("x" * 10_000)) < 100


def test_in_process_rates_forget_addresses_whose_rate_is_full_again() -> None:
    kept, unpruned = Rates(prune_at=100), Rates(prune_at=10**9)
    for i in range(10_000):
        now_ms = i * 1000.0
        for rates in (kept, unpruned):
            rates.spend(f"address {i}", now_ms, 1, 10 / 60, 10)
        for back in (1, 3, 7):  # earlier addresses again: the same answers as never pruned
            key = f"address {max(0, i - back)}"
            assert kept.spend(key, now_ms, 1, 10 / 60, 10) == unpruned.spend(
                key, now_ms, 1, 10 / 60, 10
            )
    assert len(kept) <= 200
    assert len(unpruned) == 10_000


async def test_signing_out_ends_the_session_on_every_replica_even_a_copied_cookie(
    fake_nomic: FakeNomic, redis_url: str
) -> None:
    first = await console_client(fake_nomic, redis_url)
    other = await console_client(fake_nomic, redis_url)
    try:
        key = await new_key(first, "research")
        kept = []
        for _ in range(2):  # two sessions of one team: the second is not signed out
            first.session.cookie_jar.clear()
            assert (await sign_in(first, key)).status == 303
            cookies = first.session.cookie_jar.filter_cookies(first.make_url("/console"))
            kept.append({"Cookie": f"{sessions.COOKIE}={cookies[sessions.COOKIE].value}"})
        page = await first.get("/console/team")
        out = await first.post(
            "/console/sign-out", data={"csrf": csrf_of(await page.text())}, allow_redirects=False
        )
        assert out.status == 303
        first.session.cookie_jar.clear()
        for client in (first, other):
            copied = await client.get("/console/team", headers=kept[1], allow_redirects=False)
            assert copied.status == 303  # signed out: to the sign-in form
            assert (await client.get("/console/team", headers=kept[0])).status == 200
    finally:
        for client in (first, other):
            await client.close()


async def test_signing_out_ends_the_session_in_the_embedded_stores(
    fake_nomic: FakeNomic, tmp_path: Path
) -> None:
    for store_url in (None, EMBEDDED + str(tmp_path)):  # in memory, on disk
        client = await console_client(fake_nomic, store_url)
        try:
            assert (await sign_in(client, ADMIN_TOKEN)).status == 303
            cookies = client.session.cookie_jar.filter_cookies(client.make_url("/console"))
            copied = {"Cookie": f"{sessions.COOKIE}={cookies[sessions.COOKIE].value}"}
            page = await client.get("/console/operator")
            out = await client.post(
                "/console/sign-out", data={"csrf": csrf_of(await page.text())},
                allow_redirects=False,
            )  # fmt: skip
            assert out.status == 303
            client.session.cookie_jar.clear()
            again = await client.get("/console/operator", headers=copied, allow_redirects=False)
            assert again.status == 303
        finally:
            await client.close()


async def test_a_sign_out_is_kept_whatever_the_clock_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    # Spending all a rate holds can be refused by a rounding of the TAT's floats (about one
    # clock reading in five): a sign-out must be kept at every one.
    session = sessions.Session("operator", "", "", "mac", "nonce", 1000.0 + 8 * 3600)
    for i in range(200):
        clock = 5000.0 + i * 0.0137  # seconds, as time.monotonic() reads them
        monkeypatch.setattr(memory_ledger, "time", SimpleNamespace(monotonic=lambda c=clock: c))
        ledger = memory_ledger.MemoryLedger()
        assert not await console_routes._signed_out(ledger, session)
        await console_routes._sign_out_on_store(ledger, session, 1000.0)
        assert await console_routes._signed_out(ledger, session), clock
