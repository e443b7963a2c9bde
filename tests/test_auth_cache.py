"""The key cache in front of the ledger: a flood of unknown keys never evicts a team's."""

from __future__ import annotations

import pytest

from gateway import auth
from gateway.auth import Authenticator
from gateway.errors import Unauthorized
from gateway.store.memory_ledger import MemoryLedger
from gateway.teams import KeyRecord, Limits, Team, new_key, record_for


class _CountingLedger(MemoryLedger):
    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    async def get_key(self, sha256: str) -> KeyRecord | None:
        self.reads += 1
        return await super().get_key(sha256)


async def test_a_flood_of_unknown_keys_evicts_no_team_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "MAX_UNKNOWN", 100)
    ledger = _CountingLedger()
    await ledger.create_team(Team("a", "A", Limits(), created=1.0))
    key = new_key()
    await ledger.put_key(record_for(key, "a", 2.0))
    authenticator = Authenticator(ledger, cache_seconds=60, clock=lambda: 10.0)
    assert (await authenticator.team_for(f"Bearer {key}")).id == "a"
    for _ in range(1000):  # ten times what unknown keys may take
        with pytest.raises(Unauthorized):
            await authenticator.team_for(f"Bearer {new_key()}")
    reads = ledger.reads
    assert (await authenticator.team_for(f"Bearer {key}")).id == "a"
    assert ledger.reads == reads  # still cached: the flood never reached it


async def test_unknown_keys_are_evicted_least_recently_used_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(auth, "MAX_UNKNOWN", 3)
    ledger = _CountingLedger()
    authenticator = Authenticator(ledger, cache_seconds=60, clock=lambda: 10.0)
    guesses = [new_key() for _ in range(4)]
    for guess in guesses:
        with pytest.raises(Unauthorized):
            await authenticator.team_for(f"Bearer {guess}")
    reads = ledger.reads
    for guess in guesses[1:]:  # the last three are cached; the first was evicted
        with pytest.raises(Unauthorized):
            await authenticator.team_for(f"Bearer {guess}")
    assert ledger.reads == reads
    with pytest.raises(Unauthorized):
        await authenticator.team_for(f"Bearer {guesses[0]}")
    assert ledger.reads == reads + 1
