"""What one upstream call costs the gateway's process, beside other HTTP clients.

``.venv/bin/python -m tests.bench.upstream_client [--calls 2000] [--rounds 3]``

A server on CPU 1 answers every POST at once with the fake Nomic's answer for one 49 KB PNG
(about 15 KB of JSON), after reading the body; each client runs in a process of its own on
CPU 0 and makes ``--calls`` sequential calls over one kept-alive connection (after 200 not
counted), each posting that image as multipart and parsing the answer with orjson. Printed:
the client process's CPU time per call (``time.process_time``, the event loop included) and
the call's p50 and p99 wall time, medians over ``--rounds`` rounds run in turns. Clients
whose library is not installed (httpx and sniffio, uvloop: not dependencies of the project)
are left out.

The rows: the gateway's own ``NomicClient`` (aiohttp, its ``_Multipart`` payload, metrics,
the answer's checks); aiohttp posting the same multipart as one ``bytes``, as the gateway's
``_Multipart`` with nothing else of ``NomicClient``, as that payload with its parts joined
into one write (``_Coalesced`` below, not the gateway's), as ``FormData``, with no total timeout,
with no automatic decompression, without keep-alive; ``NomicClient`` on uvloop, and with
aiohttp's pure-Python parser; httpx's ``AsyncClient`` (multipart by ``files=`` and as bytes);
and a hand-written HTTP/1.1 exchange on asyncio streams, a floor for reference, never for use.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import os
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Literal, NamedTuple

import aiohttp
import orjson
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from fake_nomic import FAKE_API_KEY, FakeNomic, png
from gateway.upstream import _SLICE_BYTES, IMAGE_PATH, NomicClient, _Multipart
from tests.bench import harness
from tests.conftest import free_port

MODEL = harness.MODEL
WARMUP = 200
SERVER_CPU, CLIENT_CPU = "1", "0"
Call = Callable[[], Awaitable[object]]
Client = Callable[[str], contextlib.AbstractAsyncContextManager[Call]]
Body = Literal["bytes", "form", "payload", "coalesced"]
CONTENT_TYPE = f"multipart/form-data; boundary={harness.BOUNDARY}"  # of harness.multipart()


def image() -> bytes:
    return png(1, size=128)  # 49,353 bytes, as in the benchmark


def answer() -> bytes:
    tokens = {"prompt_tokens": 10, "total_tokens": 10}
    return orjson.dumps({"embeddings": [FakeNomic.embedding(MODEL, image())], "usage": tokens,
                         "model": MODEL})  # fmt: skip


def embeddings(data: bytes) -> object:
    return orjson.loads(data)["embeddings"]


async def serve(port: int) -> None:
    reply = answer()

    async def handle(request: web.BaseRequest) -> web.Response:
        await request.read()
        return web.Response(body=reply, content_type="application/json")

    server = web.Server(handle, access_log=None)
    await asyncio.get_running_loop().create_server(server, "127.0.0.1", port)
    await asyncio.Event().wait()


# The clients: each an async context yielding one call, made again and again.


@contextlib.asynccontextmanager
async def gateway(base: str) -> AsyncIterator[Call]:
    timeout = aiohttp.ClientTimeout(total=60)  # as gateway/app.py opens its session
    async with aiohttp.ClientSession(timeout=timeout, raise_for_status=False) as session:
        client = NomicClient(session, base, FAKE_API_KEY)
        picture = image()
        yield lambda: client.embed(MODEL, "image", [picture])


def _aiohttp(
    as_: Body = "bytes", *, timeout: bool = True, decompress: bool = True, keepalive: bool = True
) -> Client:
    @contextlib.asynccontextmanager
    async def client(base: str) -> AsyncIterator[Call]:
        headers = {"Authorization": f"Bearer {FAKE_API_KEY}"}
        picture = image()
        limit = aiohttp.ClientTimeout(total=60) if timeout else aiohttp.ClientTimeout()
        connector = aiohttp.TCPConnector(force_close=not keepalive)
        async with aiohttp.ClientSession(
            timeout=limit, auto_decompress=decompress, connector=connector
        ) as http:

            async def call() -> object:
                if as_ == "form":
                    data = aiohttp.FormData()
                    data.add_field("model", MODEL)
                    data.add_field("images", picture, filename="image.png",
                                   content_type="image/png")  # fmt: skip
                    post = http.post(base + IMAGE_PATH, data=data, headers=headers)
                elif as_ in ("payload", "coalesced"):
                    kind = _Multipart if as_ == "payload" else _Coalesced
                    payload = kind(MODEL, [picture])
                    post = http.post(base + IMAGE_PATH, data=payload, headers=headers)
                else:
                    post = http.post(base + IMAGE_PATH, data=harness.multipart([picture]),
                                     headers={**headers, "Content-Type": CONTENT_TYPE})  # fmt: skip
                async with post as response:
                    return embeddings(await response.read())

            yield call

    return client


class _Coalesced(_Multipart):
    """The gateway's payload, its parts joined into writes of up to ``_SLICE_BYTES``: one
    write (one send) for a small body instead of one per part, and still no whole copy."""

    async def write(self, writer: AbstractStreamWriter) -> None:
        pending: list[memoryview] = []
        size = 0
        for part in self._parts:
            view = memoryview(part)
            while view:
                piece, view = view[: _SLICE_BYTES - size], view[_SLICE_BYTES - size :]
                pending.append(piece)
                size += len(piece)
                if size == _SLICE_BYTES:
                    await writer.write(b"".join(pending))
                    pending, size = [], 0
        if pending:
            await writer.write(b"".join(pending))


def _httpx(*, files: bool) -> Client:
    @contextlib.asynccontextmanager
    async def client(base: str) -> AsyncIterator[Call]:
        import httpx

        headers = {"Authorization": f"Bearer {FAKE_API_KEY}"}
        picture = image()
        async with httpx.AsyncClient(timeout=60) as http:

            async def call() -> object:
                if files:
                    images = {"images": ("image.png", picture, "image/png")}
                    post = http.post(base + IMAGE_PATH, headers=headers, data={"model": MODEL},
                                     files=images)  # fmt: skip
                else:
                    post = http.post(base + IMAGE_PATH, content=harness.multipart([picture]),
                                     headers={**headers, "Content-Type": CONTENT_TYPE})  # fmt: skip
                return embeddings((await post).content)

            yield call

    return client


@contextlib.asynccontextmanager
async def streams(base: str) -> AsyncIterator[Call]:
    """HTTP/1.1 by hand: Content-Length answers only, no chunking, no errors handled."""
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    picture = image()

    async def call() -> object:
        data = harness.multipart([picture])
        writer.write(
            f"POST {IMAGE_PATH} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Authorization: Bearer {FAKE_API_KEY}\r\nContent-Type: {CONTENT_TYPE}\r\n"
            f"Content-Length: {len(data)}\r\n\r\n".encode()
        )
        writer.write(data)
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))  # fmt: skip
        return embeddings(await reader.readexactly(length))

    try:
        yield call
    finally:
        writer.close()


# httpcore tries `import sniffio` on every request; anyio no longer brings it, and without it
# each call pays failed imports (about 0.6 ms here), which would be measured instead of httpx.
HTTPX = ("httpx", "sniffio")


class Variant(NamedTuple):
    label: str
    client: Client
    needs: tuple[str, ...] = ()  # modules that must be installed
    env: dict[str, str] = {}  # noqa: RUF012 (read only)
    uvloop: bool = False


VARIANTS = {
    "gateway": Variant("gateway NomicClient (aiohttp, _Multipart)", gateway),
    "aiohttp-bytes": Variant("aiohttp, body as one bytes", _aiohttp()),
    "aiohttp-payload": Variant("aiohttp, the gateway's _Multipart alone", _aiohttp("payload")),
    "aiohttp-coalesced": Variant("aiohttp, _Multipart with its parts joined in one write",
                                 _aiohttp("coalesced")),
    "aiohttp-formdata": Variant("aiohttp, FormData", _aiohttp("form")),
    "aiohttp-no-timeout": Variant("aiohttp, bytes, no total timeout", _aiohttp(timeout=False)),
    "aiohttp-no-decompress": Variant("aiohttp, bytes, auto_decompress=False",
                                     _aiohttp(decompress=False)),
    "aiohttp-no-keepalive": Variant("aiohttp, bytes, a new connection a call",
                                    _aiohttp(keepalive=False)),
    "gateway-uvloop": Variant("gateway NomicClient on uvloop", gateway, ("uvloop",), uvloop=True),
    "gateway-pure-python": Variant("gateway NomicClient, aiohttp without C extensions", gateway,
                                   env={"AIOHTTP_NO_EXTENSIONS": "1"}),
    "httpx-files": Variant("httpx AsyncClient, files=", _httpx(files=True), HTTPX),
    "httpx-bytes": Variant("httpx AsyncClient, body as one bytes", _httpx(files=False), HTTPX),
    "streams": Variant("asyncio streams by hand (reference only)", streams),
}  # fmt: skip


class Measured(NamedTuple):
    cpu_us: float
    p50_ms: float
    p99_ms: float


async def measure(variant: Variant, base: str, calls: int) -> Measured:
    async with variant.client(base) as call:
        for _ in range(WARMUP):
            await call()
        took = []
        cpu = time.process_time()
        for _ in range(calls):
            started = time.perf_counter()
            await call()
            took.append(time.perf_counter() - started)
        cpu = time.process_time() - cpu
    cuts = statistics.quantiles(took, n=100)
    return Measured(cpu / calls * 1e6, cuts[49] * 1000, cuts[98] * 1000)


def one(name: str, base: str, calls: int) -> None:
    """Run in the client's own process: measure, print the result as JSON."""
    variant = VARIANTS[name]
    if variant.uvloop:
        import uvloop

        result = uvloop.run(measure(variant, base, calls))
    else:
        result = asyncio.run(measure(variant, base, calls))
    print(orjson.dumps(result._asdict()).decode())


