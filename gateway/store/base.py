"""The store protocols: only the methods the gateway uses.

:class:`Store` is the embedding cache. :class:`Ledger` holds teams, keys, usage and the quota
counters; every decision that must be exact under concurrency is one atomic call in it. The
request path needs only its :class:`QuotaLedger` part. Both implementations (embedded
memory, Redis) implement every protocol.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple, Protocol

from gateway import tags
from gateway.quota import Decision, Demand, Window
from gateway.teams import KeyRecord, Team


class StoreError(Exception):
    """The store could not be reached or answered an error; the cause is chained. The
    operation may have run all the same (say, it timed out after Redis ran it)."""


class StoreRefused(StoreError):
    """The store surely did not run the operation: no connection could be made, or it
    refused the command before running it."""


class StoreFull(StoreRefused):
    """Redis is at its ``maxmemory`` (policy ``noeviction``) and refused a write."""


class Store(Protocol):
    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """The value of each key, in order; None where a key is absent or expired."""
        ...

    async def set_many(self, items: Sequence[tuple[str, bytes]], ttl_seconds: int | None) -> None:
        """Store every item; with a TTL they expire after it, without they never expire."""
        ...

    async def ping(self) -> None:
        """Return if the store is usable, raise :class:`StoreError` if not."""
        ...


class QuotaLedger(Protocol):
    """What the request path asks of the ledger: decisions, settles and item costs."""

    async def admit(
        self, team: Team, want: Demand, at: Window, usage: Mapping[str, int], request_id: str,
        tag: str = tags.UNTAGGED,
    ) -> Decision:  # fmt: skip
        """Atomically: check ``want`` against the team's limits; if it fits, count it, reserve
        its tokens (under ``request_id``) and add ``usage`` to the day; if not, count a
        rejection. An admit that added usage also marks ``request_id`` settled: the request
        was answered already, and needs no :meth:`settle`. What it adds to the day it adds to
        the day's ``tag`` too (or ``other``: :func:`gateway.tags.kept`)."""
        ...

    async def settle(
        self, team_id: str, day: str, month: str, request_id: str, billed: int,
        usage: Mapping[str, int], tag: str = tags.UNTAGGED,
    ) -> None:  # fmt: skip
        """Once per ``request_id``, atomically: release what it reserved on ``day`` (of
        ``month``), add ``billed`` to that day and month and ``usage`` to the day, and both
        to the day's ``tag`` (or ``other``: :func:`gateway.tags.kept`). Settling the same id
        again changes nothing, so a settle may be retried after a timeout."""
        ...

    async def item_cost(self, model: str) -> int | None:
        """What one item of ``model`` cost upstream lately, as any replica learned it."""
        ...

    async def record_item_cost(self, model: str, tokens: int) -> None: ...


class Settlement(NamedTuple):
    """The arguments of one :meth:`QuotaLedger.settle`, kept to be made (again) later."""

    team_id: str
    day: str
    month: str
    request_id: str
    billed: int
    usage: Counter[str]
    tag: str = tags.UNTAGGED


