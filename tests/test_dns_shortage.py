"""A name lookup that fails for want of descriptors is the gateway's shortage, not Nomic's
failure: no retry, and the circuit breaker does not count it."""

from __future__ import annotations

import socket
import subprocess
import sys

import aiohttp
import pytest

from gateway.errors import LocalResourceError

# Runs in a process of its own: it fills its descriptor table, then calls Nomic by a name
# that must be looked up. Prints the error the call raised, and its outcome.
_PROGRAM = """
import asyncio, os, resource, socket, sys
import aiohttp
from gateway.models import Spec
from gateway.upstream import NomicClient

async def main(fill):
    "x".encode("idna")  # imported before the fill; so is the resolver's thread, as it is
    await asyncio.get_running_loop().getaddrinfo("127.0.0.1", 1)  # in a serving gateway
    async with aiohttp.ClientSession() as session:
        client = NomicClient(session, "http://nomic-gateway-test.invalid", "nk-x")
        held = []
        if fill:
            resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
            try:
                while True:
                    held.append(os.open(os.devnull, os.O_RDONLY))
            except OSError:
                pass
        try:
            await client.embed(Spec("nomic-embed-vision-v1.5", "image"), [b"\\x89PNG"])
        except Exception as exc:
            for fd in held:
                os.close(fd)
            print(type(exc).__name__, client.last_outcome)

asyncio.run(main(sys.argv[1] == "fill"))
"""


def _call_nomic(fill: str) -> str:
    done = subprocess.run([sys.executable, "-c", _PROGRAM, fill], capture_output=True,
                          text=True, timeout=60, check=True)  # fmt: skip
    return done.stdout.strip()


def test_a_lookup_failing_for_want_of_descriptors_is_a_local_shortage() -> None:
    assert _call_nomic("fill") == "LocalResourceError local_resources"


def test_a_name_that_does_not_resolve_is_still_nomic_unreachable() -> None:
    assert _call_nomic("no fill") == "UpstreamServerError connection"


@pytest.mark.parametrize("code", [socket.EAI_NONAME, socket.EAI_AGAIN])
def test_a_lookup_failure_with_descriptors_to_spare_is_not_local(code: int) -> None:
    key: object = None
    error = aiohttp.ClientConnectorDNSError(key, socket.gaierror(code, "lookup failed"))  # type: ignore[arg-type]
    assert not LocalResourceError.behind(error)
