"""Running programs and waiting for things: what every stage of the check does."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parent.parent  # the checkout the check builds and runs

T = TypeVar("T")


class Failed(Exception):
    """A check did not hold; the message says what was seen."""


class Fatal(Failed):
    """A check that cannot come true by waiting longer (a container exited, say)."""


def run(
    *command: str,
    timeout: float = 120,
    check: bool = True,
    stdin: str | None = None,
    env: dict[str, str] | None = None,
    cwd: Path = ROOT,
) -> subprocess.CompletedProcess[str]:
    """``command`` run to its end, its output captured; Failed when it outlives ``timeout``, or
    (with ``check``) when it exits other than 0."""
    try:
        result = subprocess.run(
            command,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=env,
            cwd=cwd,
            stdin=None if stdin is not None else subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise Failed(f"{' '.join(command[:3])}: no answer in {timeout:.0f} s") from exc
    if check and result.returncode != 0:
        raise Failed(f"{' '.join(command[:3])} exited {result.returncode}: {tail(result)}")
    return result


def tail(result: subprocess.CompletedProcess[str], lines: int = 8) -> str:
    """The last lines a program printed, on one line."""
    text = (result.stderr or "") + (result.stdout or "")
    return " | ".join(text.strip().splitlines()[-lines:])


def docker(*args: str, timeout: float = 120, check: bool = True) -> str:
    """What ``docker <args>`` prints."""
    return run("docker", *args, timeout=timeout, check=check).stdout.strip()


def wait_until(what: str, probe: Callable[[], T], timeout: float, every: float = 0.5) -> T:
    """Call ``probe`` until it returns something true (returned) or ``timeout`` passes."""
    deadline, last = time.monotonic() + timeout, "no answer"
    while True:
        try:
            value = probe()
            if value:
                return value
        except Fatal:
            raise
        except (Failed, OSError, ValueError, KeyError) as exc:
            last = str(exc)
        if time.monotonic() > deadline:
            raise Failed(f"{what}: not within {timeout:.0f} s ({last})")
        time.sleep(every)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port
