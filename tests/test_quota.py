"""Quota arithmetic: pure functions over numbers, with the clock passed in."""

from __future__ import annotations

import datetime

import pytest

from gateway import quota
from gateway.quota import Decision, Demand, TokenEstimator
from gateway.teams import Limits, Team


def at(text: str) -> float:
    return datetime.datetime.fromisoformat(text).replace(tzinfo=datetime.UTC).timestamp()


def test_window_at_the_last_half_minute_of_a_year() -> None:
    window = quota.window(at("2026-12-31T23:59:30"))
    assert (window.day, window.month) == ("2026-12-31", "2026-12")
    assert window.minute == int(at("2026-12-31T23:59:00") // 60)
    assert window.minute_reset == pytest.approx(30)
    assert window.day_reset == pytest.approx(30)
    assert window.month_reset == pytest.approx(30)


def test_window_in_the_middle_of_february() -> None:
    window = quota.window(at("2027-02-10T12:00:00") + 0.25)
    assert (window.day, window.month) == ("2027-02-10", "2027-02")
    assert window.minute_reset == pytest.approx(59.75)
    assert window.day_reset == pytest.approx(12 * 3600 - 0.25)
    assert window.month_reset == pytest.approx((18 * 86400) + 12 * 3600 - 0.25)


def team(count_hits: bool = True, **limits: int | None) -> Team:
    return Team("t", "T", Limits(**limits), count_hits)


def test_demand_counts_hits_only_when_the_team_says_so() -> None:
    assert quota.demand(team(), "image", 10, 7, 10) == Demand(1, 10, 0, 10)
    assert quota.demand(team(count_hits=False), "image", 10, 7, 10) == Demand(1, 3, 0, 10)
    assert quota.demand(team(count_hits=False), "image", 4, 4, 0) == Demand(0, 0, 0, 0)


def test_demand_counts_images_and_urls_as_images_and_texts_as_texts() -> None:
    assert quota.demand(team(), "url", 4, 1, 15) == Demand(1, 4, 0, 15)
    assert quota.demand(team(), "text", 10, 7, 10) == Demand(1, 0, 10, 10)
    assert quota.demand(team(count_hits=False), "text", 10, 7, 10) == Demand(1, 0, 3, 10)
    assert quota.demand(team(count_hits=False), "text", 4, 4, 0) == Demand(0, 0, 0, 0)
    assert quota.demand(team(), "text", 0, 0, 0) == Demand(0, 0, 0, 0)  # texts: []


def test_each_kind_counts_toward_requests_and_its_own_per_minute_limit() -> None:
    assert quota.minute_limits("image") == ("requests_per_minute", "images_per_minute")
    assert quota.minute_limits("url") == ("requests_per_minute", "images_per_minute")
    assert quota.minute_limits("text") == ("requests_per_minute", "texts_per_minute")


@pytest.mark.parametrize(
    ("limits", "want", "counts", "budgets", "decision"),
    [
        ({}, Demand(1, 5, 0, 50), (10**6, 10**6, 0), (10**9, 10**9), Decision(True)),
        ({"requests_per_minute": 3}, Demand(1, 1, 0, 0), (2, 0, 0), (0, 0), Decision(True)),
        ({"requests_per_minute": 3}, Demand(1, 1, 0, 0), (3, 0, 0), (0, 0),
         Decision(False, "requests_per_minute", 3, 0, 1)),
        ({"requests_per_minute": 3}, Demand(0, 0, 0, 0), (3, 0, 0), (0, 0), Decision(True)),
        ({"images_per_minute": 5}, Demand(1, 3, 0, 0), (0, 3, 0), (0, 0),
         Decision(False, "images_per_minute", 5, 2, 3)),
        ({"texts_per_minute": 5}, Demand(1, 0, 3, 0), (0, 3, 3), (0, 0),
         Decision(False, "texts_per_minute", 5, 2, 3)),
        ({"texts_per_minute": 5}, Demand(1, 0, 2, 0), (0, 3, 3), (0, 0), Decision(True)),
        ({"texts_per_minute": 5}, Demand(1, 9, 0, 0), (0, 3, 5), (0, 0), Decision(True)),
        ({"images_per_minute": 5}, Demand(1, 0, 9, 0), (0, 5, 0), (0, 0), Decision(True)),
        ({"images_per_minute": 5, "texts_per_minute": 5}, Demand(1, 0, 1, 0), (0, 9, 5),
         (0, 0), Decision(False, "texts_per_minute", 5, 0, 1)),
        ({"tokens_per_day": 100}, Demand(1, 1, 0, 10), (0, 0, 0), (90, 0), Decision(True)),
        ({"tokens_per_day": 100}, Demand(1, 1, 0, 10), (0, 0, 0), (91, 0),
         Decision(False, "tokens_per_day", 100, 9, 10)),
        ({"tokens_per_day": 100}, Demand(1, 1, 0, 0), (0, 0, 0), (500, 0), Decision(True)),
        ({"tokens_per_month": 0}, Demand(1, 1, 0, 1), (0, 0, 0), (0, 0),
         Decision(False, "tokens_per_month", 0, 0, 1)),
    ],
)  # fmt: skip
def test_decide(
    limits: dict[str, int], want: Demand, counts: tuple[int, int, int], budgets: tuple[int, int],
    decision: Decision,
) -> None:  # fmt: skip
    assert quota.decide(team(**limits), want, counts, budgets) == decision


def test_a_request_reserves_its_estimate_alone_and_its_most_beside_others() -> None:
    """Only one request at a time runs on an estimate: while others of the team hold tokens,
    a request reserves the most it can cost."""
    want = Demand(1, 0, 1, 10, 40)
    assert want.tokens(0) == 10
    assert want.tokens(1) == 40
    assert Demand(1, 1, 0, 10).tokens(500) == 10  # an image: its cost is known
    limits = team(tokens_per_day=100)
    assert quota.decide(limits, want, (0, 0, 0), (80, 80), held=0) == Decision(True)
    assert quota.decide(limits, want, (0, 0, 0), (80, 80), held=5) == Decision(
        False, "tokens_per_day", 100, 20, 40
    )


def test_applies_only_when_a_limit_bears_on_the_demand() -> None:
    assert not quota.applies(team(), Demand(1, 5, 0, 50))
    assert not quota.applies(team(tokens_per_day=10), Demand(1, 5, 0, 0))
    assert quota.applies(team(tokens_per_day=10), Demand(1, 5, 0, 1))
    assert quota.applies(team(requests_per_minute=10), Demand(1, 5, 0, 0))
    assert not quota.applies(team(requests_per_minute=10), Demand(0, 0, 0, 0))
    assert quota.applies(team(texts_per_minute=10), Demand(1, 0, 2, 0))
    assert not quota.applies(team(texts_per_minute=10), Demand(1, 2, 0, 0))
    assert not quota.applies(team(images_per_minute=10), Demand(1, 0, 2, 0))


def test_a_used_up_per_minute_limit_refuses_every_request_of_its_kind() -> None:
    used_up = Decision(False, "texts_per_minute", 5, 0)
    assert quota.refuses_every_request(team(texts_per_minute=5), used_up)
    assert not quota.refuses_every_request(team(texts_per_minute=6), used_up)  # raised since
    assert not quota.refuses_every_request(team(False, texts_per_minute=5), used_up)
    assert not quota.refuses_every_request(
        team(texts_per_minute=5), Decision(False, "texts_per_minute", 5, 2)
    )


def test_estimator_keeps_the_highest_recent_cost_per_model() -> None:
    estimator = TokenEstimator(initial=7, window=3)
    assert estimator.per_item("m") == 7
    estimator.observe("m", 100, 10)
    estimator.observe("m", 31, 3)  # 10.33 → 11 each
    assert estimator.per_item("m") == 11
    for _ in range(3):
        estimator.observe("m", 5, 1)
    assert estimator.per_item("m") == 5
    assert estimator.per_item("other") == 7


def test_a_texts_expected_cost_is_its_estimate_at_the_recent_rate_within_its_bound() -> None:
    estimator = TokenEstimator(initial=7)
    assert estimator.text_cost("m", 5, 18) == 18  # nothing seen yet: the most it can cost
    estimator.observe("m", 40, 10)  # 4 tokens a unit of estimate
    assert estimator.text_cost("m", 5, 100) == 20
    assert estimator.text_cost("m", 5, 12) == 12  # never past what the text can cost
    estimator.observe("m", 9, 10)
    assert estimator.text_cost("m", 5, 100) == 20  # the most recent rate, not the last
