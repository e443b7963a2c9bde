"""The ledger contract, on the embedded store (in memory and on disk) and on a real Redis."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import pytest
import redis

from gateway import quota, tags
from gateway.quota import Demand
from gateway.store import RedisBackend, redis_keys
from gateway.store.base import Ledger
from gateway.store.redis_ledger import DAY_TTL, MINUTE_TTL, RedisLedger
from gateway.teams import KeyRecord, Limits, Team
from tests.conftest import EVERY_STORE, chosen_store


@pytest.fixture(params=EVERY_STORE)
def store_url(request: pytest.FixtureRequest) -> str | None:
    return chosen_store(request)


NOW = 1_800_000_000.0
AT = quota.window(NOW)


def team(**limits: int | None) -> Team:
    return Team("t1", "Team one", Limits(**limits), True, NOW)


async def test_a_deleted_team_is_remembered_among_the_former(ledger: Ledger) -> None:
    assert await ledger.former_teams() == []
    assert await ledger.create_team(team())
    renamed = dataclasses.replace(team(), name="Renamed")
    assert await ledger.update_team(renamed)
    assert await ledger.delete_team("t1")
    assert not await ledger.delete_team("t1")
    assert await ledger.former_teams() == [renamed]  # as it last was
    assert await ledger.list_teams() == []


async def test_teams(ledger: Ledger) -> None:
    assert await ledger.create_team(team())
    assert not await ledger.create_team(team())
    assert await ledger.get_team("t1") == team()
    changed = dataclasses.replace(
        team(), name="Renamed", limits=Limits(texts_per_minute=7, tokens_per_day=3)
    )
    await ledger.update_team(changed)
    assert await ledger.list_teams() == [changed]
    assert await ledger.delete_team("t1")
    assert not await ledger.delete_team("t1")
    assert await ledger.get_team("t1") is None
    assert await ledger.list_teams() == []


async def test_a_team_stored_before_texts_per_minute_existed_has_no_texts_limit(
    redis_client: redis.Redis, redis_url: str
) -> None:
    limits = {"requests_per_minute": 5, "images_per_minute": 9, "tokens_per_day": None,
              "tokens_per_month": None}  # fmt: skip
    stored = {"id": "old", "name": "Old", "limits": limits, "count_hits": True,
              "private_cache": False, "created": NOW}  # fmt: skip
    redis_client.set(redis_keys.team_record("old"), json.dumps(stored))
    backend = RedisBackend(redis_url)
    found = await RedisLedger(backend).get_team("old")
    await backend.close()
    assert found is not None
    assert found.limits == Limits(requests_per_minute=5, images_per_minute=9)
    assert found.limits.texts_per_minute is None


async def test_keys_and_last_use(ledger: Ledger) -> None:
    first = KeyRecord("key_a", "t1", "a" * 64, "nk-aaaa", NOW)
    second = KeyRecord("key_b", "t1", "b" * 64, "nk-bbbb", NOW + 1)
    await ledger.put_key(second)
    await ledger.put_key(first)
    assert await ledger.get_key("a" * 64) == first
    assert await ledger.get_key("c" * 64) is None
    await ledger.touch_key(first, NOW + 5)
    listed = await ledger.list_keys("t1")
    assert [key.id for key in listed] == ["key_a", "key_b"]
    assert (listed[0].last_used, listed[1].last_used) == (NOW + 5, None)
    assert await ledger.list_keys("t2") == []


async def test_admit_reserve_settle_and_usage(ledger: Ledger) -> None:
    capped = team(tokens_per_day=100)
    assert (await ledger.admit(capped, Demand(1, 2, 0, 60), AT, {}, "r1")).allowed
    refused = await ledger.admit(capped, Demand(1, 1, 0, 50), AT, {}, "r2")
    assert (refused.allowed, refused.limit, refused.remaining) == (False, "tokens_per_day", 40)
    usage = {"requests": 1, "images": 2, "misses": 2}
    await ledger.settle("t1", AT.day, AT.month, "r1", 45, usage)
    await ledger.settle("t1", AT.day, AT.month, "r1", 45, usage)  # a retry: no effect
    assert (await ledger.admit(capped, Demand(1, 1, 0, 50), AT, {}, "r3")).allowed  # 45 + 50
    hits = {"requests": 1, "images": 3, "hits": 3, "saved_tokens": 30}
    assert (await ledger.admit(capped, Demand(1, 3, 0, 0), AT, hits, "r4")).allowed
    texts = {"requests": 1, "texts": 4, "hits": 4, "saved_tokens": 8}
    assert (await ledger.admit(capped, Demand(1, 0, 4, 0), AT, texts, "r5")).allowed
    [row] = await ledger.usage("t1", [AT.day])
    assert row == {"requests": 3, "images": 5, "texts": 4, "hits": 7, "misses": 2,
                   "billed_tokens": 45, "saved_tokens": 38, "upstream_errors": 0,
                   "rejected": 1}  # fmt: skip
    assert await ledger.usage("t1", ["2000-01-01"]) == [dict.fromkeys(quota.USAGE_FIELDS, 0)]


async def test_minute_counters_start_again_each_minute(ledger: Ledger) -> None:
    limited = team(requests_per_minute=1)
    assert (await ledger.admit(limited, Demand(1, 1, 0, 0), AT, {}, "a")).allowed
    assert not (await ledger.admit(limited, Demand(1, 1, 0, 0), AT, {}, "b")).allowed
    next_minute = quota.window(NOW + 60)
    assert (await ledger.admit(limited, Demand(1, 1, 0, 0), next_minute, {}, "c")).allowed


async def test_texts_per_minute_is_counted_apart_from_images_per_minute(ledger: Ledger) -> None:
    limited = team(images_per_minute=5, texts_per_minute=3)
    assert (await ledger.admit(limited, Demand(1, 0, 2, 0), AT, {}, "t1")).allowed
    refused = await ledger.admit(limited, Demand(1, 0, 2, 0), AT, {}, "t2")
    assert refused == quota.Decision(False, "texts_per_minute", 3, 1, 2)
    assert (await ledger.admit(limited, Demand(1, 5, 0, 0), AT, {}, "i1")).allowed  # images
    refused = await ledger.admit(limited, Demand(1, 1, 0, 0), AT, {}, "i2")
    assert refused == quota.Decision(False, "images_per_minute", 5, 0, 1)
    assert (await ledger.admit(limited, Demand(1, 0, 1, 0), AT, {}, "t3")).allowed  # the last
    assert not (await ledger.admit(limited, Demand(1, 0, 1, 0), AT, {}, "t4")).allowed
    next_minute = quota.window(NOW + 60)
    assert (await ledger.admit(limited, Demand(1, 0, 3, 0), next_minute, {}, "t5")).allowed
    [row] = await ledger.usage("t1", [AT.day])
    assert row["rejected"] == 3


async def test_concurrent_text_admits_never_pass_texts_per_minute(ledger: Ledger) -> None:
    limited = team(texts_per_minute=100, requests_per_minute=1000)
    decisions = await asyncio.gather(
        *(ledger.admit(limited, Demand(1, 0, 3, 0), AT, {}, f"r{i}") for i in range(300))
    )
    assert sum(decision.allowed for decision in decisions) == 100 // 3
    refused = [decision for decision in decisions if not decision.allowed]
    assert {(d.limit, d.remaining) for d in refused} == {("texts_per_minute", 1)}


async def test_concurrent_admits_never_pass_the_budget(ledger: Ledger) -> None:
    capped = team(tokens_per_day=1000, tokens_per_month=1000)
    decisions = await asyncio.gather(
        *(ledger.admit(capped, Demand(1, 1, 0, 7), AT, {}, f"r{i}") for i in range(300))
    )
    assert sum(decision.allowed for decision in decisions) == 1000 // 7


@pytest.mark.parametrize("together", [False, True], ids=["one-by-one", "together"])
async def test_only_one_request_at_a_time_reserves_its_estimate(
    ledger: Ledger, together: bool
) -> None:
    """An estimate can fall short (texts of rare words): while the team's other requests hold
    tokens, a request reserves the most it can cost, so the budget is passed by at most one
    request's shortfall, however many run at once. The same decisions on every store, made
    one by one or in one script call."""
    capped = team(tokens_per_day=100, tokens_per_month=1000)
    want = Demand(1, 0, 1, 10, 40)  # expected 10 tokens, 40 at most
    ids = [f"e{i}" for i in range(4)]
    if together:
        decisions = await asyncio.gather(*(ledger.admit(capped, want, AT, {}, i) for i in ids))
    else:
        decisions = [await ledger.admit(capped, want, AT, {}, i) for i in ids]
    assert [d.allowed for d in decisions] == [True, True, True, False]  # 10, 40, 40: 90
    assert decisions[3] == quota.Decision(False, "tokens_per_day", 100, 10, 40)
    for request_id in ids[:3]:
        await ledger.settle("t1", AT.day, AT.month, request_id, 12, {})
    [row] = await ledger.usage("t1", [AT.day])
    assert (row["billed_tokens"], row["rejected"]) == (36, 1)
    alone = await ledger.admit(capped, want, AT, {}, "f")  # none held now: its estimate again
    assert alone.allowed
    refused = await ledger.admit(capped, Demand(1, 0, 1, 60, 60), AT, {}, "g")  # 36 + 10 + 60
    assert (refused.allowed, refused.remaining, refused.asked) == (False, 54, 60)


async def test_admits_made_together_are_decided_in_order_each_with_its_own_usage(
    ledger: Ledger,
) -> None:
    """On Redis these share script calls; each is decided as if made alone, in order."""
    limited = team(requests_per_minute=3, tokens_per_day=100)
    hits = {"requests": 1, "images": 1, "hits": 1, "saved_tokens": 10}
    wants = [(Demand(1, 1, 0, 0), hits), (Demand(1, 1, 0, 40), {}), (Demand(1, 1, 0, 0), hits),
             (Demand(1, 1, 0, 0), hits), (Demand(1, 1, 0, 70), {})]  # fmt: skip
    decisions = await asyncio.gather(
        *(ledger.admit(limited, want, AT, usage, f"b{i}") for i, (want, usage) in enumerate(wants))
    )
    assert [d.allowed for d in decisions] == [True, True, True, False, False]
    assert (decisions[3].limit, decisions[3].remaining) == ("requests_per_minute", 0)
    await ledger.settle("t1", AT.day, AT.month, "b0", 0, hits)  # recorded at admit: no effect
    await ledger.settle("t1", AT.day, AT.month, "b1", 35, {"requests": 1, "misses": 1})
    [row] = await ledger.usage("t1", [AT.day])
    assert (row["requests"], row["hits"], row["saved_tokens"], row["rejected"]) == (3, 2, 20, 2)
    assert row["billed_tokens"] == 35
    fresh = quota.window(NOW + 60)  # the reservation of b1 was released: 65 tokens are left
    assert (await ledger.admit(limited, Demand(1, 1, 0, 65), fresh, {}, "c")).allowed
    assert not (await ledger.admit(limited, Demand(1, 1, 0, 1), fresh, {}, "d")).allowed


async def test_image_and_text_admits_made_together_each_count_toward_their_own_limit(
    ledger: Ledger,
) -> None:
    limited = team(images_per_minute=2, texts_per_minute=2)
    image_hit = {"requests": 1, "images": 1, "hits": 1}
    text_hits = {"requests": 1, "texts": 2, "hits": 2}
    wants = [(Demand(1, 1, 0, 0), image_hit), (Demand(1, 0, 2, 0), text_hits),
             (Demand(1, 0, 1, 0), {}), (Demand(1, 1, 0, 0), image_hit),
             (Demand(1, 1, 0, 0), image_hit)]  # fmt: skip
    decisions = await asyncio.gather(
        *(ledger.admit(limited, want, AT, usage, f"m{i}") for i, (want, usage) in enumerate(wants))
    )
    assert [d.allowed for d in decisions] == [True, True, False, True, False]
    assert (decisions[2].limit, decisions[4].limit) == ("texts_per_minute", "images_per_minute")
    [row] = await ledger.usage("t1", [AT.day])
    assert (row["requests"], row["images"], row["texts"], row["hits"]) == (3, 2, 2, 4)
    assert row["rejected"] == 2


async def test_settles_made_together_each_apply_once(ledger: Ledger) -> None:
    """On Redis these share script calls; a settle repeated in the same batch is a no-op."""
    capped = team(tokens_per_day=100)
    for i in range(3):
        assert (await ledger.admit(capped, Demand(1, 1, 0, 30), AT, {}, f"s{i}")).allowed
    assert not (await ledger.admit(capped, Demand(1, 1, 0, 30), AT, {}, "over")).allowed
    usage = {"requests": 1, "misses": 1}
    await asyncio.gather(
        *(ledger.settle("t1", AT.day, AT.month, f"s{i}", 20, usage) for i in (0, 1, 2, 1, 0))
    )
    [row] = await ledger.usage("t1", [AT.day])
    assert (row["requests"], row["misses"], row["billed_tokens"]) == (3, 3, 60)
    assert (await ledger.admit(capped, Demand(1, 1, 0, 40), AT, {}, "fits")).allowed  # 60 + 40
    assert not (await ledger.admit(capped, Demand(1, 1, 0, 1), AT, {}, "full")).allowed


async def test_redis_usage_is_kept_at_least_400_days(
    redis_client: redis.Redis, redis_url: str
) -> None:
    backend = RedisBackend(redis_url)
    ledger = RedisLedger(backend)
    await ledger.settle("t1", AT.day, AT.month, "r", 5, {"requests": 1})
    await backend.close()
    ttl = redis_client.ttl(redis_keys.usage_day("t1", AT.day))
    assert 400 * 86400 < ttl <= DAY_TTL


async def test_redis_counts_texts_per_minute_under_the_teams_hash_tag(
    redis_client: redis.Redis, redis_url: str
) -> None:
    backend = RedisBackend(redis_url)
    ledger = RedisLedger(backend)
    limited = team(texts_per_minute=10)
    assert (await ledger.admit(limited, Demand(1, 2, 0, 0), AT, {}, "images")).allowed
    assert (await ledger.admit(limited, Demand(1, 0, 7, 0), AT, {}, "texts")).allowed
    await backend.close()
    counter = redis_keys.texts_in_minute("t1", AT.minute)
    assert counter == f"ng:v1:{{t:t1}}:textpm:{AT.minute}"
    assert int(redis_client.get(counter) or 0) == 7
    assert int(redis_client.get(redis_keys.images_in_minute("t1", AT.minute)) or 0) == 2
    assert 0 < redis_client.ttl(counter) <= MINUTE_TTL


async def test_settling_a_request_that_was_never_admitted_releases_nothing(ledger: Ledger) -> None:
    capped = team(tokens_per_day=10)
    assert (await ledger.admit(capped, Demand(1, 1, 0, 10), AT, {}, "held")).allowed
    await ledger.settle("t1", AT.day, AT.month, "never-admitted", 0, {"upstream_errors": 1})
    assert not (await ledger.admit(capped, Demand(1, 1, 0, 1), AT, {}, "more")).allowed
    await ledger.settle("t1", AT.day, AT.month, "held", 0, {})
    assert (await ledger.admit(capped, Demand(1, 1, 0, 10), AT, {}, "again")).allowed


async def test_a_key_only_ever_narrows(ledger: Ledger) -> None:
    record = KeyRecord("key_a", "t1", "a" * 64, "nk-aaaa", NOW)
    await ledger.put_key(record)
    await ledger.narrow_key(record, expires=NOW + 100)
    await ledger.narrow_key(record, expires=NOW + 500)  # a later expiry does not extend it
    await ledger.narrow_key(record, revoked=NOW + 1)
    await ledger.narrow_key(record, revoked=NOW + 9)  # revoked once, at the first time
    await ledger.narrow_key(record, expires=NOW + 3600)  # a rotation after the revocation
    found = await ledger.get_key("a" * 64)
    assert found is not None
    assert (found.revoked, found.expires) == (NOW + 1, NOW + 100)
    [listed] = await ledger.list_keys("t1")
    assert (listed.revoked, listed.expires) == (NOW + 1, NOW + 100)


async def test_item_cost_is_shared(ledger: Ledger) -> None:
    assert await ledger.item_cost("m") is None
    await ledger.record_item_cost("m", 12)
    assert await ledger.item_cost("m") == 12


def summed(by_tag: dict[str, dict[str, int]]) -> dict[str, int]:
    return {field: sum(c[field] for c in by_tag.values()) for field in quota.USAGE_FIELDS}


async def test_usage_is_kept_by_tag_beside_the_day_in_the_same_writes(ledger: Ledger) -> None:
    capped = team(tokens_per_day=100)
    hits = {"requests": 1, "images": 3, "hits": 3, "saved_tokens": 30}
    assert (await ledger.admit(capped, Demand(1, 3, 0, 0), AT, hits, "h1", "nightly")).allowed
    assert (await ledger.admit(capped, Demand(1, 2, 0, 60), AT, {}, "r1", "nightly")).allowed
    assert not (await ledger.admit(capped, Demand(1, 1, 0, 50), AT, {}, "r2", "adhoc")).allowed
    misses = {"requests": 1, "images": 2, "misses": 2}
    await ledger.settle("t1", AT.day, AT.month, "r1", 45, misses, "nightly")
    await ledger.settle("t1", AT.day, AT.month, "r1", 45, misses, "nightly")  # retried: no effect
    texts = {"requests": 1, "texts": 2, "hits": 2, "saved_tokens": 4}
    assert (await ledger.admit(capped, Demand(1, 0, 2, 0), AT, texts, "u1")).allowed  # untagged
    await ledger.settle("t1", AT.day, AT.month, "released", 0, {}, "nothing")  # adds nothing
    [by_tag] = await ledger.tag_usage("t1", [AT.day])
    zero = dict.fromkeys(quota.USAGE_FIELDS, 0)
    assert by_tag == {
        "adhoc": {**zero, "rejected": 1},
        "nightly": {**zero, "requests": 2, "images": 5, "hits": 3, "misses": 2,
                    "billed_tokens": 45, "saved_tokens": 30},
        "untagged": {**zero, "requests": 1, "texts": 2, "hits": 2, "saved_tokens": 4},
    }  # fmt: skip
    [day] = await ledger.usage("t1", [AT.day])
    assert summed(by_tag) == day
    assert await ledger.tag_usage("t1", ["2000-01-01"]) == [{}]
    assert await ledger.tag_usage("t2", [AT.day]) == [{}]


async def test_a_team_has_at_most_the_bound_of_tags_a_day_the_rest_count_as_other(
    ledger: Ledger,
) -> None:
    settles = [
        ledger.settle("t1", AT.day, AT.month, f"s{i}", 1, {"requests": 1}, f"job-{i}")
        for i in range(tags.DEFAULT_TAGS_PER_DAY + 50)
    ]
    await asyncio.gather(*settles)  # batched into few script calls on Redis
    await ledger.settle("t1", AT.day, AT.month, "again", 1, {"requests": 1}, "job-150-more")
    await ledger.settle("t1", AT.day, AT.month, "known", 1, {"requests": 1}, "job-0")
    await ledger.settle("t1", AT.day, AT.month, "none", 1, {"requests": 1})
    [by_tag] = await ledger.tag_usage("t1", [AT.day])
    named = set(by_tag) - {tags.OTHER, tags.UNTAGGED}
    assert len(named) == tags.DEFAULT_TAGS_PER_DAY
    assert by_tag["job-0"]["requests"] == 2  # a tag kept stays its own after the bound
    assert by_tag[tags.OTHER]["requests"] == 51
    assert by_tag[tags.UNTAGGED]["requests"] == 1
    [day] = await ledger.usage("t1", [AT.day])
    assert summed(by_tag) == day
    next_day = quota.window(NOW + 86400)
    await ledger.settle("t1", next_day.day, next_day.month, "next", 1, {"requests": 1}, "late")
    assert await ledger.tag_usage("t1", [next_day.day]) == [
        {"late": {**dict.fromkeys(quota.USAGE_FIELDS, 0), "requests": 1, "billed_tokens": 1}}
    ]


async def test_redis_holds_a_bounded_tag_hash_whatever_the_tags_sent(
    redis_client: redis.Redis, redis_url: str
) -> None:
    backend = RedisBackend(redis_url)
    ledger = RedisLedger(backend, tags_per_day=5)
    usage = {"requests": 1, "images": 1, "misses": 1}
    await asyncio.gather(*(
        ledger.settle("t1", AT.day, AT.month, f"s{i}", 2, usage, f"tag-{i}") for i in range(500)
    ))  # fmt: skip
    [by_tag] = await ledger.tag_usage("t1", [AT.day])
    await backend.close()
    assert redis_client.scard(redis_keys.day_tags("t1", AT.day)) == 5
    fields = redis_client.hkeys(redis_keys.usage_day_by_tag("t1", AT.day))
    held = {field.decode().partition("|")[0] for field in fields}
    assert len(held) == 6  # five tags and other
    assert tags.OTHER in held
    assert len(fields) == 6 * 4  # requests, images, misses, billed_tokens
    assert by_tag[tags.OTHER]["billed_tokens"] == 2 * 495
    ttl = redis_client.ttl(redis_keys.usage_day_by_tag("t1", AT.day))
    assert 0 < ttl <= DAY_TTL
