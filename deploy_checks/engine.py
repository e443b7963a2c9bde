"""The container engine: the packages the check needs from Debian's archive, and dockerd,
started when no engine answers and stopped again at the end."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from deploy_checks.running import Failed, run
from deploy_checks.state import say

DOCKERD_LOG = Path("/var/log/nomic-gateway-dockerd.log")
PACKAGES = {  # Debian's package: the program it brings
    "docker.io": "dockerd",
    "docker-compose": "docker-compose",
    "debootstrap": "debootstrap",
}
START_SECONDS = 60  # how long dockerd may take to answer

# What a line of dockerd's log says when it carries the cause of a failed start. Its last line
# often does not: "failed to start daemon: ... iptables: Permission denied" can be followed by
# a line of its own holding only " (exit status 4)".
CAUSE = re.compile(r"error|fail|denied|not permitted|cannot", re.IGNORECASE)
CAUSE_LINES = 2  # the last of them: a fatal line, and often the error it follows from


def dockerd_failure(log: str) -> str:
    """Why dockerd would not start, from its log: the last lines naming an error, else its
    last line, each cut to its last 200 characters (where the cause ends up)."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    quoted = [line for line in lines if CAUSE.search(line)][-CAUSE_LINES:] or lines[-1:]
    said = " | ".join(line[-200:] for line in quoted) or "no output"
    return f"dockerd would not start ({said}; {DOCKERD_LOG})"


def engine_answers() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        return run("docker", "info", timeout=20, check=False).returncode == 0
    except Failed:
        return False


def without_test_marker() -> dict[str, str]:
    """This environment without the test run's marker: what a package or dockerd starts is
    the machine's, not a leftover of the tests."""
    return {k: v for k, v in os.environ.items() if k != "NG_TEST_RUN"}


def apt_install(packages: list[str], quiet: bool = False) -> None:
    if not quiet:
        say(f"installing {' '.join(packages)} from Debian's packages")
    env = {**without_test_marker(), "DEBIAN_FRONTEND": "noninteractive"}
    run("apt-get", "update", "-qq", env=env, timeout=600)
    run("apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages,
        env=env, timeout=1200)  # fmt: skip


class Engine:
    """The engine the check runs on: what it installed, and the dockerd it started, if any."""

    def __init__(self) -> None:
        self.installed: list[str] = []
        self.dockerd: subprocess.Popen[bytes] | None = None

    def prepare(self) -> str | None:
        """Install and start what is missing; None when an engine answers, else why not."""
        answers = engine_answers()
        self.install_missing(answers)
        if answers or engine_answers():
            return None
        if os.geteuid() != 0:
            return "no container engine answers, and starting dockerd needs root"
        if not shutil.which("dockerd"):
            return "dockerd is not installed and Debian's docker.io could not be installed"
        return self.start_dockerd()

    def install_missing(self, answers: bool) -> None:
        missing = [package for package, program in PACKAGES.items() if not shutil.which(program)]
        if answers and "docker.io" in missing:
            missing.remove("docker.io")  # an engine of another make runs: leave it be
        if missing and os.geteuid() == 0:
            with contextlib.suppress(Failed):  # what is still missing fails its own step
                apt_install(missing, quiet=True)
                self.installed = missing

    def start_dockerd(self) -> str | None:
        """None once the dockerd started answers; else why it would not start."""
        with DOCKERD_LOG.open("wb") as log:
            self.dockerd = subprocess.Popen(
                ["dockerd"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=without_test_marker(),
            )
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline and self.dockerd.poll() is None:
            if engine_answers():
                return None
            time.sleep(0.5)
        self.stop()
        return dockerd_failure(DOCKERD_LOG.read_text(errors="replace"))

    def stop(self) -> None:
        """Stop the dockerd this run started (none other)."""
        if self.dockerd is None:
            return
        if self.dockerd.poll() is None:
            self.dockerd.terminate()
            try:
                self.dockerd.wait(60)
            except subprocess.TimeoutExpired:
                self.dockerd.kill()
                self.dockerd.wait()
        self.dockerd = None