def _installed(modules: tuple[str, ...]) -> bool:
    return all(importlib.util.find_spec(module) is not None for module in modules)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="measured calls per run")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each client, in turns")
    parser.add_argument("--only", nargs="*", choices=list(VARIANTS), help="these clients only")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--client", choices=list(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--base", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve))
    elif args.client:
        one(args.client, args.base, args.calls)
    else:
        compare(args)


def compare(args: argparse.Namespace) -> None:
    names = [name for name in args.only or VARIANTS if _installed(VARIANTS[name].needs)]
    missing = [name for name in args.only or VARIANTS if name not in names]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    module = [sys.executable, "-m", "tests.bench.upstream_client"]
    results: dict[str, list[Measured]] = {name: [] for name in names}
    with harness.process([*module, "--serve", str(port)], cpus=SERVER_CPU) as server:
        harness.wait_http(base + "/", server)
        for _ in range(args.rounds):
            for name in names:
                run = [*module, "--client", name, "--base", base, "--calls", str(args.calls)]
                env = {**os.environ, **VARIANTS[name].env}
                out = subprocess.run(["taskset", "-c", CLIENT_CPU, *run], env=env, check=True,
                                     capture_output=True, timeout=600).stdout  # fmt: skip
                results[name].append(Measured(**orjson.loads(out)))
    print(table(results, args))
    if missing:
        print(f"\nleft out, their library not installed: {', '.join(missing)}")


def table(results: dict[str, list[Measured]], args: argparse.Namespace) -> str:
    gateway_runs = results.get("gateway")
    reference = statistics.median(m.cpu_us for m in gateway_runs) if gateway_runs else None
    lines = [
        f"{len(image()):,}-byte PNG, {args.calls:,} sequential calls a run after {WARMUP}, "
        f"medians of {args.rounds} runs; client on CPU {CLIENT_CPU}, server on CPU {SERVER_CPU}",
        "",
        "| client | CPU us/call | fewest, most | x gateway | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|",
    ]
    for name, runs in results.items():
        cpu = statistics.median(m.cpu_us for m in runs)
        ratio = f"{cpu / reference:.2f}" if reference else ""
        p50, p99 = (statistics.median(getattr(m, f) for m in runs) for f in ("p50_ms", "p99_ms"))
        spread = f"{min(m.cpu_us for m in runs):.0f}, {max(m.cpu_us for m in runs):.0f}"
        cells = [VARIANTS[name].label, f"{cpu:.0f}", spread, ratio, f"{p50:.3f}", f"{p99:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
