"""The Fetcher on a clock the test holds: single flight, remembering, deadlines, the bill
still pending, stale entries, and other replicas' fetches watched, dropped and taken over.

Nothing here waits for real: the Fetcher's clocks (its wall clock and its monotonic one are
the same here) and its sleep are a :class:`~tests.fake_clock.FakeClock`'s, which moves only
when a test advances it, and its upstream is :class:`HeldUpstream`, which answers only when a
test says so."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping, Sequence

import pytest

from gateway import entries
from gateway.assembly import Outcome
from gateway.entries import Entry
from gateway.errors import UpstreamServerError, UpstreamTimeout, Withdrawn
from gateway.fetch import POLL_SECONDS, Fetched, Fetcher
from gateway.hot import HotCache
from gateway.models import Spec
from gateway.quota import TokenEstimator
from gateway.shield import Embedded, Job
from gateway.store import MemoryStore
from gateway.store.base import Coordinator
from gateway.store.memory_coordinator import MemoryCoordinator
from tests.fake_clock import START, FakeClock, settle
from tests.helpers import timings
from tests.test_pipeline import SharedMarks

IMAGE = Spec("nomic-embed-vision-v1.5", "image")
URL = Spec("nomic-embed-vision-v1.5", "url")
VECTOR = [0.5, 0.25]


class HeldUpstream:
    """The shield's stand-in: each submit's jobs wait until the test answers or fails them."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[Job], list[asyncio.Future[Embedded]]]] = []

    def submit(self, spec: Spec, jobs: Sequence[Job]) -> list[asyncio.Future[Embedded]]:
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Embedded]] = [loop.create_future() for _ in jobs]
        self.calls.append((list(jobs), futures))
        return futures

    @property
    def sent(self) -> list[bytes]:
        return [job.content for jobs, _ in self.calls for job in jobs]

    def answer(self, call: int = -1, tokens: int = 5) -> None:
        for future in self.calls[call][1]:
            future.set_result(Embedded(VECTOR, tokens))

    def fail(self, error: Exception, call: int = -1) -> None:
        for future in self.calls[call][1]:
            future.set_exception(error)


class Rig:
    """A Fetcher on a fake clock and a held upstream, and what it stores into."""

    def __init__(
        self, coordinator: Coordinator | None = None, store: MemoryStore | None = None,
        **changes: float,
    ) -> None:  # fmt: skip
        self.clock = FakeClock()
        self.upstream = HeldUpstream()
        self.store = MemoryStore(10_000_000) if store is None else store
        shared = coordinator is not None
        self.fetcher = Fetcher(
            self.store, self.upstream, coordinator or MemoryCoordinator(), HotCache(0),
            TokenEstimator(1), timings(**changes), shares_fetches=shared,
            clock=self.clock, monotonic=self.clock, sleep=self.clock.sleep,
        )  # fmt: skip

    def fetch(
        self, wanted: Mapping[str, bytes], *, within: float = 10.0, spec: Spec = IMAGE,
        stale: Mapping[str, Entry] | None = None, team: str = "t",
    ) -> asyncio.Task[Fetched]:  # fmt: skip
        deadline = self.clock() + within
        return asyncio.ensure_future(
            self.fetcher.fetch(spec, wanted, stale or {}, deadline, team)
        )  # fmt: skip


@pytest.fixture
def rig() -> Iterator[Rig]:
    return Rig()


def hows(fetched: Fetched) -> dict[str, str]:
    return {key: outcome.how for key, outcome in fetched.outcomes.items()}


def stored(tokens: int = 5, fresh_until: int = 0) -> bytes:
    return entries.encode(VECTOR, tokens, fresh_until)


# ---- single flight in the process ----------------------------------------------------------


async def test_concurrent_misses_of_one_key_send_it_once_and_only_its_owner_pays(
    rig: Rig,
) -> None:
    first, second = rig.fetch({"k": b"img"}), rig.fetch({"k": b"img"})
    await settle()
    rig.upstream.answer(tokens=7)
    owner, joiner = await first, await second
    assert rig.upstream.sent == [b"img"]
    assert hows(owner) == {"k": "fetched"}
    assert hows(joiner) == {"k": "joined"}
    assert owner.outcomes["k"].entry == joiner.outcomes["k"].entry
    assert (owner.pending, joiner.pending) == (None, None)  # nothing still running
    await rig.fetcher.drain()
    assert await rig.store.get_many(["k"]) == [stored(tokens=7)]


