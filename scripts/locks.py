"""The locks in requirements/, read: which releases a lock installs on a given interpreter.

Used by tests/test_lock.py (this interpreter) and the deployment check (the image's).
Standard library only, so it runs anywhere; a marker is evaluated by ``packaging`` when the
caller has it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

LOCKS = Path(__file__).resolve().parent.parent / "requirements"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+?)(?:\s*;\s*(.+?))?\s*\\?$")
HASH = re.compile(r"^\s+--hash=sha256:[0-9a-f]{64}")


def canonical(name: str) -> str:
    """A distribution's name as PEP 503 compares it."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(lock: str, applies: Callable[[str], bool]) -> dict[str, tuple[str, int]]:
    """Each release the lock ``requirements/<lock>`` installs where ``applies(marker)`` is true:
    its version and how many hashes stand for it."""
    found: dict[str, tuple[str, int]] = {}
    current: str | None = None
    for line in (LOCKS / lock).read_text().splitlines():
        if match := PIN.match(line):
            name, version, marker = match.groups()
            current = canonical(name) if marker is None or applies(marker) else None
            if current is not None:
                found[current] = (version, 0)
        elif current is not None and HASH.match(line):
            version, hashes = found[current]
            found[current] = (version, hashes + 1)
    return found
