"""Redis key names: data already in Redis is read under these exact names, so none may change."""

from __future__ import annotations

from redis.crc import key_slot

from gateway.store import redis_keys


def test_team_keys_keep_their_names() -> None:
    assert redis_keys.team_record("research") == "ng:v1:{t:research}:team"
    assert redis_keys.team_keys("research") == "ng:v1:{t:research}:keys"
    assert redis_keys.keys_last_used("research") == "ng:v1:{t:research}:last_used"
    assert (
        redis_keys.requests_in_minute("research", 29_000_000) == "ng:v1:{t:research}:rpm:29000000"
    )
    assert redis_keys.images_in_minute("research", 7) == "ng:v1:{t:research}:ipm:7"
    assert redis_keys.texts_in_minute("research", 7) == "ng:v1:{t:research}:textpm:7"
    assert redis_keys.calls_in_minute("research", 7) == "ng:v1:{t:research}:callpm:7"
    assert redis_keys.usage_day("research", "2026-03-01") == "ng:v1:{t:research}:day:2026-03-01"
    assert redis_keys.usage_month("research", "2026-03") == "ng:v1:{t:research}:month:2026-03"
    assert redis_keys.reservation("research", "r1") == "ng:v1:{t:research}:reserved:r1"
    assert redis_keys.settled("research", "r1") == "ng:v1:{t:research}:settled:r1"
    assert redis_keys.usage_reads("research") == "ng:v1:{t:research}:usage_reads"
    assert redis_keys.leases("research") == "ng:v1:{t:research}:leases"
    assert redis_keys.usage_day_by_tag("research", "2026-03-01") == (
        "ng:v1:{t:research}:tagday:2026-03-01"
    )
    assert redis_keys.day_tags("research", "2026-03-01") == "ng:v1:{t:research}:tags:2026-03-01"


def test_global_keys_keep_their_names() -> None:
    assert redis_keys.TEAMS == "ng:v1:teams"
    assert redis_keys.FORMER_TEAMS == "ng:v1:former_teams"
    assert redis_keys.key_record("ab12") == "ng:v1:key:ab12"
    assert redis_keys.key_state("ab12") == "ng:v1:keystate:ab12"
    assert redis_keys.secret("console-sessions") == "ng:v1:secret:console-sessions"
    assert redis_keys.item_cost("nomic-embed-vision-v1.5") == "ng:v1:cost:nomic-embed-vision-v1.5"
    assert redis_keys.fetch_mark("ng:v2:emb:00ff") == "ng:v2:fetching:{ng:v2:emb:00ff}"


def test_upstream_keys_keep_their_names() -> None:
    assert (redis_keys.PACE, redis_keys.HOLD, redis_keys.SLOTS) == (
        "ng:v1:{upstream}:tat", "ng:v1:{upstream}:hold", "ng:v1:{upstream}:slots"
    )  # fmt: skip


def test_keys_one_script_touches_share_a_cluster_slot() -> None:
    team = [
        redis_keys.team_record("a"), redis_keys.requests_in_minute("a", 1),
        redis_keys.usage_day("a", "2026-03-01"), redis_keys.settled("a", "r"),
        redis_keys.calls_in_minute("a", 1), redis_keys.leases("a"),
        redis_keys.usage_day_by_tag("a", "2026-03-01"), redis_keys.day_tags("a", "2026-03-01"),
        redis_keys.team_tag("a"),
    ]  # fmt: skip
    assert {key_slot(key.encode()) for key in team} == {key_slot(b"t:a")}
    upstream = {redis_keys.PACE, redis_keys.HOLD, redis_keys.SLOTS}
    assert {key_slot(key.encode()) for key in upstream} == {key_slot(b"upstream")}
    entry = "ng:v2:emb:00ff"
    assert key_slot(redis_keys.fetch_mark(entry).encode()) == key_slot(entry.encode())
