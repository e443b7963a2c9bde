"""The fake Nomic (fake_nomic.py, a test double) as processes of this machine, where the
containers reach it on Docker's bridge."""

from __future__ import annotations

import re
import subprocess
import sys

from deploy_checks.gateway_http import http
from deploy_checks.running import ROOT, Failed, docker, free_port, run, wait_until
from deploy_checks.state import Check


def start_fake(check: Check, host: str, latency: float = 0.0) -> str:
    """A fake Nomic listening on ``host``, answering after ``latency`` seconds: its URL."""
    port = free_port(host)
    command = [sys.executable, "-m", "fake_nomic", "--host", host, "--port", str(port)]
    if latency:
        command += ["--latency", str(latency)]
    with (check.work / f"fake-{port}.log").open("wb") as log:
        check.fakes.append(
            subprocess.Popen(command, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        )
    url = f"http://{host}:{port}"
    wait_until(f"the fake Nomic on {url}", lambda: http("GET", url, timeout=2), 30, 0.2)
    return url


def stop_fakes(check: Check) -> None:
    for fake in check.fakes:
        fake.terminate()
        try:
            fake.wait(10)
        except subprocess.TimeoutExpired:
            fake.kill()
            fake.wait()
    check.fakes.clear()


def bridge_address() -> str:
    """The host's address on Docker's default bridge: containers reach the fakes there. The
    network's IPAM gateway when the engine reports one (some versions leave it empty for the
    default bridge), else the IPv4 address of the bridge's own interface (docker0)."""
    address = docker("network", "inspect", "bridge", "-f", "{{(index .IPAM.Config 0).Gateway}}")
    if re.fullmatch(r"[0-9.]+", address):
        return address
    name = docker("network", "inspect", "bridge", "-f",
                  '{{index .Options "com.docker.network.bridge.name"}}') or "docker0"  # fmt: skip
    shown = run("ip", "-4", "-o", "addr", "show", "dev", name, check=False).stdout
    found = re.search(r"inet ([0-9.]+)/", shown)
    if found is None:
        raise Failed(f"no IPv4 gateway on Docker's bridge network ({address!r}, {name}: {shown!r})")
    return found[1]
