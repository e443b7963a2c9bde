"""Containers the check starts: named and labelled as this run's, so the clean-up finds them."""

from __future__ import annotations

import json

from deploy_checks.running import Failed, Fatal, docker, run, tail, wait_until
from deploy_checks.state import Check
from fake_nomic import FAKE_API_KEY


def once(check: Check, image: str, program: str, *args: str) -> str:
    """What ``program`` prints in a new container of ``image``, removed after."""
    return docker("run", "--rm", "--label", check.label, "--entrypoint", program, image, *args)


def start(check: Check, what: str, *args: str) -> str:
    """A container started in the background (``docker run <args>``); its name."""
    name = check.name(what)
    docker("run", "--detach", "--name", name, "--label", check.label, *args)
    return name


def published(container: str, port: int) -> str:
    """The URL where the container's ``port`` is published on the host."""
    address = docker("port", container, f"{port}/tcp").splitlines()[0]
    return f"http://{address}"


def gateway_env(check: Check, upstream: str) -> list[str]:
    """``docker run`` flags: the gateway's secrets, and the fake Nomic at ``upstream``."""
    env = {
        "NOMIC_API_KEY": FAKE_API_KEY,
        "GATEWAY_UPSTREAM_URL": upstream,
        "GATEWAY_ADMIN_TOKEN": check.admin_token,
        "GATEWAY_METRICS_TOKEN": check.metrics_token,
    }
    return [f"--env={k}={v}" for k, v in env.items()]


def wait_healthy(container: str, timeout: float) -> None:
    """Until the image's HEALTHCHECK says healthy; Fatal when the container exits or turns
    unhealthy, with the end of its log."""
    try:
        wait_until(f"{container} healthy", lambda: is_healthy(container), timeout, 0.5)
    except Fatal:
        raise
    except Failed as exc:
        logs = run("docker", "logs", "--tail", "5", container, check=False)
        raise Failed(f"{exc}; its log: {tail(logs, 5)}") from None


def is_healthy(container: str) -> bool:
    state = json.loads(docker("inspect", "-f", "{{json .State}}", container))
    if not state["Running"]:
        logs = run("docker", "logs", "--tail", "5", container, check=False)
        raise Fatal(f"{container} exited {state['ExitCode']}: {tail(logs, 5)}")
    health = state.get("Health") or {}
    if health.get("Status") == "unhealthy":
        output = str(health.get("Log", [{}])[-1].get("Output")).strip().splitlines()[-1:]
        raise Fatal(f"{container} unhealthy: {output}")
    return bool(health.get("Status") == "healthy")


def process_uids(container: str) -> list[str]:
    """The user id of each process in the container."""
    lines = docker("top", container, "-o", "pid,uid").splitlines()[1:]
    return [line.split()[1] for line in lines if line.strip()]
