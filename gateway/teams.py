"""Teams, their limits and their keys: values and pure rules, no I/O.

A team key is ``nk-`` followed by 43 characters of URL-safe base64 (32 random bytes): the
``nk-`` prefix lets the official ``nomic`` client use it without asking Nomic to refresh it.
Only the key's SHA-256 is stored. Keys carry 256 bits of randomness, so a fast hash is enough,
and looking a key up by its hash compares no secret byte by byte: the time taken depends on
the hash, never on how much of a valid key a guess got right.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import secrets
from typing import Any, Literal, get_args

from gateway import keys, unattributed

KEY_PREFIX = "nk-"
MAX_LIMIT = 2**53  # counts stay exact in Redis's Lua (doubles) and in JSON
_KEY = re.compile(r"nk-[A-Za-z0-9_-]{43}")
_TEAM_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
RESERVED_TEAM_IDS = frozenset({unattributed.TEAM_ID})
SWITCHES = ("count_hits", "private_cache")  # a team's yes/no settings
LimitName = Literal[
    "requests_per_minute",
    "images_per_minute",  # images and URLs
    "texts_per_minute",
    "tokens_per_day",
    "tokens_per_month",
    "upstream_calls_per_minute",  # calls to Nomic made for the team's misses
]
LIMIT_NAMES: tuple[LimitName, ...] = get_args(LimitName)
# The limits a request's admission decides (gateway/quota.py), in the order the store takes
# them; upstream_calls_per_minute is counted where calls are made (gateway/team_calls.py).
ADMITTED_LIMITS: tuple[LimitName, ...] = LIMIT_NAMES[:5]


class InvalidTeam(ValueError):
    """A team or key field that is not acceptable; the message names it."""


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    """A team's limits; None is unlimited."""

    requests_per_minute: int | None = None
    images_per_minute: int | None = None  # images and URLs
    texts_per_minute: int | None = None
    tokens_per_day: int | None = None
    tokens_per_month: int | None = None
    upstream_calls_per_minute: int | None = None

    @classmethod
    def from_json(cls, data: Any, base: Limits | None = None) -> Limits:
        """Limits from a JSON object; names left out keep ``base``'s value (or unlimited)."""
        if not isinstance(data, dict):
            raise InvalidTeam("limits must be an object")
        unknown = set(data) - set(LIMIT_NAMES)
        if unknown:
            raise InvalidTeam(
                f"unknown limit {sorted(unknown)[0]!r}; known: {', '.join(LIMIT_NAMES)}"
            )
        values = dataclasses.asdict(base) if base is not None else {}
        for name, value in data.items():
            if value is not None and (type(value) is not int or not 0 <= value <= MAX_LIMIT):
                raise InvalidTeam(
                    f"limits.{name} must be a whole number from 0 to {MAX_LIMIT}, or null"
                )
            values[name] = value
        return cls(**values)

    def to_json(self) -> dict[str, int | None]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True, slots=True)
class Team:
    id: str
    name: str
    limits: Limits
    count_hits: bool = True  # whether cache hits count toward the per-minute rate limits
    created: float = 0.0
    private_cache: bool = False  # the team's entries are kept apart from everyone else's
    # This team's own, not a deleted one's of the same id ("": made before there were any).
    incarnation: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "limits": self.limits.to_json(),
                "count_hits": self.count_hits, "private_cache": self.private_cache,
                "created": self.created, "incarnation": self.incarnation}  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Team:
        return cls(data["id"], data["name"], Limits(**data["limits"]),
                   bool(data.get("count_hits", True)), float(data.get("created", 0.0)),
                   bool(data.get("private_cache", False)),
                   str(data.get("incarnation", "")))  # fmt: skip

    @property
    def cache_scope(self) -> str:
        """Where the team's embeddings are cached: with everyone's, or apart (in a cache of
        this incarnation's: a team made again under a deleted one's id starts empty)."""
        if not self.private_cache:
            return keys.SHARED
        own = f"{self.id}/{self.incarnation}" if self.incarnation else self.id
        return keys.private_scope(own)


def new_incarnation() -> str:
    return secrets.token_hex(8)


@dataclasses.dataclass(frozen=True, slots=True)
class KeyRecord:
    """What is stored of a key: never the key itself."""

    id: str
    team: str
    sha256: str
    prefix: str  # the first characters, to recognise a key in a list
    created: float
    expires: float | None = None  # set when the key was rotated: valid until then
    revoked: float | None = None
    last_used: float | None = None

    def usable(self, now: float) -> bool:
        return self.revoked is None and (self.expires is None or now < self.expires)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> KeyRecord:
        return cls(**data)

    def public(self) -> dict[str, Any]:
        """What the admin API shows: everything but the hash."""
        shown = self.to_json()
        del shown["sha256"]
        return shown


def check_switch(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise InvalidTeam(f"{name} must be true or false")
    return value


def check_team_id(team_id: object) -> str:
    if not isinstance(team_id, str) or not _TEAM_ID.fullmatch(team_id):
        raise InvalidTeam(
            "team id must be 1 to 63 characters of a-z, 0-9, '-' and '_', starting with a "
            "letter or digit"
        )
    return team_id


def check_new_team_id(team_id: object) -> str:
    """A team id a new team may take: well formed, and not one the gateway keeps for itself
    (``unattributed``, the account of what Nomic billed that no team is charged)."""
    checked = check_team_id(team_id)
    if checked in RESERVED_TEAM_IDS:
        raise InvalidTeam(f"team id {checked!r} is reserved by the gateway")
    return checked


def check_name(name: object) -> str:
    if not isinstance(name, str) or not 0 < len(name) <= 200 or not name.isprintable():
        raise InvalidTeam("name must be 1 to 200 printable characters")
    return name


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def new_key_id() -> str:
    return "key_" + secrets.token_hex(8)


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def well_formed(key: str) -> bool:
    return _KEY.fullmatch(key) is not None


def check_key_id(value: object) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", value):
        raise InvalidTeam("key id must be 1 to 64 characters of A-Z, a-z, 0-9, '-' and '_'")
    return value


def check_key_hash(value: object) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-f]{64}", value):
        raise InvalidTeam("sha256 must be 64 lowercase hex digits (nomic-gateway keys hash)")
    return value


def record_for(key: str, team: str, now: float, key_id: str | None = None) -> KeyRecord:
    return KeyRecord(key_id or new_key_id(), team, key_hash(key), key[:7], now)
