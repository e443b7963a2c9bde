"""Money beside tokens: GATEWAY_PRICES, and the same amount, tokens x price to the cent, in
the usage API, the admin API, the chargeback, the CLI and the console."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
from decimal import ROUND_HALF_UP, Decimal

import pytest

from fake_nomic import FakeNomic
from gateway import cli
from gateway.config import Settings, SettingsError
from gateway.prices import flat_price, parse_prices
from tests.conftest import ADMIN, ADMIN_TOKEN
from tests.test_console import console_client, embed_texts, new_key, sign_in

PRICE = Decimal("12345.678901")  # per million tokens: a few tokens make cents to round
ENV = {"NOMIC_API_KEY": "nk-x"}


def cost(tokens: int) -> Decimal:
    return (tokens * PRICE / 1_000_000).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def shown(tokens: int) -> str:
    return f"{cost(tokens):,.2f} EUR"


def test_prices_are_parsed_and_one_price_must_cover_every_model() -> None:
    assert parse_prices("*=0.10") == (("*", Decimal("0.10")),)
    settings = Settings.from_sources({}, {**ENV, "GATEWAY_PRICES": "*=0.10"})
    assert settings.pricing is not None
    assert settings.pricing.cost(15_000_000) == Decimal("1.50")
    assert Settings.from_sources({}, ENV).pricing is None  # no prices: none invented
    for bad in ("0.10", "*=abc", "*=-1", "*=1,*=2", "*=1e3", "*=99999999"):
        with pytest.raises(SettingsError, match="GATEWAY_PRICES"):
            Settings.from_sources({}, {**ENV, "GATEWAY_PRICES": bad})
    with pytest.raises(SettingsError, match="not per model"):
        Settings.from_sources({}, {**ENV, "GATEWAY_PRICES": "*=0.10,nomic-embed-text-v1.5=0.20"})
    with pytest.raises(SettingsError, match="not per model"):  # the others unpriced
        Settings.from_sources({}, {**ENV, "GATEWAY_PRICES": "nomic-embed-text-v1.5=0.20"})
    with pytest.raises(SettingsError, match="not a model served"):
        Settings.from_sources({}, {**ENV, "GATEWAY_PRICES": "*=1,gpt-4=1"})
    models = ("a", "b")
    assert flat_price((("a", Decimal(1)), ("b", Decimal("1.0"))), models) == Decimal(1)


def test_a_cost_is_rounded_once_half_up_to_the_cent() -> None:
    settings = Settings.from_sources({}, {**ENV, "GATEWAY_PRICES": "*=0.5"})
    pricing = settings.pricing
    assert pricing is not None
    assert pricing.cost(10_000) == Decimal("0.01")  # 0.005 rounds up
    assert pricing.cost(9_999) == Decimal("0.00")
    assert pricing.cost(123_456_789) == Decimal("61.73")


async def test_money_is_tokens_times_price_in_every_view(
    fake_nomic: FakeNomic, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    client = await console_client(fake_nomic, prices=(("*", PRICE),), currency="EUR")
    try:
        key = await new_key(client, "research")
        texts = ["one", "two words", "three words here", "a longer text of several words"]
        await embed_texts(client, key, texts)
        await embed_texts(client, key, texts[:3])  # hits: saved tokens
        own = await client.get("/v1/usage", headers={"Authorization": f"Bearer {key}"})
        (row,) = (await own.json())["usage"]
        billed, saved = row["billed_tokens"], row["saved_tokens"]
        assert billed > 0
        assert saved > 0
        assert row["billed_cost"] == str(cost(billed))
        assert row["saved_cost"] == str(cost(saved))
        assert row["currency"] == "EUR"

        (admin_row,) = (await (await client.get("/admin/usage", headers=ADMIN)).json())["usage"]
        assert admin_row == row
        charge = await (await client.get("/admin/chargeback", headers=ADMIN)).json()
        charged, no_team = charge["chargeback"]  # the team, then what no team is charged
        assert (charged["billed_tokens"], charged["billed_cost"]) == (billed, str(cost(billed)))
        assert charged["saved_cost"] == str(cost(saved))
        assert (no_team["team"], no_team["billed_cost"]) == ("unattributed", "0.00")

        monkeypatch.setenv("GATEWAY_ADMIN_TOKEN", ADMIN_TOKEN)
        base = str(client.make_url("")).rstrip("/")
        capsys.readouterr()
        assert await asyncio.to_thread(cli.main, ["usage", "--url", base, "--json"]) == 0
        (printed,) = json.loads(capsys.readouterr().out)
        assert printed["billed_cost"] == str(cost(billed))
        assert await asyncio.to_thread(cli.main, ["usage", "--url", base, "--csv"]) == 0
        (line,) = csv.DictReader(io.StringIO(capsys.readouterr().out))
        assert (line["billed_cost"], line["saved_cost"]) == (str(cost(billed)), str(cost(saved)))
        assert await asyncio.to_thread(cli.main, ["usage", "--url", base]) == 0
        assert str(cost(billed)) in capsys.readouterr().out
        assert await asyncio.to_thread(cli.main, ["chargeback", "--url", base, "--csv"]) == 0
        line, _ = csv.DictReader(io.StringIO(capsys.readouterr().out))
        assert (line["team"], line["billed_cost"]) == ("research", str(cost(billed)))

        assert (await sign_in(client, key)).status == 303
        page = await (await client.get("/console/team")).text()
        assert _total(page, "billed_cost") == shown(billed)
        assert _total(page, "saved_cost") == shown(saved)
        assert f'data-field="billed_cost"><span class="money">{shown(billed)}' in page
        today = f'{billed:,}</span> tokens billed (<span class="money">{shown(billed)}'
        assert page.count(today) == 2  # today's and this month's budgets

        client.session.cookie_jar.clear()
        assert (await sign_in(client, ADMIN_TOKEN)).status == 303
        operator = await (await client.get("/console/operator")).text()
        assert _total(operator, "billed_cost") == shown(billed)
        assert _total(operator, "saved_cost") == shown(saved)
        exported = await client.get("/console/operator/chargeback.csv")
        assert exported.content_type == "text/csv"
        line, _ = csv.DictReader(io.StringIO(await exported.text()))
        assert (line["billed_cost"], line["saved_cost"]) == (str(cost(billed)), str(cost(saved)))
    finally:
        await client.close()


def _total(page: str, field: str) -> str:
    found = re.search(rf'data-total="{field}"><span class="money">([^<]+)</span>', page)
    assert found is not None, field
    return found.group(1)


async def test_without_prices_no_money_is_shown(fake_nomic: FakeNomic) -> None:
    client = await console_client(fake_nomic)
    try:
        key = await new_key(client, "research")
        await embed_texts(client, key, ["one"])
        own = await client.get("/v1/usage", headers={"Authorization": f"Bearer {key}"})
        (row,) = (await own.json())["usage"]
        assert "billed_cost" not in row
        assert (await sign_in(client, key)).status == 303
        assert 'class="money"' not in await (await client.get("/console/team")).text()
    finally:
        await client.close()


async def test_money_by_tag_is_tokens_times_price_in_every_view(
    fake_nomic: FakeNomic, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    client = await console_client(fake_nomic, prices=(("*", PRICE),), currency="EUR")
    try:
        key = await new_key(client, "research")
        jobs = {"nightly": ["one", "two words", "three words here"], "adhoc": ["a b c d e f"]}
        for job, texts in jobs.items():
            await embed_texts(client, key, texts, job)
        await embed_texts(client, key, jobs["nightly"][:2], "nightly")  # hits: saved
        own = await client.get("/v1/usage?by=tag", headers={"Authorization": f"Bearer {key}"})
        rows = {row["tag"]: row for row in (await own.json())["usage"]}
        assert set(rows) == set(jobs)
        billed = {job: rows[job]["billed_tokens"] for job in jobs}
        saved = {job: rows[job]["saved_tokens"] for job in jobs}
        assert all(billed.values())
        assert saved["nightly"] > 0
        for job, row in rows.items():
            assert (row["billed_cost"], row["saved_cost"], row["currency"]) == (
                str(cost(billed[job])), str(cost(saved[job])), "EUR"
            )  # fmt: skip
        admin_rows = await (await client.get("/admin/usage?by=tag", headers=ADMIN)).json()
        assert {row["tag"]: row for row in admin_rows["usage"]} == rows
        charge = await client.get("/admin/chargeback?by=tag", headers=ADMIN)
        charged = {row["tag"]: row for row in (await charge.json())["chargeback"]}
        assert {job: charged[job]["billed_cost"] for job in jobs} == {
            job: str(cost(billed[job])) for job in jobs
        }

        monkeypatch.setenv("GATEWAY_ADMIN_TOKEN", ADMIN_TOKEN)
        base = str(client.make_url("")).rstrip("/")
        capsys.readouterr()
        usage = ["usage", "--url", base, "--by-tag"]
        assert await asyncio.to_thread(cli.main, [*usage, "--json"]) == 0
        printed = {row["tag"]: row["billed_cost"] for row in json.loads(capsys.readouterr().out)}
        assert printed == {job: str(cost(billed[job])) for job in jobs}
        assert await asyncio.to_thread(cli.main, [*usage, "--csv"]) == 0
        lines = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
        assert {line["tag"]: line["saved_cost"] for line in lines} == {
            job: str(cost(saved[job])) for job in jobs
        }
        assert await asyncio.to_thread(cli.main, usage) == 0
        table = capsys.readouterr().out.splitlines()
        for job in jobs:
            (line,) = [line for line in table if f" {job} " in line]
            assert str(cost(billed[job])) in line.split()
        chargeback = ["chargeback", "--url", base, "--by-tag", "--csv"]
        assert await asyncio.to_thread(cli.main, chargeback) == 0
        lines = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
        assert {(line["team"], line["tag"]): line["billed_cost"] for line in lines} == {
            ("research", job): str(cost(billed[job])) for job in jobs
        }

        assert (await sign_in(client, key)).status == 303
        page = await (await client.get("/console/team")).text()
        for job in jobs:
            assert _tag_cell(page, job, "billed_cost") == shown(billed[job])
            assert _tag_cell(page, job, "saved_cost") == shown(saved[job])

        client.session.cookie_jar.clear()
        assert (await sign_in(client, ADMIN_TOKEN)).status == 303
        operator = await (await client.get("/console/operator")).text()
        for job in jobs:
            assert _tag_cell(operator, job, "billed_cost") == shown(billed[job])
        exported = await client.get("/console/operator/chargeback.csv?by=tag")
        lines = list(csv.DictReader(io.StringIO(await exported.text())))
        assert {line["tag"]: line["billed_cost"] for line in lines} == {
            job: str(cost(billed[job])) for job in jobs
        }
    finally:
        await client.close()


def _tag_cell(page: str, tag: str, field: str) -> str:
    """The money in ``field``'s cell of ``tag``'s row (the first table that has one)."""
    row = re.search(rf'<tr [^>]*data-tag="{tag}".*?</tr>', page)
    assert row is not None, tag
    found = re.search(rf'data-field="{field}"><span class="money">([^<]+)</span>', row.group(0))
    assert found is not None, (tag, field)
    return found.group(1)
