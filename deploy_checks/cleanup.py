"""What a run leaves: nothing but the images it keeps as a cache (the stand-ins, the gateway's
image and its stages). Its own things removed at its end, also on failure; an interrupted
earlier run's removed at the start of the next."""

from __future__ import annotations

import os
import shutil

from deploy_checks.compose import compose_down
from deploy_checks.engine import Engine, engine_answers
from deploy_checks.fakes import stop_fakes
from deploy_checks.running import Failed, docker
from deploy_checks.state import COMPOSE_PROJECT, LABEL, PREFIX, Check


def clean_up(check: Check, engine: Engine) -> list[str]:
    """Remove everything this run made (but the images kept as a cache); what remains."""
    problems: list[str] = []
    for stack in list(check.stacks):
        try:
            compose_down(check, stack)
        except Failed as exc:
            problems.append(f"compose project {stack.project}: {exc}")
    if engine_answers():
        remove_containers_and_networks(check)
        problems += containers_and_networks_left(check)
    stop_fakes(check)
    if os.environ.get("DEPLOY_CHECK_KEEP_ENGINE") != "1":
        engine.stop()
    shutil.rmtree(check.work, ignore_errors=True)
    return problems


def remove_containers_and_networks(check: Check) -> None:
    mine = f"label={check.label}"
    containers = docker("ps", "-aq", "--filter", mine, check=False).split()
    if containers:
        docker("rm", "--force", "--volumes", *containers, check=False, timeout=120)
    networks = docker("network", "ls", "-q", "--filter", mine, check=False).split()
    if networks:
        docker("network", "rm", *networks, check=False)
    for image in check.temporary_images:
        docker("rmi", "--force", image, check=False)
    docker("image", "prune", "--force", "--filter", "dangling=true", check=False)


def containers_and_networks_left(check: Check) -> list[str]:
    mine = f"label={check.label}"
    listings = {
        "container": docker("ps", "-aq", "--filter", mine, check=False),
        "network": docker("network", "ls", "-q", "--filter", mine, check=False),
        "compose container": docker(
            "ps", "-aq", "--filter", f"name={PREFIX}{check.id}", check=False
        ),
    }
    return [f"{kind} {item}" for kind, listing in listings.items() for item in listing.split()]


def remove_stale() -> list[str]:
    """Containers, networks and volumes of an earlier run that was killed before its clean-up
    (every run removes its own): what was removed."""
    removed = []
    for kind, listing, remove in (
        ("container", ["ps", "-a", "--format", f"{{{{.ID}}}} {COMPOSE_PROJECT}"],
         ["rm", "-f", "-v"]),
        ("network", ["network", "ls", "--format", f"{{{{.ID}}}} {COMPOSE_PROJECT}"],
         ["network", "rm"]),
        ("volume", ["volume", "ls", "--format", f"{{{{.Name}}}} {COMPOSE_PROJECT}"],
         ["volume", "rm"]),
    ):  # fmt: skip
        for item in stale(listing):
            docker(*remove, item, check=False)
            removed.append(f"{kind} {item[:12]}")
    return removed


def stale(listing: list[str]) -> list[str]:
    """What ``docker <listing>`` (ending in ``--format <format>``) lists that a run made: its
    label on it, or a Compose project named as a run names them."""
    ours = docker(*listing[:-2], "--filter", f"label={LABEL}", "-q", check=False).split()
    for line in docker(*listing, check=False).splitlines():
        name, _, owner = line.partition(" ")
        if owner.startswith(PREFIX):
            ours.append(name)
    return list(dict.fromkeys(ours))
