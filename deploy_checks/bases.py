"""The images the check needs besides the gateway's: the Dockerfile's base and Compose's
services, each the real image where it is here or can be pulled, else a stand-in."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import NamedTuple

import yaml

from deploy_checks.running import ROOT, Failed, run
from deploy_checks.stand_ins import (
    STAND_IN,
    build_python_stand_in,
    build_service_stand_in,
    image_labels,
)
from deploy_checks.state import Check, say

PULL_TIMEOUT = 20
SERVICES = ("redis", "prometheus", "alertmanager")  # Compose's, each with a stand-in


class Images(NamedTuple):
    """The images of a run, by role."""

    base: str  # the Dockerfile's
    redis: str
    prometheus: str
    alertmanager: str
    grafana: str | None  # Compose runs without it where it cannot be pulled


def dockerfile() -> str:
    return (ROOT / "deploy" / "Dockerfile").read_text()


def build_stages() -> list[str]:
    """The Dockerfile's named stages (``FROM ... AS name``), in order."""
    return re.findall(r"^FROM\s+.*\s+AS\s+(\S+)", dockerfile(), re.MULTILINE | re.IGNORECASE)


def base_images() -> list[str]:
    """What the Dockerfile's stages are built FROM, but its own stages."""
    froms = re.findall(r"^FROM\s+(?:--\S+\s+)*(\S+)", dockerfile(), re.MULTILINE)
    return sorted(set(froms) - set(build_stages()))


def compose_images() -> dict[str, str]:
    """Each service of docker-compose.yml that names an image: that image."""
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    return {name: service["image"] for name, service in services.items() if "image" in service}


def needed_images(check: Check) -> Images:
    """Every image the check needs, a step each; stand-ins built where they cannot be pulled."""
    bases = base_images()
    for base in bases:
        with check.step(f"image {base} (the Dockerfile's base)") as notes:
            notes.append(ensure_image(base, functools.partial(build_python_stand_in, check)))
    compose = compose_images()
    for service in SERVICES:
        image = compose[service]
        with check.step(f"image {image} (Compose's {service})") as notes:
            stand_in = functools.partial(build_service_stand_in, check, service)
            notes.append(ensure_image(image, stand_in))
    return Images(
        base=bases[0],
        redis=compose["redis"],
        prometheus=compose["prometheus"],
        alertmanager=compose["alertmanager"],
        grafana=pulled_grafana(compose["grafana"]),
    )


def pulled_grafana(image: str) -> str | None:
    if pull(image):
        say(f"ok   image {image} (Compose's grafana, pulled)")
        return image
    say(
        f"skip image {image}: it cannot be pulled here and Debian does not package "
        "Grafana; Compose runs without it"
    )
    return None


def pull(image: str) -> bool:
    try:
        pulled = run("docker", "pull", "-q", image, timeout=PULL_TIMEOUT, check=False)
    except Failed:
        return False
    return pulled.returncode == 0


def ensure_image(image: str, build_stand_in: Callable[[str], None]) -> str:
    """The real image where it is here or can be pulled, else a stand-in; which it is."""
    labels = image_labels(image)
    if labels is not None and STAND_IN not in labels:
        return "the real one, already here"
    if pull(image):
        return "pulled"
    if labels is not None:
        return f"cannot be pulled: the stand-in of an earlier run ({labels[STAND_IN]})"
    build_stand_in(image)
    labels = image_labels(image) or {}
    return f"cannot be pulled: stand-in built ({labels.get(STAND_IN)})"
