"""The Compose stack (docker-compose.yml) brought up on this machine: the gateway answering on
127.0.0.1 with the upstream passed in, Redis set for a cache, Prometheus and Alertmanager
(monitoring.py), and ``docker-compose down -v`` leaving nothing."""

from __future__ import annotations

import os
import shutil

from deploy_checks.bases import Images
from deploy_checks.fakes import start_fake
from deploy_checks.gateway_http import http, miss_then_hit
from deploy_checks.monitoring import alerts_reach_alertmanager, rules_loaded, scraped
from deploy_checks.running import Failed, docker, free_port, run, wait_until
from deploy_checks.state import PREFIX, Check, Compose
from fake_nomic import FAKE_API_KEY

PUBLISHED = ("gateway", "prometheus", "alertmanager", "grafana")  # each on a free port
REDIS_MAXMEMORY = 256 * 2**20


def compose_run(check: Check, images: Images, bridge: str) -> None:
    """The stage's steps, in order: each after the one before it held."""
    ports = {name: free_port() for name in PUBLISHED}
    stack = Compose(f"{PREFIX}{check.id}", stack_env(check, start_fake(check, bridge), ports))
    services = ["gateway", "redis", "prometheus", "alertmanager"]
    if images.grafana is not None:
        services.append("grafana")
    with check.step(f"docker-compose up -d {' '.join(services)}"):
        if not shutil.which("docker-compose"):
            raise Failed("docker-compose is not installed (Debian's docker-compose)")
        check.stacks.append(stack)
        compose(stack, "up", "--detach", "--build", *services, timeout=900)
    base = f"http://127.0.0.1:{ports['gateway']}"
    with check.step("Compose's gateway answers MISS then HIT on 127.0.0.1, upstream passed in"):
        for service, port in (("gateway", 8080), ("prometheus", 9090)):
            address = compose(stack, "port", service, str(port))
            if not address.startswith("127.0.0.1:"):
                raise Failed(f"{service} is published on {address}, not on 127.0.0.1 only")
        wait_until("the gateway's /readyz", lambda: http("GET", f"{base}/readyz")[0] == 200, 90)
        miss_then_hit(base, check.admin_token, check.next_seed())
    with check.step("Compose's Redis: maxmemory set, policy noeviction"):
        redis_is_a_cache(stack)
    prometheus = f"http://127.0.0.1:{ports['prometheus']}"
    with check.step("Prometheus scrapes the gateway with its metrics token: target up"):
        scraped(base, prometheus)
    with check.step("Prometheus loaded every alert and recording rule of rules.yml"):
        rules_loaded(prometheus)
    with check.step("Prometheus sends alerts to Alertmanager, which loaded its receiver"):
        alerts_reach_alertmanager(prometheus, f"http://127.0.0.1:{ports['alertmanager']}")
    with check.step("docker-compose down -v"):
        compose_down(check, stack)
        left = docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={stack.project}")
        volumes = docker("volume", "ls", "-q", "--filter", f"name={stack.project}_")
        if left or volumes:
            raise Failed(f"left behind: containers {left.split()}, volumes {volumes.split()}")


def stack_env(check: Check, upstream: str, ports: dict[str, int]) -> dict[str, str]:
    """docker-compose's environment: this one without gateway settings, and the stack's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "NOMIC_"))}
    env.update(
        NOMIC_API_KEY=FAKE_API_KEY,
        GATEWAY_ADMIN_TOKEN=check.admin_token,
        GATEWAY_METRICS_TOKEN=check.metrics_token,
        GATEWAY_UPSTREAM_URL=upstream,  # passed through by the compose file
        REDIS_MAXMEMORY="256mb",
        COMPOSE_PROJECT_NAME=f"{PREFIX}{check.id}",
        **{f"PUBLISH_{name.upper()}": f"127.0.0.1:{port}" for name, port in ports.items()},
    )
    return env


def compose(stack: Compose, *args: str, timeout: float = 300) -> str:
    return run("docker-compose", *args, env=stack.env, timeout=timeout).stdout.strip()


def redis_is_a_cache(stack: Compose) -> None:
    policy, memory = (
        compose(stack, "exec", "-T", "redis", "redis-cli", "config", "get", name)
        for name in ("maxmemory-policy", "maxmemory")
    )
    if policy.split()[-1] != "noeviction" or memory.split()[-1] != str(REDIS_MAXMEMORY):
        raise Failed(f"maxmemory-policy {policy.split()}, maxmemory {memory.split()}")


def compose_down(check: Check, stack: Compose) -> None:
    """The stack removed, with its volumes and the images it built."""
    compose(stack, "down", "--volumes", "--rmi", "local", "--remove-orphans")
    check.stacks = [other for other in check.stacks if other.project != stack.project]