async def test_an_answer_is_remembered_for_remember_seconds_then_forgotten(rig: Rig) -> None:
    fetch = rig.fetch({"k": b"img"})
    await settle()
    rig.upstream.answer()
    await fetch
    await rig.clock.advance(timings().remember_seconds - 0.01)
    assert hows(await rig.fetch({"k": b"img"})) == {"k": "joined"}  # a lookup under way
    assert rig.fetcher.in_flight == 1
    await rig.clock.advance(0.01)
    assert rig.fetcher.in_flight == 0
    again = rig.fetch({"k": b"img"})
    await settle()
    assert rig.upstream.sent == [b"img", b"img"]  # forgotten: fetched anew
    rig.upstream.answer()
    assert hows(await again) == {"k": "fetched"}
    await rig.fetcher.drain()


async def test_a_remembered_url_answer_past_its_ttl_is_fetched_anew() -> None:
    rig = Rig(remember_seconds=60.0, url_ttl_seconds=10)
    fetch = rig.fetch({"u": b"https://example.com/a.png"}, spec=URL)
    await settle()
    rig.upstream.answer()
    first = await fetch
    assert first.outcomes["u"].entry is not None
    assert first.outcomes["u"].entry.fresh_until == START + 10
    await rig.clock.advance(9)
    assert hows(await rig.fetch({"u": b"https://example.com/a.png"}, spec=URL)) == {"u": "joined"}
    await rig.clock.advance(1)  # the remembered answer is no longer fresh
    again = rig.fetch({"u": b"https://example.com/a.png"}, spec=URL)
    await settle()
    assert len(rig.upstream.calls) == 2
    rig.upstream.answer()
    assert hows(await again) == {"u": "fetched"}
    await rig.fetcher.drain()


async def test_a_failed_fetch_is_forgotten_at_once_so_the_next_request_asks_again(
    rig: Rig,
) -> None:
    fetch = rig.fetch({"k": b"img"})
    await settle()
    rig.upstream.fail(UpstreamServerError("Nomic answered HTTP 500"))
    failed = (await fetch).outcomes["k"]
    assert failed.how == "failed"
    assert isinstance(failed.error, UpstreamServerError)
    assert rig.fetcher.in_flight == 0
    again = rig.fetch({"k": b"img"})
    await settle()
    rig.upstream.answer()
    assert hows(await again) == {"k": "fetched"}
    assert rig.upstream.sent == [b"img", b"img"]
    await rig.fetcher.drain()


# ---- the deadline, and the bill still pending ----------------------------------------------


async def test_at_its_deadline_a_request_fails_and_its_fetch_goes_on_billed_when_it_ends(
    rig: Rig,
) -> None:
    fetch = rig.fetch({"k": b"img", "j": b"other"}, within=5.0)
    await rig.clock.advance(4.99)
    assert not fetch.done()
    await rig.clock.advance(0.01)
    fetched = fetch.result()
    outcome = fetched.outcomes["k"]
    assert outcome.how == "failed"
    assert isinstance(outcome.error, UpstreamTimeout)
    assert fetched.pending is not None
    assert not fetched.pending.done()
    rig.upstream.answer(tokens=6)  # Nomic answers after all: the request pays for both
    assert await fetched.pending == 12
    await rig.fetcher.drain()
    assert await rig.store.get_many(["k", "j"]) == [stored(6), stored(6)]


async def test_a_fetch_joined_at_the_deadline_is_another_requests_bill(rig: Rig) -> None:
    owner = rig.fetch({"k": b"img"}, within=60.0)
    await settle()
    joiner = rig.fetch({"k": b"img"}, within=1.0)
    await rig.clock.advance(1.0)
    late = joiner.result()
    assert late.outcomes["k"].how == "failed"
    assert late.pending is None  # not its fetch: nothing of it to pay
    rig.upstream.answer()
    assert hows(await owner) == {"k": "fetched"}
    await rig.fetcher.drain()


async def test_a_pending_fetch_that_fails_costs_nothing(rig: Rig) -> None:
    fetch = rig.fetch({"k": b"img"}, within=1.0)
    await rig.clock.advance(1.0)
    pending = fetch.result().pending
    assert pending is not None
    rig.upstream.fail(UpstreamServerError("Nomic answered HTTP 500"))
    assert await pending == 0
    await rig.fetcher.drain()


# ---- stale entries ---------------------------------------------------------------------------


async def test_a_stale_entry_serves_when_its_fetch_fails(rig: Rig) -> None:
    old = Entry(b"[0.5,0.25]", 5, int(START) - 1)
    fetch = rig.fetch({"u": b"https://example.com/a.png"}, spec=URL, stale={"u": old})
    await settle()
    rig.upstream.fail(UpstreamServerError("Nomic answered HTTP 500"))
    assert (await fetch).outcomes["u"] == Outcome("stale", old)
    await rig.fetcher.drain()


