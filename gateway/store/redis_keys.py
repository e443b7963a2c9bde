"""Every Redis key name the gateway writes, one function (or constant) per kind of key. Pure.

Names are versioned and prefixed (``ng:v1:``, ``ng:v2:``) like cache keys (:mod:`gateway.keys`,
``ng:v2:emb:<digest>``, named the same in every store and so kept there). A name never changes
once written: Redis holds data under it. A new kind of key gets a new function here.

Keys one Lua script touches together share a hash tag, so on Redis Cluster they sit in one
slot and no script is refused ``CROSSSLOT``:

- ``{t:<team id>}`` (:func:`team_tag`): a team's record and its key index, its per-minute
  counters (requests, images and URLs, texts, upstream calls; minutes counted from the epoch),
  its usage and token hashes per UTC day and month, its usage per day by tag (and the day's
  tags), each admitted request's reservation and
  settled marker, the leases of its reservations under way, and the rate of its usage reads.
- ``{upstream}``: the upstream pace (GCRA's theoretical arrival time), the pause every replica
  holds after Nomic's 429, and the call slots.
- ``{<cache key>}``: an input's in-flight mark, in the slot of the entry it is fetching.

Key records and their narrowed state are named by the key's hash alone, because a lookup
starts from the key; secrets and item costs are global.
"""

from __future__ import annotations

TEAMS = "ng:v1:teams"  # the set of every team's id
FORMER_TEAMS = "ng:v1:former_teams"  # the hash of every deleted team's id to its last record

PACE = "ng:v1:{upstream}:tat"
HOLD = "ng:v1:{upstream}:hold"
SLOTS = "ng:v1:{upstream}:slots"


def team_tag(team_id: str) -> str:
    """The hash tag every key of one team shares."""
    return f"{{t:{team_id}}}"


def _team(team_id: str, suffix: str) -> str:
    return f"ng:v1:{team_tag(team_id)}:{suffix}"


def team_record(team_id: str) -> str:
    """The team as JSON."""
    return _team(team_id, "team")


def team_keys(team_id: str) -> str:
    """The hash of the team's key ids to their SHA-256."""
    return _team(team_id, "keys")


def keys_last_used(team_id: str) -> str:
    """The hash of the team's key ids to when each was last used (epoch seconds)."""
    return _team(team_id, "last_used")


def requests_in_minute(team_id: str, minute: int) -> str:
    """The team's requests admitted in ``minute`` (counted from the epoch)."""
    return _team(team_id, f"rpm:{minute}")


def images_in_minute(team_id: str, minute: int) -> str:
    """The team's images and URLs admitted in ``minute``."""
    return _team(team_id, f"ipm:{minute}")


def texts_in_minute(team_id: str, minute: int) -> str:
    """The team's texts admitted in ``minute``."""
    return _team(team_id, f"textpm:{minute}")


def calls_in_minute(team_id: str, minute: int) -> str:
    """The team's upstream calls counted in ``minute`` (``upstream_calls_per_minute``)."""
    return _team(team_id, f"callpm:{minute}")


def usage_day(team_id: str, day: str) -> str:
    """The hash of the team's usage and tokens on ``day`` (``YYYY-MM-DD``, UTC)."""
    return _team(team_id, f"day:{day}")


def usage_day_by_tag(team_id: str, day: str) -> str:
    """The hash of the team's usage on ``day`` by tag, fields ``<tag>|<field>``
    (:mod:`gateway.tags`)."""
    return _team(team_id, f"tagday:{day}")


def day_tags(team_id: str, day: str) -> str:
    """The set of the team's tags on ``day`` counted toward its bound of tags a day."""
    return _team(team_id, f"tags:{day}")


def usage_month(team_id: str, month: str) -> str:
    """The hash of the team's usage and tokens in ``month`` (``YYYY-MM``, UTC)."""
    return _team(team_id, f"month:{month}")


def reservation(team_id: str, request_id: str) -> str:
    """The tokens reserved for an admitted request, until it settles."""
    return _team(team_id, f"reserved:{request_id}")


def leases(team_id: str) -> str:
    """The sorted set of the team's reservations under way, by when each lease lapses
    (members named by ``lease()`` in ``lua/usage.lua``)."""
    return _team(team_id, "leases")


def settled(team_id: str, request_id: str) -> str:
    """The marker of a settled request, which makes a retried settle a no-op."""
    return _team(team_id, f"settled:{request_id}")


def usage_reads(team_id: str) -> str:
    """The rate of the team's usage reads (``lua/spend.lua``)."""
    return _team(team_id, "usage_reads")


def key_record(sha256: str) -> str:
    """A team key's record, by the SHA-256 of the key."""
    return f"ng:v1:key:{sha256}"


def key_state(sha256: str) -> str:
    """When a key was revoked or expires, if narrowed after it was written
    (``lua/narrow_key.lua``)."""
    return f"ng:v1:keystate:{sha256}"


def secret(name: str) -> str:
    """A secret every replica shares (written once, by whichever comes first)."""
    return f"ng:v1:secret:{name}"


def item_cost(model: str) -> str:
    """The tokens Nomic bills for one input of ``model``, as last seen."""
    return f"ng:v1:cost:{model}"


def fetch_mark(cache_key: str) -> str:
    """The in-flight mark of a cache key (which holds no brace: it is the hash tag)."""
    return f"ng:v2:fetching:{{{cache_key}}}"
