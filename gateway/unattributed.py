"""What Nomic billed, or may have billed, that no team is charged: counted, never silently.

Each is counted in ``gateway_unattributed_tokens_total`` and ``gateway_unattributed_items_total``
by reason, and in the usage of the reserved account ``unattributed`` (:data:`TEAM_ID`: no team
can be made with that id), which ``GET /admin/usage`` and ``nomic-gateway usage`` show beside
the teams. Its ``billed_tokens`` are what Nomic said it billed where it said so, or what the
requests had reserved (a killed process's); its ``misses`` are the inputs sent; its
``upstream_errors`` the calls (or, for ``killed``, the requests).

Reasons:

- ``malformed_answer``: Nomic answered 200 with a body the gateway cannot use (a wrong number of
  embeddings, malformed vectors), billing the ``usage`` it names; every item of the call fails.
- ``unstorable``: a 200 whose vector for one item cannot be kept (not a finite number); the
  item fails, its share of the call's tokens is no team's.
- ``timeout``: a call Nomic did not answer in time; it may have billed it before the retry.
  What it billed is not known: its inputs are counted, its tokens are not.
- ``killed``: requests a killed process had admitted and not settled, released when the
  embedded store opens again, or on Redis by the team's next admission once their lease has
  lapsed (their reserved tokens: what they were expected to cost).
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Literal

from gateway import metrics

log = logging.getLogger(__name__)
TEAM_ID = "unattributed"
Reason = Literal["malformed_answer", "unstorable", "timeout", "killed"]


def count(reason: Reason, *, tokens: int, items: int) -> None:
    """Only the metrics, for what is written to the account by other means."""
    metrics.UNATTRIBUTED_TOKENS.labels(reason=reason).inc(tokens)
    metrics.UNATTRIBUTED_ITEMS.labels(reason=reason).inc(items)


def count_killed(requests: int, tokens: int, whose: str) -> None:
    """Count and log the reservations of ``requests`` released because the process that made
    them died before it settled them (``whose`` says which), ``tokens`` in all; the caller
    writes them to the account."""
    count("killed", tokens=tokens, items=requests)
    log.warning(
        "released %d reservations of %s: whatever Nomic billed for them is charged to no "
        "team; the %d tokens they reserved are counted to the account %r",
        requests, whose, tokens, TEAM_ID,
    )  # fmt: skip


class Unattributed:
    """What a process found that no team is charged, until its usage buffer writes it."""

    def __init__(self) -> None:
        self._pending: Counter[str] = Counter()

    def record(self, reason: Reason, *, tokens: int, items: int, calls: int = 1) -> None:
        """Count ``tokens`` billed (0: not known) for ``items`` inputs of ``calls`` calls
        that no team is charged."""
        count(reason, tokens=tokens, items=items)
        self._pending.update(billed_tokens=tokens, misses=items, upstream_errors=calls)

    def take(self) -> tuple[int, dict[str, int]]:
        """The tokens and usage recorded since the last take, to be written now."""
        usage = {field: amount for field, amount in self._pending.items() if amount}
        self._pending.clear()
        return usage.pop("billed_tokens", 0), usage
