"""A lane's batches and the teams' calls a minute (:mod:`gateway.team_calls`).

In its turn, before a batch takes the rate's call, the call is counted for each team with a
limit whose items the batch will hold (:meth:`LaneCalls.charge`); the batch then holds only
the items of teams that may send; what was counted for a team the batch does not hold after
all is given back. A lane whose every team has made its calls this minute sits it out
(:class:`SitOut`), and its misses that cannot wait for the next minute fail
(:meth:`LaneCalls.due`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

from gateway.errors import GatewayError
from gateway.lanes import Lane, Lanes, Waiting, batch_of
from gateway.team_calls import TeamCalls, must_fail
from gateway.turns import Among


class SitOut(Exception):
    """The lane's next batch would be empty: every team with misses in it has made its calls
    this minute, which ends in ``seconds``."""

    def __init__(self, seconds: float) -> None:
        super().__init__(seconds)
        self.seconds = seconds


class LaneCalls:
    def __init__(self, calls: TeamCalls, lanes: Lanes) -> None:
        self.calls = calls
        self._lanes = lanes

    def may_send(self, lane: Lane) -> Among:
        """Whose items the lane's next batch may hold: teams without a limit on their calls,
        and those whose call it was counted for."""
        charged = frozenset() if lane.charge is None else lane.charge.teams
        return lambda team: team in charged or not self.calls.limited(team)

    def check_left(self, lane: Lane) -> None:
        """Raise :class:`SitOut` if every team with misses in the lane is known to have made
        its calls this minute (no round trip to learn it again)."""
        left = [self.calls.used_up(team) for team in lane.jobs.teams()]
        if left and all(seconds is not None for seconds in left):
            raise SitOut(max(seconds or 0.0 for seconds in left))

    async def charge(self, lane: Lane) -> None:
        """Count the lane's next call for each team with a limit whose items it will hold,
        once a batch; raise :class:`SitOut` if the batch would hold nothing: every team with
        misses in the lane has made its calls this minute."""
        while lane.charge is None:
            sendable = lane.jobs.in_turn(lambda team: self.calls.used_up(team) is None)
            batch = batch_of(sendable, lane.most, self._lanes.policy.batch_bytes)
            teams = {item.job.team for item in batch}
            if not teams:  # (none queued: drain failed them; the lane waits for arrivals)
                left = (self.calls.used_up(team) or 0.0 for team in lane.jobs.teams())
                raise SitOut(max(left, default=0.0))
            charge = await self.calls.charge(teams)
            if charge.teams or not all(map(self.calls.limited, teams)):
                lane.charge = charge
            # else every team asked for had made its calls: known now, the batch is made again

    async def charged(self, lane: Lane, batch: Sequence[Waiting]) -> None:
        """The counted calls of ``batch`` are spent: give back those of teams it does not
        hold after all."""
        charge, lane.charge = lane.charge, None
        if charge is not None:
            await self.calls.give_back(charge, charge.teams - {item.job.team for item in batch})

    async def give_back(self, lane: Lane) -> None:
        """No call went for the lane's counted batch: give back every team's."""
        charge, lane.charge = lane.charge, None
        if charge is not None:
            await self.calls.give_back(charge, charge.teams)

    def due(
        self, lane: Lane, answered: float, everything: bool = False
    ) -> list[tuple[Waiting, GatewayError]]:
        """Take out of the lane, each with its error, the misses of teams that have made
        their calls this minute that cannot wait for the next: their request's deadline
        comes before a call made as the minute ends would be answered (one made now is at
        ``answered``; ``everything``: all of those teams' misses)."""
        failed: list[tuple[Waiting, GatewayError]] = []
        for team in lane.jobs.teams():
            left = self.calls.used_up(team)
            if left is None:
                continue
            horizon = math.inf if everything else answered + left
            due = lane.jobs.remove(team, functools.partial(_due, horizon))
            if due:
                error = self.calls.refusal(team, len({item.job.owner for item in due}))
                failed += [(item, error) for item in due]
        if failed:
            self._lanes.dequeued(lane, [item for item, _ in failed])
        return failed


def _due(horizon: float, item: Waiting) -> bool:
    """Whether ``item``'s request's deadline comes before ``horizon``."""
    return must_fail(item.job.deadline, horizon, 0.0)
