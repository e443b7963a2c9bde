"""The gateway's image: built from deploy/Dockerfile, and what it holds (its build context,
its user, its releases, its layers)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from locks import canonical, pins
from packaging.markers import Marker

from deploy_checks.bases import build_stages
from deploy_checks.containers import once
from deploy_checks.running import Failed, docker, run
from deploy_checks.state import IMAGE, Check

CONTEXT = {"pyproject.toml", "README.md", "requirements", "gateway"}  # .dockerignore's allowlist
CONTEXT_LOCKS = {"run.lock", "build.lock"}

# Run by the image's Python: every distribution installed, and what a lock's markers ask of it.
INSTALLED = """
import importlib.metadata, json, os, platform, sys
print(json.dumps({
    "installed": [[d.metadata["Name"], d.version] for d in importlib.metadata.distributions()],
    "environment": {
        "python_full_version": platform.python_version(),
        "python_version": ".".join(platform.python_version_tuple()[:2]),
        "implementation_name": sys.implementation.name,
        "platform_python_implementation": platform.python_implementation(),
        "platform_machine": platform.machine(), "platform_system": platform.system(),
        "sys_platform": sys.platform, "os_name": os.name,
    },
}))
"""


def build(check: Check) -> None:
    with check.step("build the image from deploy/Dockerfile"):
        # Each earlier stage tagged too: kept as the next run's build cache.
        for stage in build_stages():
            run("docker", "build", "-q", "-f", "deploy/Dockerfile", "--target", stage,
                "-t", f"{IMAGE}-{stage}", ".", timeout=900)  # fmt: skip
        run("docker", "build", "-q", "-f", "deploy/Dockerfile", "-t", IMAGE, ".", timeout=900)


def check_context(check: Check, base: str) -> None:
    with check.step("the build context is only pyproject.toml, README.md, two locks, gateway/"):
        probe = check.name("context")
        check.temporary_images.append(probe)
        run("docker", "build", "-q", "-f", "-", "-t", probe, ".",
            stdin=f"FROM {base}\nCOPY . /context\n", timeout=300)  # fmt: skip
        listing = once(check, probe, "find", "/context", "-mindepth", "1", "-maxdepth", "1")
        top = {Path(line).name for line in listing.splitlines()}
        caches = once(check, probe, "find", "/context", "-name", "__pycache__")
        locks = once(check, probe, "find", "/context/requirements", "-type", "f")
        locks_sent = {Path(line).name for line in locks.splitlines()}
        if top != CONTEXT or caches:
            raise Failed(f"the context holds {sorted(top)} {caches.split()[:3]}")
        if locks_sent != CONTEXT_LOCKS:
            raise Failed(f"the context holds requirements/{sorted(locks_sent)}")


def check_user(check: Check) -> None:
    with check.step("the image's USER is a number, not root's"):
        user = docker("image", "inspect", "-f", "{{.Config.User}}", IMAGE)
        if not re.fullmatch(r"[0-9]+(:[0-9]+)?", user) or int(user.split(":")[0]) == 0:
            raise Failed(f"USER is {user!r}: Kubernetes' runAsNonRoot needs a number, not 0")


def check_locked(check: Check) -> None:
    with check.step("the image holds exactly the releases of requirements/run.lock"):
        seen = json.loads(once(check, IMAGE, "python", "-c", INSTALLED))
        environment = seen["environment"]
        locked = pins("run.lock", lambda marker: Marker(marker).evaluate(environment))
        want = {name: version for name, (version, _) in locked.items()}
        have = {canonical(name): version for name, version in seen["installed"]}
        have.pop("nomic-gateway", None)
        if have != want:
            extra = sorted(f"{n}=={v}" for n, v in have.items() if want.get(n) != v)
            missing = sorted(f"{n}=={v}" for n, v in want.items() if have.get(n) != v)
            raise Failed(f"installed but not locked: {extra}; locked, not installed: {missing}")


def check_layers(check: Check, base: str) -> None:
    with check.step("the image's layers hold no dead weight (files a later layer removed)"):
        sizes = {
            image: int(docker("image", "inspect", "-f", "{{.Size}}", image))
            for image in (IMAGE, base)
        }
        layers = sizes[IMAGE] - sizes[base]
        files = exported_bytes(check, IMAGE) - exported_bytes(check, base)
        # The tar stream counts headers too: files look bigger than they are, never smaller.
        # (The wheels a later RUN deleted weighed 4.8 MB here: they fail this.)
        if layers > files * 1.02 + 500_000:
            raise Failed(f"its layers add {layers} bytes to the base for {files} of files")


def exported_bytes(check: Check, image: str) -> int:
    """The size of the image's flattened filesystem (as a tar stream)."""
    container = docker("create", "--label", check.label, image)
    try:
        export = subprocess.Popen(["docker", "export", container], stdout=subprocess.PIPE)
        total = 0
        assert export.stdout is not None
        while chunk := export.stdout.read(1 << 20):
            total += len(chunk)
        if export.wait(60) != 0:
            raise Failed(f"docker export {image} failed")
        return total
    finally:
        docker("rm", container, check=False)
