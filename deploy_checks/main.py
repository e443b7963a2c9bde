"""The check from start to end: the engine, then the stages in order, then the clean-up; one
line per step, and the exit status."""

from __future__ import annotations

import contextlib
import signal
import time
from typing import NamedTuple

from deploy_checks.bases import Images, needed_images
from deploy_checks.cleanup import clean_up, remove_stale
from deploy_checks.compose import compose_run
from deploy_checks.docker_run import docker_run
from deploy_checks.engine import Engine
from deploy_checks.fakes import bridge_address
from deploy_checks.image import build, check_context, check_layers, check_locked, check_user
from deploy_checks.kubernetes import kubernetes_run
from deploy_checks.running import Failed
from deploy_checks.state import Check, GroupStopped, say


class Prepared(NamedTuple):
    images: Images
    bridge: str  # the host's address on Docker's bridge, where the fakes listen


def main() -> int:
    """0 if every step passed (or no engine can run here), 1 if one failed."""
    check, engine = Check(), Engine()
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, stop)
    start, skipped = time.monotonic(), False
    try:
        reason = engine.prepare()
        if reason is not None:
            say(f"skipped: no container engine can run on this machine: {reason}")
            skipped = True
            return 0
        installed = f"installed {' '.join(engine.installed)}; " if engine.installed else ""
        started = "dockerd started" if engine.dockerd else "already running"
        say(f"ok   container engine ({installed}{started}, {time.monotonic() - start:.1f} s)")
        stale = remove_stale()
        if stale:
            say(f"ok   removed what an interrupted earlier run left: {', '.join(stale)}")
        run_stages(check)
    finally:
        finish(check, engine, skipped)
    total = time.monotonic() - start
    if check.failed:
        say(f"FAILED ({len(check.failed)} of its steps) in {total:.0f} s")
        return 1
    say(f"passed in {total:.0f} s")
    return 0


def stop(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # the clean-up runs on the way out


def run_stages(check: Check) -> None:
    """Each group's steps stop at its first failure; the groups after it still run, unless
    the first (the images, everything runs on them) failed."""
    prepared = check.group("the images", lambda: prepare(check))
    if prepared is None:
        return
    images, bridge = prepared
    check.group("", lambda: check_context(check, images.base))
    check.group("", lambda: check_user(check))
    check.group("", lambda: check_locked(check))
    check.group("", lambda: check_layers(check, images.base))
    check.group("docker run", lambda: docker_run(check, bridge))
    check.group("the Kubernetes-style run", lambda: kubernetes_run(check, images.redis, bridge))
    check.group("Compose", lambda: compose_run(check, images, bridge))


def prepare(check: Check) -> Prepared:
    images = needed_images(check)
    build(check)
    with check.step("Docker's bridge address, for the fake Nomic"):
        bridge = bridge_address()
    return Prepared(images, bridge)


def finish(check: Check, engine: Engine, skipped: bool) -> None:
    """The clean-up: a step of its own, unless the check was skipped."""
    if skipped:
        clean_up(check, engine)
        return
    with contextlib.suppress(GroupStopped), check.step("remove all the check started"):
        left = clean_up(check, engine)
        if left:
            raise Failed(f"still there: {', '.join(left)}")