class Ledger(QuotaLedger, Protocol):
    async def create_team(self, team: Team) -> bool:
        """Add a team; False if one with its id exists."""
        ...

    async def change_team(self, team_id: str, change: Callable[[Team], Team]) -> Team | None:
        """Atomically replace the team with ``change`` of it, and return what was written;
        None (nothing written) if there is no team. Whatever else writes the team meanwhile
        (another change, a delete) is not lost: ``change`` may be called more than once, on
        the latest team each time, so it must not act beyond returning the new team; what it
        raises is raised, with nothing written."""
        ...

    async def update_team(self, team: Team) -> bool:
        """Replace a team that exists; False (nothing written) if there is none."""
        ...

    async def get_team(self, team_id: str) -> Team | None: ...

    async def list_teams(self) -> list[Team]: ...

    async def delete_team(self, team_id: str) -> bool:
        """Remove a team (its usage stays, and the team is remembered among the
        :meth:`former_teams`); False if there was none."""
        ...

    async def former_teams(self) -> list[Team]:
        """Every team deleted, as it last was (one per id), by id: their usage is still
        billed (the monthly chargeback lists them)."""
        ...

    async def put_key(self, record: KeyRecord) -> None:
        """Add a key record, findable by its hash and by its team."""
        ...

    async def narrow_key(
        self, record: KeyRecord, *, revoked: float | None = None, expires: float | None = None
    ) -> None:
        """Atomically revoke a key (if not yet) and/or bring its expiry forward (never back)."""
        ...

    async def get_key(self, sha256: str) -> KeyRecord | None: ...

    async def list_keys(self, team_id: str) -> list[KeyRecord]:
        """The team's keys, oldest first, with when each was last used."""
        ...

    async def touch_key(self, record: KeyRecord, now: float) -> None:
        """Note that the key was used at ``now`` (kept apart from the record, so a write of
        it can never undo a revocation)."""
        ...

    async def usage(self, team_id: str, days: Sequence[str]) -> list[dict[str, int]]:
        """The team's usage of each day, in order (zeros where nothing was recorded)."""
        ...

    async def tag_usage(self, team_id: str, days: Sequence[str]) -> list[dict[str, dict[str, int]]]:
        """The team's usage of each day by tag, in order: each tag with any counts, and
        its counts (every usage field but ``reserved_tokens``)."""
        ...

    async def take_usage_reads(
        self, team_id: str, days: int, per_second: float, at_once: int
    ) -> int:
        """Atomically spend ``days`` of the team's usage reads (``per_second`` a second, up
        to ``at_once`` at once) and return 0; or, when it has fewer left, spend none and
        return the ms until it would have them. Every process on the store spends the same
        reads (the embedded store: its one process)."""
        ...

    async def shared_secret(self, name: str) -> bytes:
        """32 random bytes kept under ``name``, made by whichever process asks first (once,
        atomically) and the same for every process on the store from then on."""
        ...


class Mark(NamedTuple):
    """An input's in-flight mark as one round trip found it, and its cache entry as the same
    trip read it just after (an owner stores its entry before it lets go of its mark, so a
    mark that is free and an entry that is missing mean nobody has fetched it)."""

    held: bool  # claim_fetches: this holder now holds it; fetching: some holder does
    stored: bytes | None


class Coordinator(Protocol):
    """What replicas share to shield Nomic: its rate, its concurrency, fetches in flight."""

    async def pace(self, interval_ms: int, burst: int, max_wait_ms: int) -> int:
        """Reserve the next upstream call under the global rate: the ms to wait before it
        may go; or, if that is more than ``max_wait_ms``, minus that wait (nothing reserved)."""
        ...

    async def hold(self, pause_ms: int) -> None:
        """No upstream call from any replica for ``pause_ms`` (Nomic said Retry-After)."""
        ...

    async def acquire_slot(self, holder: str, cap: int, lease_ms: int) -> bool:
        """Take one of ``cap`` upstream call slots for ``lease_ms``; False if all are held."""
        ...

    async def start_call(
        self, holder: str, cap: int, lease_ms: int, interval_ms: int, burst: int, max_wait_ms: int
    ) -> int | None:
        """:meth:`acquire_slot` then :meth:`pace`, in one step: None (nothing taken) if every
        slot is held; else what ``pace`` returns, and a negative wait gives the slot back."""
        ...

    async def take_team_call(self, team_id: str, minute: int, limit: int) -> bool:
        """Atomically count one upstream call of the team in UTC ``minute`` (minutes since the
        epoch) if fewer than ``limit`` are counted in it; False (nothing counted) if not."""
        ...

    async def give_back_team_call(self, team_id: str, minute: int) -> None:
        """Uncount one call counted in ``minute`` that was not made (never below 0)."""
        ...

    async def renew_slots(self, holders: Sequence[str], lease_ms: int) -> None:
        """Extend these holders' slots to ``lease_ms`` from now, where they still hold one."""
        ...

    async def release_slot(self, holder: str) -> None: ...

    async def claim_fetches(self, keys: Sequence[str], holder: str, lease_ms: int) -> list[Mark]:
        """Mark each cache key as being fetched by ``holder`` for ``lease_ms`` unless another
        holder's mark is there; ``held`` where this holder now holds the mark."""
        ...

    async def renew_fetches(self, keys: Sequence[str], holder: str, lease_ms: int) -> None:
        """Extend this holder's marks to ``lease_ms`` from now (not another's)."""
        ...

    async def release_fetches(self, keys: Sequence[str], holder: str) -> None:
        """Remove this holder's marks (not another's, should one have taken over)."""
        ...

    async def fetching(self, keys: Sequence[str]) -> list[Mark]:
        """Whether each key is still marked as being fetched, and its entry."""
        ...