# ---- a fetch withdrawn by its owner --------------------------------------------------------


async def test_a_fetch_its_owner_withdrew_is_taken_over_once_by_a_request_that_joined(
    rig: Rig,
) -> None:
    owner = rig.fetch({"k": b"img"}, team="refused")
    await settle()
    joiner = rig.fetch({"k": b"img"}, team="other")
    await settle()
    rig.upstream.fail(Withdrawn("the request used up its resends"))
    assert (await owner).outcomes["k"].how == "failed"
    await settle()
    [(jobs, _)] = rig.upstream.calls[1:]
    assert [job.team for job in jobs] == ["other"]  # on the joiner's own account
    rig.upstream.answer()
    assert hows(await joiner) == {"k": "fetched"}
    await rig.fetcher.drain()


# ---- across replicas -------------------------------------------------------------------------


def replica_rig() -> tuple[Rig, SharedMarks]:
    store = MemoryStore(10_000_000)
    marks = SharedMarks(store)
    return Rig(marks, store), marks


async def test_a_key_another_replica_fetches_is_watched_until_its_entry_appears() -> None:
    rig, marks = replica_rig()
    marks.marks["k"] = "another replica"
    fetch = rig.fetch({"k": b"img"})
    await rig.clock.advance(sum(POLL_SECONDS))  # it watches, and finds nothing yet
    assert not fetch.done()
    await rig.store.set_many([("k", stored(tokens=9))], None)
    del marks.marks["k"]
    await rig.clock.advance(POLL_SECONDS[-1])
    watched = await fetch
    assert hows(watched) == {"k": "replica"}  # paid there
    assert watched.pending is None
    assert rig.upstream.calls == []
    await rig.fetcher.drain()


async def test_a_mark_dropped_without_an_entry_is_taken_over() -> None:
    rig, marks = replica_rig()
    marks.marks["k"] = "another replica"
    fetch = rig.fetch({"k": b"img"})
    await rig.clock.advance(POLL_SECONDS[0])
    del marks.marks["k"]  # it gave up, or its lease lapsed
    await rig.clock.advance(POLL_SECONDS[1])
    assert rig.upstream.sent == [b"img"]
    assert marks.marks["k"] != "another replica"  # this replica's mark now
    rig.upstream.answer()
    assert hows(await fetch) == {"k": "fetched"}
    await rig.fetcher.drain()
    assert "k" not in marks.marks  # released once stored


async def test_watching_another_replica_ends_at_the_deadline() -> None:
    rig, marks = replica_rig()
    marks.marks["k"] = "another replica"
    fetch = rig.fetch({"k": b"img"}, within=3.0)
    await rig.clock.advance(3.0)
    outcome = fetch.result().outcomes["k"]
    assert outcome.how == "failed"
    assert isinstance(outcome.error, UpstreamTimeout)
    await rig.clock.advance(1.0)  # the watch sees its deadline passed, and stops
    await rig.fetcher.drain()
    assert rig.upstream.calls == []


async def test_an_entry_another_replica_stored_since_the_lookup_is_answered_at_once() -> None:
    rig, marks = replica_rig()
    await rig.store.set_many([("k", stored(tokens=4))], None)
    fetched = await rig.fetch({"k": b"img"})
    assert hows(fetched) == {"k": "replica"}
    assert rig.upstream.calls == []
    await rig.fetcher.drain()
    assert marks.marks == {}


class RenewedMarks(SharedMarks):
    """Shared marks that record when each renewal came, by the fetcher's clock."""

    def __init__(self, store: MemoryStore, clock: FakeClock) -> None:
        super().__init__(store)
        self.clock = clock
        self.renewals: list[tuple[float, list[str], int]] = []

    async def renew_fetches(self, keys: Sequence[str], holder: str, lease_ms: int) -> None:
        self.renewals.append((self.clock() - START, sorted(keys), lease_ms))


async def test_a_mark_is_renewed_every_third_of_its_lease_while_its_fetch_runs() -> None:
    store = MemoryStore(10_000_000)
    marks = RenewedMarks(store, FakeClock())
    rig = Rig(marks, store, lease_seconds=3.0)
    marks.clock = rig.clock
    fetch = rig.fetch({"k": b"img"}, within=60.0)
    await rig.clock.advance(3.5)
    assert marks.renewals == [(1.0, ["k"], 3000), (2.0, ["k"], 3000), (3.0, ["k"], 3000)]
    rig.upstream.answer()
    await fetch
    await rig.fetcher.drain()
    await rig.clock.advance(3.0)
    assert len(marks.renewals) == 3  # released: renewed no more
    assert marks.marks == {}
