"""Tags: the job a request belongs to, so that a team's spend can be told apart by job.

A request names its job in the ``X-Gateway-Tag`` header (on every embedding route), or on
OpenAI's route in its ``user`` field (the header wins when both are given). A tag is 1 to
:data:`MAX_LENGTH` characters: letters, digits and ``. _ - : @ +``, starting with a letter
or digit; a header that is not one is refused. OpenAI takes any string as ``user``, so a
client that works there must work here: a ``user`` that is no tag is made one
(:func:`from_user`). A request without one counts under :data:`UNTAGGED`.

The ledger keeps each team's usage per day and tag beside its usage per day, in the same
atomic write. A team has at most ``tags_per_day`` distinct tags a day (the setting
``GATEWAY_TAGS_PER_DAY``); the tags past that count under :data:`OTHER`, decided by the
store, so no client can make the ledger grow past ``tags_per_day + 2`` rows a team and day.
:data:`UNTAGGED` and :data:`OTHER` are never counted toward the bound (a client may send
either: it then counts under it).
"""

from __future__ import annotations

import re
from collections.abc import Collection

HEADER = "X-Gateway-Tag"
UNTAGGED = "untagged"
OTHER = "other"
MAX_LENGTH = 64
DEFAULT_TAGS_PER_DAY = 100
_TAG = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._:@+-]{{0,{MAX_LENGTH - 1}}}")
_NOT_IN_TAGS = re.compile(r"[^A-Za-z0-9._:@+-]+")
RULE = f"1 to {MAX_LENGTH} letters, digits and . _ - : @ + (starting with a letter or digit)"


class InvalidTag(ValueError):
    """A tag that breaks :data:`RULE`; the message says why, without echoing it whole."""


def check(value: str | None) -> str:
    """The tag ``value`` names (None or empty: :data:`UNTAGGED`); :class:`InvalidTag` if
    it breaks :data:`RULE`."""
    if not value:
        return UNTAGGED
    if _TAG.fullmatch(value) is None:
        raise InvalidTag(f"must be {RULE}; got {value[:20]!r}{'...' if len(value) > 20 else ''}")
    return value


def from_user(user: str) -> str:
    """The tag an OpenAI ``user`` names: itself if it is a tag; else each run of characters
    a tag cannot hold becomes one ``_``, what a tag cannot start with is dropped from the
    front, and the rest cut to :data:`MAX_LENGTH` (``"Ada Lovelace"``: ``Ada_Lovelace``;
    nothing left: :data:`UNTAGGED`). Users that differ only there share a tag."""
    if _TAG.fullmatch(user) is not None:
        return user
    made = _NOT_IN_TAGS.sub("_", user).lstrip("._:@+-")[:MAX_LENGTH]
    return made or UNTAGGED


def kept(tag: str, known: Collection[str], most: int) -> str:
    """The tag a request's usage is counted under, given the tags the team's day has
    (``known``, of which :data:`UNTAGGED` and :data:`OTHER` do not count toward ``most``):
    ``tag`` itself if it is known, unbounded, or fits; else :data:`OTHER`. The rule the
    stores apply (in Lua for Redis)."""
    if tag in (UNTAGGED, OTHER) or tag in known:
        return tag
    counted = len(known) - sum(1 for t in (UNTAGGED, OTHER) if t in known)
    return tag if counted < most else OTHER
