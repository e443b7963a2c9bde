"""A debootstrapped Debian tree made to behave like python:3.11-slim on this machine's network:
the Debian archive this machine uses, its apt sources and settings, CA certificates and pip
settings; pip allowed outside a virtualenv."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import ssl
from pathlib import Path

WASTE = ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man")


def debian_mirror() -> str:
    """The Debian archive this machine's apt uses (deb.debian.org if none is named)."""
    for source in apt_source_files():
        text = source.read_text()
        for uri in re.findall(r"^\s*(?:deb\s+(?:\[[^]]*\]\s+)?|URIs:\s*)(\S+)", text, re.M):
            if re.search(r"/debian/?$", uri):
                return str(uri)
    return "http://deb.debian.org/debian"


def apt_source_files() -> list[Path]:
    paths = [Path("/etc/apt/sources.list")]
    paths += sorted(Path("/etc/apt/sources.list.d").glob("*.list"))
    paths += sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    return [p for p in paths if p.is_file()]


def configure_stand_in(rootfs: Path) -> None:
    """Set the tree up as the module's docstring says, and drop what no image needs."""
    copy_apt_settings(rootfs)
    copy_certificates(rootfs)
    write_pip_settings(rootfs)
    for marker in rootfs.glob("usr/lib/python3*/EXTERNALLY-MANAGED"):
        marker.unlink()
    remove_waste(rootfs)


def copy_apt_settings(rootfs: Path) -> None:
    """This machine's apt sources (those whose keyrings the tree has) and Acquire settings."""
    apt = rootfs / "etc/apt"
    if apt_source_files():
        (apt / "sources.list").unlink(missing_ok=True)  # the machine's say where, instead
    for source in apt_source_files():
        text = source.read_text()
        keyrings = re.findall(r"(?:Signed-By:\s*|signed-by=)(/\S+?)(?:\]|\s|$)", text)
        if all((rootfs / keyring.lstrip("/")).exists() for keyring in keyrings):
            shutil.copy(source, apt / source.relative_to("/etc/apt"))
    for conf in Path("/etc/apt/apt.conf.d").glob("*"):
        if conf.is_file() and re.search(r"Acquire::", conf.read_text(errors="replace")):
            shutil.copy(conf, apt / "apt.conf.d" / conf.name)


def copy_certificates(rootfs: Path) -> None:
    bundle = Path(ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt")
    if bundle.is_file():
        shutil.copy(bundle, rootfs / "etc/ssl/certs/ca-certificates.crt")
    local_cas = Path("/usr/local/share/ca-certificates")
    if local_cas.is_dir():
        shutil.copytree(local_cas, rootfs / local_cas.relative_to("/"), dirs_exist_ok=True)


def write_pip_settings(rootfs: Path) -> None:
    """This machine's pip settings (files and PIP_* variables) as the tree's /etc/pip.conf."""
    if Path("/etc/xdg/pip").is_dir():
        shutil.copytree("/etc/xdg/pip", rootfs / "etc/xdg/pip", dirs_exist_ok=True)
    pip = configparser.RawConfigParser()
    pip.read(["/etc/pip.conf"])
    if not pip.has_section("global"):
        pip.add_section("global")
    for name, value in os.environ.items():
        if not name.startswith("PIP_"):
            continue
        key = name[4:].lower().replace("_", "-")
        paths = [v for v in value.split() if v.startswith(("/", "file://"))]
        if all((rootfs / v.removeprefix("file://").lstrip("/")).exists() for v in paths):
            pip.set("global", key, value)  # host paths that exist in the tree too, or none
    with (rootfs / "etc/pip.conf").open("w") as out:
        pip.write(out)


def remove_waste(rootfs: Path) -> None:
    for waste in WASTE:
        for path in (rootfs / waste).glob("*"):
            if (path.is_symlink() or path.is_file()) and path.name != "lock":
                path.unlink()
            elif path.is_dir() and path.name != "partial":
                shutil.rmtree(path)
