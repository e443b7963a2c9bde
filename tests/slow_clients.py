"""Hostile slow clients against a real ``nomic-gateway serve`` process, for the tests and for
measuring: unfinished headers, dripped headers, slow chunked bodies, answers never read.

``.venv/bin/python -m tests.slow_clients [--scenario headers|slots|unread|all]
[--connections 300]`` starts the fake Nomic and a gateway (default settings, except where a
scenario says) and prints what the gateway's memory and a victim saw.

- headers: ``--connections`` connections each send a request line and 1 MB of header lines
  (126 of 8 KB, within aiohttp's limits per line and per count; ``--head-bytes`` for less)
  and never the blank line; the gateway's resident memory while they are held and after
  they are closed.
- slots: 100 connection slots (``GATEWAY_MAX_CONNECTIONS=100``) held by slow clients that come
  back whenever they are closed: a third drip their headers (no key), a third send a chunked
  body a few bytes a second (with a key), a third ask for a 7.7 MB answer and never read it;
  then a victim tries ten times, each on a new connection.
- unread: ``--connections`` (100) clients each ask for a cached 7.7 MB answer (512 texts) and
  never read it; the gateway's memory, and how victims fare meanwhile (``/healthz``, and another
  team's cached hit of one text).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import socket
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson

from tests.conftest import make_team, serve_fake

MiB = 1024 * 1024
HEADER_LINES = 126  # within aiohttp's 128 header lines
HEADER_LINE_BYTES = 8000  # within its 8 KiB per line
BIG_TEXTS = [f"text number {n}" for n in range(512)]  # answered with 7.7 MB of JSON
SMALL_TEXTS = ["another team's text"]  # a victim's cached hit: 15 KB
SMALL_RCVBUF = 4096  # an attacker that never reads keeps its receive window small


def rss(pid: int, field_name: str = "VmRSS") -> int:
    """A process's resident memory (``VmRSS``), or its peak (``VmHWM``), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field_name}")


def text_request(key: str, texts: list[str]) -> bytes:
    body = orjson.dumps({"texts": texts, "model": "nomic-embed-text-v1.5"})
    return (
        b"POST /v1/embedding/text HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + key.encode() + b"\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


def unfinished_head(total: int) -> bytes:
    """A request line and header lines of about ``total`` bytes, without the blank line."""
    lines = [b"GET /v1/user HTTP/1.1\r\nHost: gw\r\n"]
    size = len(lines[0])
    for number in itertools.count():
        if size >= total or number >= HEADER_LINES:
            break
        line = b"X-Pad-%03d: " % number + b"a" * HEADER_LINE_BYTES + b"\r\n"
        lines.append(line)
        size += len(line)
    return b"".join(lines)


Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]
Hold = Callable[[int], Awaitable[None]]  # one slow client's connection, until it is closed


