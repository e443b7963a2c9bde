"""The image run as deploy/k8s/deployment.yaml runs it (its security context, volumes and
ConfigMap, as ``docker run`` flags), with GATEWAY_WORKERS=2 on a Redis: healthy, its processes
the pod's user, its probes answering, MISS then HIT."""

from __future__ import annotations

from typing import Any, NamedTuple

import yaml

from deploy_checks.containers import gateway_env, process_uids, published, start, wait_healthy
from deploy_checks.fakes import start_fake
from deploy_checks.gateway_http import http, miss_then_hit
from deploy_checks.running import ROOT, Failed, docker, wait_until
from deploy_checks.state import IMAGE, Check


class Pod(NamedTuple):
    """What the manifests say of the gateway's pod."""

    container: dict[str, Any]  # the Deployment's one container
    flags: list[str]  # docker run flags for its security context and volumes
    user: str  # the user it runs as
    config: dict[str, str]  # the ConfigMap's environment

    @property
    def port(self) -> int:
        return int(self.config["GATEWAY_PORT"])


def manifests() -> dict[str, Any]:
    """deploy/k8s's documents, by kind."""
    return {
        doc["kind"]: doc
        for path in sorted((ROOT / "deploy" / "k8s").glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    }


def pod_of(documents: dict[str, Any]) -> Pod:
    pod = documents["Deployment"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    context = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    flags = []
    if context.get("readOnlyRootFilesystem"):
        flags.append("--read-only")
    flags += [f"--cap-drop={cap}" for cap in context.get("capabilities", {}).get("drop", [])]
    if context.get("allowPrivilegeEscalation") is False:
        flags.append("--security-opt=no-new-privileges")
    if "runAsUser" in context:
        flags.append(f"--user={context['runAsUser']}:{context.get('runAsGroup', 0)}")
    for mount in container.get("volumeMounts", []):
        if "emptyDir" in volumes[mount["name"]]:
            flags.append(f"--tmpfs={mount['mountPath']}:rw,nosuid,nodev,mode=1777")
    user = str(context.get("runAsUser", "10001"))
    return Pod(container, flags, user, dict(documents["ConfigMap"]["data"]))


def kubernetes_run(check: Check, redis_image: str, bridge: str) -> None:
    """The stage's steps, in order: each after the one before it held."""
    pod = pod_of(manifests())
    fast = start_fake(check, bridge)
    with check.step("Redis for the Kubernetes-style run"):
        network = check.name("net")
        docker("network", "create", "--label", check.label, network)
        redis = start(check, "redis", "--network", network, redis_image,
                      "redis-server", "--save", "", "--appendonly", "no")  # fmt: skip
        wait_until(
            "redis-cli ping",
            lambda: docker("exec", redis, "redis-cli", "ping", check=False) == "PONG",
            30,
        )
    flags = " ".join(pod.flags)
    with check.step(f"run as Kubernetes does ({flags}), GATEWAY_WORKERS=2: healthy"):
        config = {**pod.config, "GATEWAY_WORKERS": "2",
                  "GATEWAY_REDIS_URL": f"redis://{redis}:6379/0"}  # fmt: skip
        pod_env = [f"--env={k}={v}" for k, v in config.items()]
        k8s = start(check, "k8s", "--network", network, "--publish", f"127.0.0.1::{pod.port}",
                    *pod.flags, *pod_env, *gateway_env(check, fast), IMAGE)  # fmt: skip
        wait_healthy(k8s, 60)
        uids = process_uids(k8s)
        if len(uids) < 3 or set(uids) != {pod.user}:
            raise Failed(f"expected a supervisor and 2 workers as the pod's user: {uids}")
    base = published(k8s, pod.port)
    with check.step("its probes answer (readiness, liveness) and MISS then HIT over Redis"):
        for probe in ("readinessProbe", "livenessProbe"):
            path = pod.container[probe]["httpGet"]["path"]
            status, _, text = http("GET", base + path)
            if status != 200:
                raise Failed(f"{probe} {path}: {status} {text[:200]!r}")
        miss_then_hit(base, check.admin_token, check.next_seed())
