"""The usage buffer: nothing lost when the store fails or a flush is cut short, nothing twice;
the refusals decided before a body is read; the turn to learn what an item costs; and texts
counted apart from images."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping

import pytest

import gateway.accounts as accounts_module
from gateway import quota, tags
from gateway.accounts import Accounts, UsageBuffer
from gateway.assembly import Answer, Bill, Lookup
from gateway.entries import Entry
from gateway.errors import Overloaded, QuotaExceeded
from gateway.forms import ParsedRequest
from gateway.models import Kind
from gateway.quota import TokenEstimator
from gateway.store import StoreError
from gateway.store.memory_ledger import MemoryLedger
from gateway.teams import Limits, Team
from tests.helpers import metric_value

AT = quota.window(1_800_000_000.0)
LEARN_WAIT = 60.0  # a request waits this long for another to learn an item's cost


class FlakyLedger(MemoryLedger):
    """Fails, runs-then-times-out, or stalls settles on demand."""

    def __init__(self) -> None:
        super().__init__()
        self.mode = "ok"
        self.stall = asyncio.Event()

    async def settle(
        self, team_id: str, day: str, month: str, request_id: str, billed: int,
        usage: Mapping[str, int], tag: str = tags.UNTAGGED,
    ) -> None:  # fmt: skip
        if self.mode == "down":
            raise StoreError("down")
        if self.mode == "stall":
            await self.stall.wait()
        await super().settle(team_id, day, month, request_id, billed, usage)
        if self.mode == "ran-then-timed-out":
            raise StoreError("timeout")


async def requests_of(ledger: MemoryLedger, team: str) -> int:
    [row] = await ledger.usage(team, [AT.day])
    return row["requests"]


async def test_usage_is_kept_while_the_store_is_down_and_written_once_after() -> None:
    ledger = FlakyLedger()
    buffer = UsageBuffer(ledger)
    buffer.add("a", AT, 10, {"requests": 1})
    ledger.mode = "ran-then-timed-out"
    await buffer.flush()  # it ran, but the gateway could not know
    buffer.add("a", AT, 10, {"requests": 1})
    ledger.mode = "down"
    await buffer.flush()
    ledger.mode = "ok"
    await buffer.flush()
    await buffer.flush()
    assert await requests_of(ledger, "a") == 2


async def test_a_flush_cut_short_loses_nothing() -> None:
    ledger = FlakyLedger()
    buffer = UsageBuffer(ledger)
    for team in ("a", "b", "c"):
        buffer.add(team, AT, 0, {"requests": 1})
    ledger.mode = "stall"
    flush = asyncio.create_task(buffer.flush())
    await asyncio.sleep(0.01)
    flush.cancel()
    with pytest.raises(asyncio.CancelledError):
        await flush
    ledger.mode = "ok"
    await buffer.flush()
    assert [await requests_of(ledger, team) for team in ("a", "b", "c")] == [1, 1, 1]


async def test_concurrent_flushes_write_each_record_once() -> None:
    ledger = MemoryLedger()
    buffer = UsageBuffer(ledger)
    for team in ("a", "b"):
        buffer.add(team, AT, 0, {"requests": 1})
    await asyncio.gather(buffer.flush(), buffer.flush(), buffer.flush())
    assert [await requests_of(ledger, team) for team in ("a", "b")] == [1, 1]


# ---- refused before the body: a per-minute limit seen used up ---------------------------------


MODEL = "nomic-embed-vision-v1.5"
TEXT_MODEL = "nomic-embed-text-v1.5"


def one_input(hit: bool, kind: Kind = "image") -> tuple[Lookup, Answer | None]:
    """A request of one input, found in the cache (with its answer) or not."""
    if kind == "text":
        request = ParsedRequest.of(TEXT_MODEL, kind, [b"hello"])
    else:
        request = ParsedRequest.of(MODEL, kind, [b"\x89PNG\r\n\x1a\n"])
    found = {"k": Entry(b"[0.5]", 10)} if hit else {}
    lookup = Lookup(request, ["k"], {"k": request.items[0]}, found, [] if hit else ["k"], {})
    answer = Answer(b"{}", hits=1, misses=0, billed_tokens=0, usage_tokens=10)
    return lookup, answer if hit else None


def one_image(hit: bool) -> tuple[Lookup, Answer | None]:
    return one_input(hit, "image")


async def used_up(
    team: Team, clock: list[float], hit: bool = True, kind: Kind = "image"
) -> Accounts:
    """Accounts whose store refused ``team`` this minute (for a hit, or for a miss, of
    ``kind``)."""
    estimator = TokenEstimator(1)
    for model in (MODEL, TEXT_MODEL):  # a miss's cost is known: no request waits to learn it
        estimator.observe(model, 10, 1)
    ledger = MemoryLedger()
    accounts = Accounts(ledger, UsageBuffer(ledger), estimator, LEARN_WAIT, clock=lambda: clock[0])
    lookup, answer = one_input(hit, kind)
    with pytest.raises(QuotaExceeded):  # admitted until refused
        for _ in range(10):
            if answer is None:
                await accounts.reserve(team, lookup)
            else:
                await accounts.admit_answered(team, lookup, answer)
    return accounts


async def test_a_used_up_per_minute_limit_refuses_before_the_body_until_the_minute_ends() -> None:
    clock = [1_800_000_000.0]  # the start of a minute
    team = Team("t", "T", Limits(requests_per_minute=2))
    accounts = await used_up(team, clock)
    with pytest.raises(QuotaExceeded) as refused:
        accounts.refuse_early(team, "image")
    assert refused.value.loc == ("limits", "requests_per_minute")
    assert refused.value.headers["X-RateLimit-Remaining"] == "0"
    assert refused.value.msg == (
        "team 't' has used all 2 requests of its requests_per_minute limit this minute"
    )
    clock[0] += 59.9
    with pytest.raises(QuotaExceeded):
        accounts.refuse_early(team, "image")
    clock[0] += 0.1  # the next minute
    accounts.refuse_early(team, "image")


async def test_a_raised_limit_or_hits_that_do_not_count_are_never_refused_early() -> None:
    clock = [1_800_000_000.0]
    team = Team("t", "T", Limits(requests_per_minute=2))
    accounts = await used_up(team, clock)
    accounts.refuse_early(dataclasses.replace(team, limits=Limits(requests_per_minute=5)), "url")
    hits_free = Team("h", "H", Limits(requests_per_minute=1), count_hits=False)
    accounts = await used_up(hits_free, clock, hit=False)
    accounts.refuse_early(hits_free, "image")  # an all-hits request of it would still pass
    budget = Team("b", "B", Limits(tokens_per_day=15))
    accounts = await used_up(budget, clock, hit=False)
    accounts.refuse_early(budget, "image")  # hits cost no tokens: they still pass


async def test_a_used_up_texts_per_minute_refuses_texts_early_but_not_images() -> None:
    clock = [1_800_000_000.0]
    team = Team("t", "T", Limits(images_per_minute=5, texts_per_minute=3))
    accounts = await used_up(team, clock, kind="text")
    with pytest.raises(QuotaExceeded) as refused:
        accounts.refuse_early(team, "text")
    assert refused.value.loc == ("limits", "texts_per_minute")
    assert refused.value.headers["X-RateLimit-Limit"] == "3"
    assert refused.value.headers["X-RateLimit-Remaining"] == "0"
    assert refused.value.retry_after == 60
    accounts.refuse_early(team, "image")  # images count toward a limit of their own
    accounts.refuse_early(team, "url")
    clock[0] += 60
    accounts.refuse_early(team, "text")


async def test_a_used_up_images_per_minute_refuses_images_and_urls_early_but_not_texts() -> None:
    clock = [1_800_000_000.0]
    team = Team("t", "T", Limits(images_per_minute=2, texts_per_minute=100))
    accounts = await used_up(team, clock, kind="url")
    images: tuple[Kind, ...] = ("image", "url")
    for kind in images:
        with pytest.raises(QuotaExceeded) as refused:
            accounts.refuse_early(team, kind)
        assert refused.value.loc == ("limits", "images_per_minute")
    accounts.refuse_early(team, "text")


async def test_a_used_up_requests_per_minute_refuses_every_kind_early() -> None:
    clock = [1_800_000_000.0]
    team = Team("t", "T", Limits(requests_per_minute=2))
    accounts = await used_up(team, clock, kind="text")
    every: tuple[Kind, ...] = ("image", "url", "text")
    for kind in every:
        with pytest.raises(QuotaExceeded):
            accounts.refuse_early(team, kind)


# ---- texts and images in usage and metrics ---------------------------------------------------


def team_items(team: str, kind: str, outcome: str) -> float:
    return metric_value("gateway_team_items_total", team=team, kind=kind, outcome=outcome)


async def test_a_text_requests_usage_lands_under_texts_and_an_images_under_images() -> None:
    ledger = MemoryLedger()
    estimator = TokenEstimator(1)
    accounts = Accounts(
        ledger, UsageBuffer(ledger), estimator, LEARN_WAIT, clock=lambda: 1_800_000_000.0
    )
    team = Team("usage-kinds", "T", Limits(texts_per_minute=100))  # texts decided in the store
    kinds: tuple[Kind, ...] = ("text", "image", "url")
    for kind in kinds:
        lookup, hit = one_input(True, kind)
        assert hit is not None
        await accounts.admit_answered(team, lookup, hit._replace(hits=2, usage_tokens=20))
    lookup, _ = one_input(False, "text")
    reservation = await accounts.reserve(team, lookup)
    assert reservation.request_id is not None  # decided in the store
    missed = Answer(b"{}", hits=1, misses=2, billed_tokens=14, usage_tokens=21)
    await accounts.settle(reservation, missed, Bill(14))
    await accounts.flush()
    [row] = await ledger.usage(team.id, [AT.day])
    assert (row["requests"], row["texts"], row["images"]) == (4, 5, 4)
    assert (row["hits"], row["misses"]) == (7, 2)
    assert (row["billed_tokens"], row["saved_tokens"]) == (14, 3 * 20 + 7)
    assert team_items(team.id, "text", "hit") == 3
    assert team_items(team.id, "text", "miss") == 2
    assert team_items(team.id, "image", "hit") == 4  # URLs counted with images, as in usage


async def test_texts_per_minute_refuses_text_requests_with_its_headers() -> None:
    ledger = MemoryLedger()
    clock = [1_800_000_000.0]
    accounts = Accounts(
        ledger, UsageBuffer(ledger), TokenEstimator(1), LEARN_WAIT, clock=lambda: clock[0]
    )
    team = Team("tpm", "T", Limits(texts_per_minute=3), count_hits=False)
    lookup, _ = one_input(False, "text")
    for _ in range(3):
        await accounts.settle(await accounts.reserve(team, lookup), None, Bill(0))
    with pytest.raises(QuotaExceeded) as refused:
        await accounts.reserve(team, lookup)
    assert refused.value.loc == ("limits", "texts_per_minute")
    assert refused.value.headers["X-RateLimit-Remaining"] == "0"
    hit_lookup, hit = one_input(True, "text")
    assert hit is not None
    await accounts.admit_answered(team, hit_lookup, hit)  # hits do not count for this team
    await accounts.flush()
    [row] = await ledger.usage(team.id, [AT.day])
    assert (row["upstream_errors"], row["rejected"], row["texts"]) == (3, 1, 4)
    assert (row["requests"], row["hits"], row["misses"]) == (4, 1, 3)  # failed ones too


# ---- what a refusal says -------------------------------------------------------------------


def priced_accounts() -> Accounts:
    """Accounts on a fresh ledger, an image known to cost 10 tokens."""
    ledger = MemoryLedger()
    estimator = TokenEstimator(1)
    estimator.observe(MODEL, 10, 1)
    return Accounts(
        ledger, UsageBuffer(ledger), estimator, LEARN_WAIT, clock=lambda: 1_800_000_000.0
    )


async def refusal(accounts: Accounts, team: Team) -> QuotaExceeded:
    """The refusal of a one-image miss of ``team``."""
    lookup, _ = one_image(hit=False)
    with pytest.raises(QuotaExceeded) as refused:
        await accounts.reserve(team, lookup)
    return refused.value


BUDGETS = [("tokens_per_day", "today"), ("tokens_per_month", "this month")]


@pytest.mark.parametrize(("budget", "period"), BUDGETS)
async def test_a_budget_refusal_says_the_expected_cost_what_remains_and_the_limit(
    budget: str, period: str
) -> None:
    """X-RateLimit-Remaining says 5 tokens remain; the message says why 5 are not enough."""
    accounts = priced_accounts()
    team = Team("b", "B", Limits(**{budget: 15}))
    lookup, _ = one_image(hit=False)
    await accounts.settle(await accounts.reserve(team, lookup), None, Bill(10))
    refused = await refusal(accounts, team)
    assert (refused.headers["X-RateLimit-Limit"], refused.headers["X-RateLimit-Remaining"]) == (
        "15", "5")  # fmt: skip
    assert refused.msg == (f"team 'b': this request's expected cost, 10 tokens, is more than "
                           f"the 5 that remain {period} of its {budget} limit (15)")  # fmt: skip
    small = Team("s", "S", Limits(**{budget: 5}))  # its first request can never pass
    assert (await refusal(accounts, small)).msg == (
        f"team 's': this request's expected cost, 10 tokens, is more than the 5 that remain "
        f"{period} of its {budget} limit (5); that is more than the whole limit"
    )


async def test_a_budget_held_by_requests_under_way_is_said_to_be_used_up_and_how() -> None:
    accounts = priced_accounts()
    team = Team("b", "B", Limits(tokens_per_day=20))
    lookup, _ = one_image(hit=False)
    for _ in range(2):
        await accounts.reserve(team, lookup)  # reserved, not yet settled
    refused = await refusal(accounts, team)
    assert refused.headers["X-RateLimit-Remaining"] == "0"
    assert refused.msg == ("team 'b' has used all 20 tokens of its tokens_per_day limit today "
                           "(billed, or reserved by requests under way)")  # fmt: skip


async def test_a_per_minute_refusal_says_what_the_request_asks_and_what_remains() -> None:
    accounts = priced_accounts()
    team = Team("t", "T", Limits(texts_per_minute=5))
    request = ParsedRequest.of(TEXT_MODEL, "text", [b"a", b"b", b"c"])
    keys = ["a", "b", "c"]
    lookup = Lookup(request, keys, dict(zip(keys, request.items, strict=True)), {}, keys, {})
    await accounts.settle(await accounts.reserve(team, lookup), None, Bill(0))
    with pytest.raises(QuotaExceeded) as refused:
        await accounts.reserve(team, lookup)
    assert refused.value.headers["X-RateLimit-Remaining"] == "2"
    assert refused.value.msg == (
        "team 't': this request's 3 texts are more than the 2 that remain this minute of its "
        "texts_per_minute limit (5)"
    )


# ---- learning what an item costs -----------------------------------------------------------


class StallingLedger(MemoryLedger):
    """Its first admit never answers, as a store that hangs until the request is cancelled."""

    def __init__(self) -> None:
        super().__init__()
        self.stalled = False

    async def admit(
        self, team: Team, want: quota.Demand, at: quota.Window, usage: Mapping[str, int],
        request_id: str, tag: str = tags.UNTAGGED,
    ) -> quota.Decision:  # fmt: skip
        if not self.stalled:
            self.stalled = True
            await asyncio.Event().wait()
        return await super().admit(team, want, at, usage, request_id, tag)


async def test_a_learner_cancelled_while_admitted_hands_its_turn_to_the_next_request() -> None:
    ledger = StallingLedger()
    accounts = Accounts(
        ledger, UsageBuffer(ledger), TokenEstimator(1), LEARN_WAIT
    )  # no item cost known
    budget = Team("b", "B", Limits(tokens_per_day=1000))
    lookup, _ = one_image(hit=False)
    first = asyncio.create_task(accounts.reserve(budget, lookup))
    await asyncio.sleep(0.01)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    async with asyncio.timeout(1):  # not waiting for a lesson that will never come
        second = await accounts.reserve(budget, lookup)
    assert second.learner


async def test_waiting_for_another_request_to_learn_a_cost_is_bounded() -> None:
    ledger = MemoryLedger()
    accounts = Accounts(ledger, UsageBuffer(ledger), TokenEstimator(1), learn_wait_seconds=0.01)
    budget = Team("b", "B", Limits(tokens_per_day=1000))
    lookup, _ = one_image(hit=False)
    learner = await accounts.reserve(budget, lookup)  # admitted, never answered (yet)
    assert learner.learner
    with pytest.raises(Overloaded) as refused:
        await accounts.reserve(budget, lookup)
    assert (refused.value.status, refused.value.retry_after) == (503, 1)
    assert "learning" in refused.value.msg
    await accounts.settle(learner, None, Bill(0))  # the learner ends: the next request learns
    assert (await accounts.reserve(budget, lookup)).learner


async def test_the_usage_buffer_keeps_tags_apart_and_past_so_many_under_other(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(accounts_module, "MOST_OPEN", 3)
    ledger = MemoryLedger()
    buffer = UsageBuffer(ledger)
    at = quota.window(1_800_000_000.0)
    for number in range(10):
        buffer.add("t", at, 2, {"requests": 1}, f"job-{number % 5}")
    await buffer.flush()
    [by_tag] = await ledger.tag_usage("t", [at.day])
    assert {tag: counts["billed_tokens"] for tag, counts in by_tag.items()} == {
        "job-0": 4, "job-1": 4, "job-2": 4, tags.OTHER: 8
    }  # fmt: skip
    [day] = await ledger.usage("t", [at.day])
    assert (day["requests"], day["billed_tokens"]) == (10, 20)
