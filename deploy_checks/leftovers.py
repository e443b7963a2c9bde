"""What a test run left running (scripts/test.sh asks last): processes that carry the run's
NG_TEST_RUN marker in their environment (or match the suite's programs and were orphaned
during the run), the check's containers, and multiprocess-metrics folders nobody uses."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import time
from pathlib import Path

from deploy_checks.engine import engine_answers
from deploy_checks.running import docker
from deploy_checks.state import COMPOSE_PROJECT, LABEL, PREFIX

SUITE_PROGRAMS = re.compile(
    r"nomic-gateway|gateway serve|-m gateway|fake_nomic|redis-server|prometheus|"
    r"alertmanager|(^|/)wrk\b"
)


def leftovers() -> int:
    """Each leftover printed on a line of its own; exit status 1 if there is any."""
    marker = os.environ.get("NG_TEST_RUN", "")
    if not marker:
        print("leftovers: NG_TEST_RUN is not set (scripts/test.sh sets it)", file=sys.stderr)
        return 2
    started = float(marker.rsplit("-", 1)[-1])
    environments: dict[int, bytes] = {}
    found = processes_left(marker, started, environments)
    if engine_answers():
        found += containers_left()
    found += metrics_folders_left(started, b"\0".join(environments.values()))
    for line in found:
        print(f"left running after the tests: {line}")
    if not found:
        print("leftovers: none (processes, containers, metrics folders)")
    return 1 if found else 0


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def this_process_and_its_parents() -> set[int]:
    """This process and those it runs under (scripts/test.sh)."""
    mine, pid = {os.getpid()}, os.getpid()
    while pid > 1:
        pid = parent_of(pid)
        mine.add(pid)
    return mine


def processes_left(marker: str, started: float, environments: dict[int, bytes]) -> list[str]:
    """Processes of the run still there; ``environments`` gets every process's environment."""
    mine = this_process_and_its_parents()
    boot = time.time() - float(Path("/proc/uptime").read_text().split()[0])
    ticks = os.sysconf("SC_CLK_TCK")
    found: list[str] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        try:
            environ = (entry / "environ").read_bytes()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        environments[int(entry.name)] = environ
        if not command:
            continue  # a kernel thread, or a zombie
        carries = f"NG_TEST_RUN={marker}".encode() in environ.split(b"\0")
        orphaned_during_run = (
            stat[1] == "1"
            and boot + int(stat[19]) / ticks >= started
            and SUITE_PROGRAMS.search(command) is not None
        )
        if carries or orphaned_during_run:
            found.append(f"process {entry.name}: {command[:160]}")
    return found


def containers_left() -> list[str]:
    """The check's containers, and those of its Compose projects."""
    names = "{{.Names}} {{.Image}} {{.Status}}"
    listing = docker("ps", "-a", "--format", names, "--filter", f"label={LABEL}", check=False)
    projects = docker("ps", "-a", "--format", f"{COMPOSE_PROJECT} {{{{.Names}}}}", check=False)
    return [f"container {line}" for line in listing.splitlines()] + [
        f"compose container {line}" for line in projects.splitlines() if line.startswith(PREFIX)
    ]


def metrics_folders_left(started: float, in_use: bytes) -> list[str]:
    """Multiprocess-metrics folders made during the run that no process names any more."""
    found = []
    for folder in Path(tempfile.gettempdir()).glob("nomic-gateway-metrics-*"):
        with contextlib.suppress(OSError):
            if folder.stat().st_ctime >= started and str(folder).encode() not in in_use:
                found.append(f"metrics folder {folder}")
    return found
