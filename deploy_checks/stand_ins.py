"""Stand-ins for base images that cannot be pulled here: a Debian bookworm with Python
(debootstrap), for the Dockerfile's python:3.11-slim, and on it Debian's redis-server,
prometheus and prometheus-alertmanager for Compose's services. Each is labelled as a stand-in
and kept, tagged as the image it stands for, so that later runs reuse it."""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import NamedTuple

from deploy_checks.debian import configure_stand_in, debian_mirror
from deploy_checks.engine import apt_install
from deploy_checks.running import Failed, docker, run, tail
from deploy_checks.state import Check

STAND_IN = "nomic-gateway.stand-in"  # on every stand-in image
STAND_IN_BASE = "nomic-gateway-stand-in:bookworm"
BASE_PACKAGES = "python3,python3-venv,python3-pip,python-is-python3,ca-certificates"
BASE_SETTINGS = (  # what python:3.11-slim's image says, for ``docker import``
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    'CMD ["python3"]',
)
APT_INSTALL = (
    "RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
    "--no-install-recommends"
)


class Recipe(NamedTuple):
    """A service's stand-in: Debian's package, installed on the stand-in base."""

    package: str
    dockerfile: str  # after FROM
    files: dict[str, str]  # executable files in the build context, by name


# The official image's redis-server starts without protected mode (its build patches the
# default); Debian's refuses other containers without it.
REDIS_ENTRYPOINT = """\
#!/bin/sh
if [ "${1#-}" != "$1" ]; then set -- redis-server "$@"; fi
if [ "$1" = redis-server ]; then
  shift; set -- redis-server --protected-mode no "$@"
fi
exec "$@"
"""

RECIPES = {
    "redis": Recipe(
        package="redis-server",
        dockerfile=(
            f"{APT_INSTALL} redis-server redis-tools >/dev/null "
            "&& rm -rf /var/lib/apt/lists/* && mkdir -p /data && chown redis:redis /data\n"
            "COPY docker-entrypoint.sh /usr/local/bin/\n"
            "WORKDIR /data\nUSER redis\nEXPOSE 6379\n"
            'ENTRYPOINT ["docker-entrypoint.sh"]\nCMD ["redis-server"]\n'
        ),
        files={"docker-entrypoint.sh": REDIS_ENTRYPOINT},
    ),
    "prometheus": Recipe(
        package="prometheus",
        dockerfile=(
            f"{APT_INSTALL} prometheus >/dev/null && rm -rf /var/lib/apt/lists/* "
            "&& mkdir -p /prometheus && chown nobody:nogroup /prometheus\n"
            "USER nobody\nWORKDIR /prometheus\nEXPOSE 9090\n"
            'ENTRYPOINT ["/bin/prometheus"]\n'
            'CMD ["--config.file=/etc/prometheus/prometheus.yml", '
            '"--storage.tsdb.path=/prometheus"]\n'
        ),
        files={},
    ),
    "alertmanager": Recipe(
        package="prometheus-alertmanager",
        dockerfile=(
            f"{APT_INSTALL} prometheus-alertmanager >/dev/null "
            "&& rm -rf /var/lib/apt/lists/* && ln -s /usr/bin/prometheus-alertmanager "
            "/usr/local/bin/alertmanager && mkdir -p /alertmanager "
            "&& chown nobody:nogroup /alertmanager\n"
            "USER nobody\nWORKDIR /alertmanager\nEXPOSE 9093\n"
            'ENTRYPOINT ["/usr/local/bin/alertmanager"]\n'
            'CMD ["--config.file=/etc/alertmanager/alertmanager.yml", '
            '"--storage.path=/alertmanager"]\n'
        ),
        files={},
    ),
}


def image_labels(image: str) -> dict[str, str] | None:
    """The image's labels; None when it is not here."""
    result = run("docker", "image", "inspect", "-f", "{{json .Config.Labels}}", image, check=False)
    if result.returncode != 0:
        return None
    labels: dict[str, str] = json.loads(result.stdout) or {}
    return labels


def build_python_stand_in(check: Check, image: str) -> None:
    """``image`` tagged on the stand-in base, built first if it is not here yet."""
    if image_labels(STAND_IN_BASE) is None:
        if not shutil.which("debootstrap"):
            apt_install(["debootstrap"])
        build_stand_in_base(check)
    docker("tag", STAND_IN_BASE, image)


def build_stand_in_base(check: Check) -> None:
    """debootstrap bookworm with Python into a folder, imported as the stand-in base."""
    rootfs, mirror = check.work / "rootfs", debian_mirror()
    run("debootstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", "bookworm",
        str(rootfs), mirror, timeout=1200)  # fmt: skip
    configure_stand_in(rootfs)
    label = f'LABEL {STAND_IN}="debootstrap bookworm, python3 from Debian ({mirror})"'
    changes = [f"--change={change}" for change in (*BASE_SETTINGS, label)]
    tar = subprocess.Popen(
        ["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE
    )
    imported = subprocess.run(
        ["docker", "import", *changes, "-", STAND_IN_BASE],
        stdin=tar.stdout,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if tar.stdout is not None:
        tar.stdout.close()
    tar.wait()
    shutil.rmtree(rootfs, ignore_errors=True)
    if imported.returncode != 0 or tar.returncode != 0:
        raise Failed(f"docker import: {tail(imported)}")


def build_service_stand_in(check: Check, service: str, image: str) -> None:
    """``image`` built from the service's recipe on the stand-in base."""
    if image_labels(STAND_IN_BASE) is None:
        build_python_stand_in(check, STAND_IN_BASE)
    context = check.work / f"stand-in-{service}"
    context.mkdir()
    recipe = RECIPES[service]
    for name, text in recipe.files.items():
        (context / name).write_text(text)
        (context / name).chmod(0o755)
    (context / "Dockerfile").write_text(f"FROM {STAND_IN_BASE}\n{recipe.dockerfile}")
    label = f"{STAND_IN}=Debian's {recipe.package} on {STAND_IN_BASE}"
    run("docker", "build", "-q", "--label", label, "-t", image, str(context), timeout=900)
