"""The locks in requirements/: what the virtualenvs and the image install is what pyproject.toml
asks for, pinned with hashes, and the interpreter running this suite has exactly that."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import tomllib
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.helpers import load_script

ROOT = Path(__file__).resolve().parent.parent


locks = load_script("locks")


def pins(lock: str) -> dict[str, tuple[Version, int]]:
    """What ``lock`` installs on this interpreter: versions and how many hashes each has."""
    found = locks.pins(lock, lambda marker: Marker(marker).evaluate())
    return {name: (Version(version), hashes) for name, (version, hashes) in found.items()}


def declared() -> tuple[list[Requirement], list[Requirement]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = [Requirement(text) for text in project["dependencies"]]
    return runtime, runtime + [Requirement(t) for t in project["optional-dependencies"]["test"]]


def test_the_reader_sees_every_pin_of_a_lock() -> None:
    text = (ROOT / "requirements" / "test.lock").read_text()
    assert len(locks.pins("test.lock", lambda _marker: True)) >= len(
        {line.split("==")[0] for line in text.splitlines() if "==" in line and line[0].isalnum()}
    )


def test_every_pin_carries_its_hashes() -> None:
    for lock in ("run.lock", "test.lock", "build.lock", "installer.lock"):
        locked = pins(lock)
        assert locked, lock
        for name, (_, hashes) in locked.items():
            assert hashes >= 1, f"{lock}: {name} has no hash"


def test_the_locks_satisfy_pyproject_and_agree_with_each_other() -> None:
    runtime, everything = declared()
    run, test = pins("run.lock"), pins("test.lock")
    for requirement, lock in [(r, run) for r in runtime] + [(r, test) for r in everything]:
        name = canonicalize_name(requirement.name)
        assert name in lock, f"{name} is not locked: run scripts/lock.sh"
        assert requirement.specifier.contains(lock[name][0], prereleases=True), requirement
    for lock in ("run.lock", "build.lock", "installer.lock"):
        for name, (version, _) in pins(lock).items():
            assert test[name][0] == version, f"{lock} pins {name} {version}, test.lock another"


def test_this_interpreter_has_exactly_the_test_lock() -> None:
    """The suite runs on what scripts/test.sh installed from test.lock, nothing else."""
    locked = pins("test.lock")
    installed = {
        canonicalize_name(dist.metadata["Name"]): Version(dist.version)
        for dist in importlib.metadata.distributions()
    }
    own = {"nomic-gateway", "pip"}  # the gateway itself, editable; the virtualenv's own pip
    assert {name: v for name, v in installed.items() if name not in own} == {
        name: version for name, (version, _) in locked.items()
    }