async def connect(port: int, rcvbuf: int | None = None) -> Streams:
    """A connection to the gateway; ``rcvbuf`` sets a small receive buffer before it connects."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock)


async def send_quietly(writer: asyncio.StreamWriter, data: bytes, seconds: float = 30) -> bool:
    """Write ``data``; False if the gateway closed or reset the connection meanwhile."""
    try:
        writer.write(data)
        await asyncio.wait_for(writer.drain(), seconds)
    except (OSError, TimeoutError):
        return False
    return not writer.is_closing()


async def closed_by_peer(reader: asyncio.StreamReader, seconds: float) -> bytes | None:
    """What the gateway sent before closing, or None if it is still open after ``seconds``."""
    try:
        return await asyncio.wait_for(reader.read(), seconds)
    except TimeoutError:
        return None
    except OSError:
        return b""


@dataclass
class Holders:
    """Slow clients that come back whenever they are closed, until ``stop`` is set."""

    stop: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    writers: set[asyncio.StreamWriter] = field(default_factory=set)
    connections: int = 0  # made so far, the first ones and those that came back
    holding: int = 0  # now past their first bytes

    def start(self, hold: Hold, count: int) -> None:
        for _ in range(count):
            self.tasks.append(asyncio.create_task(self._again(hold)))

    async def _again(self, hold: Hold) -> None:
        while not self.stop.is_set():
            self.connections += 1
            with contextlib.suppress(OSError, TimeoutError, asyncio.IncompleteReadError):
                await hold(self.connections)
            await asyncio.sleep(0.05)  # then come back

    async def close(self) -> None:
        self.stop.set()
        for writer in list(self.writers):
            writer.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    @contextlib.asynccontextmanager
    async def holding_one(self, writer: asyncio.StreamWriter) -> AsyncIterator[None]:
        self.writers.add(writer)
        self.holding += 1
        try:
            yield
        finally:
            self.holding -= 1
            self.writers.discard(writer)
            writer.close()


def drip_headers(port: int, holders: Holders, every: float = 0.5) -> Hold:
    """A slowloris: a request line, then a header a byte every ``every`` seconds, no key."""

    async def hold(number: int) -> None:
        reader, writer = await connect(port)
        async with holders.holding_one(writer):
            writer.write(b"GET /v1/user HTTP/1.1\r\nHost: gw\r\nX-Drip: ")
            while not holders.stop.is_set() and not reader.at_eof():
                await asyncio.sleep(every)
                writer.write(b"a")
                await writer.drain()

    return hold


def slow_body(port: int, key: str, holders: Holders, every: float = 1.0) -> Hold:
    """A chunked image upload with a team key, a few bytes a second, never finished."""

    async def hold(number: int) -> None:
        reader, writer = await connect(port)
        async with holders.holding_one(writer):
            part = (
                b'--b\r\nContent-Disposition: form-data; name="images"; filename="i"\r\n'
                b"Content-Type: image/png\r\n\r\n"
            )
            writer.write(
                b"POST /v1/embedding/image HTTP/1.1\r\nHost: gw\r\n"
                b"Authorization: Bearer " + key.encode() + b"\r\n"
                b"Content-Type: multipart/form-data; boundary=b\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n" % len(part) + part + b"\r\n"
            )
            while not holders.stop.is_set() and not reader.at_eof():
                writer.write(b"2\r\nab\r\n")  # an image's bytes, two a second
                await writer.drain()
                await asyncio.sleep(every)

    return hold


def unread_answer(port: int, request: bytes, holders: Holders) -> Hold:
    """Asks for a big answer and never reads it (a small receive window), until closed."""

    async def hold(number: int) -> None:
        reader, writer = await connect(port, rcvbuf=SMALL_RCVBUF)
        async with holders.holding_one(writer):
            writer.write(request)
            await writer.drain()
            while not holders.stop.is_set():
                # Never reads: only looks whether the gateway closed it (an RST arrives as an
                # error on the next write; a FIN stays behind the unread answer).
                await asyncio.sleep(0.5)
                if writer.transport.is_closing():
                    return
                with contextlib.suppress(OSError):
                    sock = writer.get_extra_info("socket")
                    if sock is not None and sock.fileno() >= 0:
                        error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                        if error:
                            return
                if reader.exception() is not None or reader.at_eof():
                    return

    return hold


async def victim_request(port: int, request: bytes, seconds: float = 10) -> tuple[int, float]:
    """One request on a new connection: its status (0: closed or reset without an answer,
    -1: no answer within ``seconds``) and how long the answer took."""
    started = time.monotonic()
    try:
        reader, writer = await asyncio.wait_for(connect(port), seconds)
    except (OSError, TimeoutError):
        return 0, time.monotonic() - started
    try:
        writer.write(request)
        line = await asyncio.wait_for(reader.readline(), seconds)
        if not line.startswith(b"HTTP/1.1 "):
            return 0, time.monotonic() - started
        return int(line.split()[1]), time.monotonic() - started
    except TimeoutError:
        return -1, time.monotonic() - started
    except OSError:
        return 0, time.monotonic() - started
    finally:
        writer.close()


async def first_status(reader: asyncio.StreamReader) -> str:
    """The status of what the gateway answered first on a connection (reading its first
    bytes only), "reset" if it closed or reset it, "nothing" if it answered nothing yet."""
    try:
        line = await asyncio.wait_for(reader.read(12), 0.05)
    except TimeoutError:
        return "nothing"
    except OSError:
        return "reset"
    return line[9:12].decode() if line.startswith(b"HTTP/1.1 ") else "reset"


def victim_get(key: str) -> bytes:
    return (
        b"GET /v1/user HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer " + key.encode() + b"\r\n\r\n"
    )


# --- measuring -------------------------------------------------------------------------------


async def measure_headers(connections: int, env: dict[str, str], size: int = 1024 * 1024) -> None:
    from tests.test_server_functional import serving

    with tempfile.TemporaryDirectory() as workdir:
        async with serve_fake() as fake, serving(fake, Path(workdir), **env) as gateway:
            pid = gateway.process.pid
            await asyncio.sleep(0.5)
            before = rss(pid)
            head = unfinished_head(size)
            streams: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
            started = time.monotonic()
            try:
                for batch in range(0, connections, 50):
                    opened = await asyncio.gather(
                        *(connect(gateway.port) for _ in range(min(50, connections - batch)))
                    )
                    streams += opened
                    await asyncio.gather(*(send_quietly(w, head, 20) for _, w in opened))
                sent = time.monotonic() - started
                await asyncio.sleep(1)
                held, peak = rss(pid), rss(pid, "VmHWM")
                answers = await asyncio.gather(*(closed_by_peer(r, 0.2) for r, _ in streams))
            finally:
                for _, writer in streams:
                    writer.close()
            await asyncio.sleep(3)
            after = rss(pid)
            statuses = [
                a[9:12].decode() if a else ("open" if a is None else "closed") for a in answers
            ]
            counts = {s: statuses.count(s) for s in sorted(set(statuses))}
            print(
                f"headers: {connections} connections x {len(head)} bytes of unfinished headers "
                f"(sent in {sent:.1f} s): RSS {before / MiB:.0f} MiB before, "
                f"{held / MiB:.0f} MiB held 1 s later (+{(held - before) / MiB:.0f}), "
                f"peak +{(peak - before) / MiB:.0f} MiB, {after / MiB:.0f} MiB 3 s after they "
                f"closed (+{(after - before) / MiB:.0f}); what they got: {counts}"
            )


async def team_key(url: str) -> str:
    """A new team on the gateway at ``url``, and its key."""
    async with aiohttp.ClientSession() as session:
        return await make_team(session, url, f"t{time.time_ns()}")


async def cache_big_answer(url: str, key: str) -> int:
    """Ask for 512 texts once (read in full): the 7.7 MB answer is cached from now on. Its
    size."""
    async with aiohttp.ClientSession() as session, session.post(
        url + "/v1/embedding/text", json={"texts": BIG_TEXTS, "model": "nomic-embed-text-v1.5"},
        headers={"Authorization": f"Bearer {key}"},
    ) as response:  # fmt: skip
        assert response.status == 200, await response.text()
        return len(await response.read())


def hold_every_slot(port: int, key: str) -> dict[str, Holders]:
    """100 slow clients, a third of each kind: dripping headers (no key), a chunked body two
    bytes a second (with ``key``), and never reading the big answer."""
    kinds = {"drip": Holders(), "body": Holders(), "unread": Holders()}
    kinds["drip"].start(drip_headers(port, kinds["drip"]), 34)
    kinds["body"].start(slow_body(port, key, kinds["body"]), 33)
    big = text_request(key, BIG_TEXTS)
    kinds["unread"].start(unread_answer(port, big, kinds["unread"]), 33)
    return kinds


async def measure_slots(env: dict[str, str]) -> None:
    from tests.test_server_functional import serving

    env = {"GATEWAY_MAX_CONNECTIONS": "100", **env}
    with tempfile.TemporaryDirectory() as workdir:
        async with serve_fake() as fake, serving(fake, Path(workdir), **env) as gateway:
            key = await team_key(gateway.url)
            await cache_big_answer(gateway.url, key)
            kinds = hold_every_slot(gateway.port, key)
            try:
                await asyncio.sleep(5)  # every slot taken, and its holder past any grace
                victim = victim_get(key)
                results = []
                for _ in range(10):
                    results.append(await victim_request(gateway.port, victim))
                    await asyncio.sleep(0.5)
                seen = {name: (h.connections, h.holding) for name, h in kinds.items()}
            finally:
                await asyncio.gather(*(h.close() for h in kinds.values()))
            served = sum(1 for status, _ in results if status == 200)
            print(
                f"slots: 100 slots held by slow clients (connections made, holding at the "
                f"end: {seen}): the victim was served {served} of 10 times; "
                f"statuses {[s for s, _ in results]}, seconds "
                f"{[round(t, 2) for _, t in results]}"
            )


async def measure_unread(connections: int, env: dict[str, str]) -> None:
    from tests.test_server_functional import serving

    with tempfile.TemporaryDirectory() as workdir:
        async with serve_fake() as fake, serving(fake, Path(workdir), **env) as gateway:
            pid = gateway.process.pid
            key = await team_key(gateway.url)
            size = await cache_big_answer(gateway.url, key)
            await asyncio.sleep(0.5)
            before = rss(pid)
            other = await team_key(gateway.url)
            hit = text_request(other, SMALL_TEXTS)
            assert (await victim_request(gateway.port, hit))[0] == 200  # cached from now on
            request = text_request(key, BIG_TEXTS)
            streams = []
            try:
                for batch in range(0, connections, 25):
                    opened = await asyncio.gather(*(
                        connect(gateway.port, rcvbuf=SMALL_RCVBUF)
                        for _ in range(min(25, connections - batch))
                    ))  # fmt: skip
                    streams += opened
                    for _, writer in opened:
                        writer.write(request)
                (status, seconds), (hit_status, hit_seconds) = await asyncio.gather(
                    victim_request(gateway.port, b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n"),
                    victim_request(gateway.port, hit),
                )
                await asyncio.sleep(5)
                held, peak = rss(pid), rss(pid, "VmHWM")
                late_status, late_seconds = await victim_request(
                    gateway.port, b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n"
                )
                got = await asyncio.gather(*(first_status(r) for r, _ in streams))
            finally:
                for _, writer in streams:
                    writer.close()
            await asyncio.sleep(3)
            after = rss(pid)
            print(
                f"unread: {connections} clients never reading a {size / 1e6:.1f} MB answer: "
                f"RSS {before / MiB:.0f} MiB before, {held / MiB:.0f} MiB 5 s in "
                f"(+{(held - before) / MiB:.0f}), peak +{(peak - before) / MiB:.0f} MiB, "
                f"{after / MiB:.0f} MiB 3 s after they closed (+{(after - before) / MiB:.0f}); "
                f"what they got: {dict(sorted(Counter(got).items()))}; during the flood a "
                f"victim's /healthz: "
                f"{status} in {seconds:.2f} s, another team's cached hit: {hit_status} in "
                f"{hit_seconds:.2f} s; 5 s in /healthz: {late_status} in {late_seconds:.2f} s"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=["headers", "slots", "unread", "all"], default="all")
    parser.add_argument("--connections", type=int, default=None)
    parser.add_argument(
        "--head-bytes", type=int, default=1024 * 1024, help="headers: bytes each connection sends"
    )
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the gateway")
    args = parser.parse_args()
    env = dict(item.split("=", 1) for item in args.env)
    env.setdefault("GATEWAY_LOG_LEVEL", "warning")
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    async def run() -> None:
        if args.scenario in ("headers", "all"):
            await measure_headers(args.connections or 300, env, args.head_bytes)
        if args.scenario in ("slots", "all"):
            await measure_slots(env)
        if args.scenario in ("unread", "all"):
            await measure_unread(args.connections or 100, env)

    asyncio.run(run())
    sys.stdout.flush()


if __name__ == "__main__":
    main()
