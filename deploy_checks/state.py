"""One run of the check: its names and secrets, its steps' outcomes, and what it started."""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

LABEL = "nomic-gateway.deploy-check"  # on every container and network the check makes
PREFIX = "ngcheck"  # names of containers, networks and Compose projects
IMAGE = "nomic-gateway:deploy-check"  # the gateway's image, as the check builds it
COMPOSE_PROJECT = '{{.Label "com.docker.compose.project"}}'  # a container's, as --format says

T = TypeVar("T")


def say(text: str) -> None:
    print(f"deploy-check: {text}", flush=True)


class GroupStopped(Exception):
    """A step failed: the steps after it in its group depend on it and are not run."""


@dataclass
class Compose:
    """A Compose project the check brought up: its name and the environment it was given."""

    project: str
    env: dict[str, str]


@dataclass
class Check:
    """One run of the check, shared by its stages; every field has its value for a new run."""

    id: str = field(default_factory=lambda: f"{os.getpid()}{secrets.token_hex(2)}")
    work: Path = field(
        default_factory=lambda: Path(tempfile.mkdtemp(prefix="nomic-gateway-deploy-check-"))
    )
    admin_token: str = field(default_factory=lambda: secrets.token_hex(32))
    metrics_token: str = field(default_factory=lambda: secrets.token_hex(32))
    seed: int = field(default_factory=lambda: int(time.time()) % 100_000 * 100)
    failed: list[str] = field(default_factory=list)
    # What it started, removed at the end (cleanup.py).
    fakes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    stacks: list[Compose] = field(default_factory=list)
    temporary_images: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        """The label on everything this run makes, for ``docker --label`` and ``--filter``."""
        return f"{LABEL}={self.id}"

    def name(self, what: str) -> str:
        return f"{PREFIX}-{self.id}-{what}"

    def next_seed(self) -> int:
        """A number no earlier step of any recent run used: for images never seen before."""
        self.seed += 1
        return self.seed

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[list[str]]:
        """One step: its line says ok (with any notes the step adds) or FAIL and why."""
        start, notes = time.monotonic(), list[str]()
        try:
            yield notes
        except Exception as exc:
            say(f"FAIL {name} ({time.monotonic() - start:.1f} s): {exc}")
            self.failed.append(name)
            raise GroupStopped from exc
        note = f": {'; '.join(notes)}" if notes else ""
        say(f"ok   {name} ({time.monotonic() - start:.1f} s){note}")

    def group(self, name: str, body: Callable[[], T]) -> T | None:
        """Steps that depend on each other: after a failure, the rest of them are not run
        (and None is returned)."""
        try:
            return body()
        except GroupStopped:
            if name:
                say(f"     (the rest of {name} is not run)")
            return None
