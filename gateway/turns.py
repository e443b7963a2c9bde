"""Teams in turn: what keeps one team's bulk job from taking Nomic's whole rate.

Calls to Nomic are scarce (a global rate shared by every replica). Handed out first come first
served, a team that queues thousands of misses, or spreads them over many lanes (a text lane
per set of options), takes every call while another team's single miss waits behind it. Here
each team with misses waiting gets its turn:

- :class:`Turns` hands the right to take the rate's next call to one lane at a time, the
  lanes' teams in round robin (a team's lanes in the order they asked), so the calls are shared
  evenly between the teams that want them, whatever number of lanes each uses;
- :class:`TeamQueue` is a lane's queue, taken from in the same round robin, so a lane shared
  by every team (images, URLs) fills a batch with one item of each team in turn; teams that
  may not send now (their calls this minute made, :mod:`gateway.team_calls`) are passed over
  and keep their place.

When calls are not scarce a turn is taken and given back at once: nobody waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")
Among = Callable[[str], bool] | None  # the teams taken from (None: every team)


class Turns:
    """One holder at a time; the next turn goes to the team after the last one served, of
    those waiting, so a team with many waiters is served once a round, like the others."""

    def __init__(self) -> None:
        self._waiting: dict[str, deque[asyncio.Future[None]]] = {}  # teams, in turn order
        self._held = False

    @contextlib.asynccontextmanager
    async def turn(self, team: str) -> AsyncIterator[None]:
        """Hold the turn for ``team`` while the block runs."""
        if self._held or self._waiting:
            await self._wait(team)
        else:
            self._held = True
        try:
            yield
        finally:
            self._pass()

    @property
    def waiting(self) -> int:
        """How many wait for a turn."""
        return sum(len(queue) for queue in self._waiting.values())

    async def _wait(self, team: str) -> None:
        turn = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(team, deque()).append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self._pass()  # given the turn as it was cancelled: the next one's
            else:
                self._forget(team, turn)
            raise

    def _pass(self) -> None:
        """The turn to the first waiter of the next team; that team goes to the back."""
        while self._waiting:
            team = next(iter(self._waiting))
            queue = self._waiting.pop(team)
            turn = queue.popleft()
            if queue:
                self._waiting[team] = queue
            if not turn.done():
                turn.set_result(None)
                return
        self._held = False

    def _forget(self, team: str, turn: asyncio.Future[None]) -> None:
        queue = self._waiting.get(team)
        if queue is not None and turn in queue:
            queue.remove(turn)
            if not queue:
                del self._waiting[team]


class TeamQueue(Generic[T]):
    """A FIFO per team, taken from in round robin: the first item of each team in turn, the
    teams in the order they came (a team served goes to the back while it has items left)."""

    def __init__(self, team_of: Callable[[T], str], size_of: Callable[[T], int]) -> None:
        self._team_of, self._size_of = team_of, size_of
        self._by_team: dict[str, deque[T]] = {}
        self._sizes: dict[str, int] = {}  # each team's items' sizes, summed
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __bool__(self) -> bool:
        return self._count > 0

    def __iter__(self) -> Iterator[T]:
        for queue in self._by_team.values():
            yield from queue

    def extend(self, items: Iterable[T]) -> None:
        for item in items:
            team = self._team_of(item)
            self._by_team.setdefault(team, deque()).append(item)
            self._sizes[team] = self._sizes.get(team, 0) + self._size_of(item)
            self._count += 1

    def first(self) -> T:
        """The item :meth:`popleft` would take."""
        return self._by_team[next(iter(self._by_team))][0]

    def popleft(self, among: Among = None) -> T:
        """The first item of the next team in turn (of those ``among`` takes); the team goes
        to the back, the teams passed over keep their place."""
        team = next(team for team in self._by_team if among is None or among(team))
        queue = self._by_team.pop(team)
        item = queue.popleft()
        if queue:
            self._by_team[team] = queue  # to the back: the next team's turn
            self._sizes[team] -= self._size_of(item)
        else:
            del self._sizes[team]
        self._count -= 1
        return item

    def in_turn(self, among: Among = None) -> Iterator[T]:
        """The items of the teams ``among`` takes, in the order :meth:`popleft` would take
        them, none taken (the queue must not change while this is read)."""
        rotation: deque[tuple[T, Iterator[T]]] = deque()
        for team, queue in self._by_team.items():
            if among is None or among(team):
                items = iter(queue)
                rotation.append((next(items), items))
        while rotation:
            item, items = rotation.popleft()
            yield item
            for following in items:  # the team's next item, in the next round
                rotation.append((following, items))
                break

    def teams(self) -> list[str]:
        """The teams with items queued, in turn order."""
        return list(self._by_team)

    def remove(self, team: str, which: Callable[[T], bool]) -> list[T]:
        """Take out ``team``'s items that ``which`` picks (the team keeps its place)."""
        queue = self._by_team.get(team)
        if queue is None:
            return []
        gone = [item for item in queue if which(item)]
        if not gone:
            return gone
        kept = deque(item for item in queue if not which(item))
        if kept:
            self._by_team[team] = kept  # an existing key: its place in the order stays
            self._sizes[team] -= sum(map(self._size_of, gone))
        else:
            del self._by_team[team], self._sizes[team]
        self._count -= len(gone)
        return gone

    def count(self, team: str) -> int:
        """How many of ``team``'s items are queued."""
        queue = self._by_team.get(team)
        return 0 if queue is None else len(queue)

    def size(self, team: str) -> int:
        """The sizes of ``team``'s queued items, summed."""
        return self._sizes.get(team, 0)
