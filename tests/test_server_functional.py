"""``nomic-gateway serve`` as a real process under hostile connections: malformed requests
answered in Nomic's shape without echoing a byte, silent and slow clients timed out, and
idle connections past the descriptor limit shed instead of starving everyone."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import resource
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from fake_nomic import FAKE_API_KEY, FakeNomic, png
from gateway.teams import new_key
from tests.conftest import ADMIN_TOKEN, free_port, make_team
from tests.helpers import image_form
from tests.test_cli import clean_env, wait_healthy
from tests.test_operations import sample

IDLE_CONNECTIONS = 1100
GATEWAY_NOFILE = 1024


@dataclass
class Gateway:
    process: asyncio.subprocess.Process
    url: str
    port: int
    log: Path

    def lines(self) -> list[str]:
        return self.log.read_text().splitlines()


def _limit_descriptors(count: int) -> Callable[[], None]:
    def limit() -> None:  # in the child, before exec
        resource.setrlimit(resource.RLIMIT_NOFILE, (count, count))

    return limit


@contextlib.asynccontextmanager
async def serving(
    fake: FakeNomic, tmp_path: Path, nofile: int | None = None, **env: str
) -> AsyncIterator[Gateway]:
    """A ``serve`` process in front of ``fake`` (admin API on), stopped with SIGTERM (killed
    if it does not stop) at the end; its log (stderr) is ``Gateway.log``."""
    port = free_port()
    environment = clean_env(
        NOMIC_API_KEY=FAKE_API_KEY, GATEWAY_UPSTREAM_URL=fake.url,  # type: ignore[attr-defined]
        GATEWAY_ADMIN_TOKEN=ADMIN_TOKEN, GATEWAY_UPSTREAM_RATE_CALLS="100000",
        GATEWAY_UPSTREAM_RATE_PERIOD_SECONDS="1", GATEWAY_UPSTREAM_RATE_BURST="1000",
        # A data directory of its own, run by pytest or not (tests.slow_clients).
        **{"GATEWAY_DATA_DIR": str(tmp_path / f"data-{port}"), **env},
    )  # fmt: skip
    log_path = tmp_path / f"gateway-{port}.log"
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "serve", "--port", str(port), env=environment,
            stdout=asyncio.subprocess.DEVNULL, stderr=log,
            preexec_fn=None if nofile is None else _limit_descriptors(nofile),
        )  # fmt: skip
    gateway = Gateway(process, f"http://127.0.0.1:{port}", port, log_path)
    try:
        async with aiohttp.ClientSession() as session:
            await wait_healthy(session, gateway.url)
        yield gateway
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def exchange(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``raw`` on a new connection; the answer's status, headers and body, read until
    the gateway closes the connection (within 5 s, or this fails)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        data = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in header_lines)
    return int(status_line.split()[1]), {k.lower(): v for k, v in headers.items()}, body


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.text()


def _requests(team_key: str) -> dict[str, tuple[bytes, int, list[str]]]:
    """Malformed requests carrying secrets, the status and ``loc`` each must get."""
    auth = f"Authorization: Bearer {team_key}".encode()
    admin = f"Authorization: Bearer {ADMIN_TOKEN}".encode()
    get = b"GET /v1/user HTTP/1.1\r\nHost: gw\r\n"
    post = b"POST /v1/embedding/image HTTP/1.1\r\nHost: gw\r\n"
    return {
        "control byte": (get + auth + b"\x01\r\n\r\n", 400, ["header"]),
        "DEL in the admin token": (get + admin + b"\x7f\r\n\r\n", 400, ["header"]),
        "NUL": (get + auth + b"\x00x\r\n\r\n", 400, ["header"]),
        "header line over 8 KiB": (get + auth + b"a" * 9000 + b"\r\n\r\n", 431, ["header"]),
        "too many headers": (
            get + auth + b"\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(200)) + b"\r\n",
            431,
            ["header"],
        ),
        "bad Content-Length": (
            post + auth + b"\r\nContent-Length: 12" + team_key.encode() + b"\r\n\r\n",
            400,
            ["header", "content-length"],
        ),
        "obsolete line folding": (
            get + b"Authorization: Bearer\r\n " + team_key.encode() + b"\r\n\r\n",
            400,
            ["header"],
        ),
        "bad request line": (
            f"GET /{team_key} HTTP/9.x\r\nHost: gw\r\n\r\n".encode(),
            400,
            ["request"],
        ),
        "request line over 8 KiB": (
            f"GET /{team_key}{'a' * 9000} HTTP/1.1\r\n\r\n".encode(),
            414,
            ["request"],
        ),
        "header name with a space": (
            get + b"Authorization : Bearer " + team_key.encode() + b"\r\n\r\n",
            400,
            ["header"],
        ),
        "TLS on the HTTP port": (b"\x16\x03\x01\x02\x00\x01" + team_key.encode(), 400, ["request"]),
    }


async def test_malformed_requests_get_nomic_shaped_errors_that_echo_no_secret(
    fake_nomic: FakeNomic, tmp_path: Path
) -> None:
    team_key = new_key()  # any nk- key: the parser refuses before any lookup
    async with serving(fake_nomic, tmp_path, GATEWAY_LOG_LEVEL="debug") as gateway:
        for name, (raw, status, loc) in _requests(team_key).items():
            got, headers, body = await exchange(gateway.port, raw)
            assert got == status, name
            assert headers["content-type"].startswith("application/json"), name
            [detail] = json.loads(body)["detail"]
            assert detail["loc"] == loc, name
            assert detail["type"] == "protocol_error"
            assert detail["msg"].startswith("malformed HTTP request: "), name
            for secret in (team_key, ADMIN_TOKEN, "Bearer", "nk-"):
                assert secret.encode() not in body, (name, secret)
        assert (await get(gateway.url + "/healthz"))[0] == 200  # and the gateway serves on
    log = gateway.log.read_text()
    for secret in (team_key, ADMIN_TOKEN, team_key[:12], FAKE_API_KEY):
        assert secret not in log
    assert "Traceback" not in log
    refused = [line for line in log.splitlines() if "malformed HTTP request" in line]
    assert 1 <= len(refused) <= len(_requests(team_key))  # one generic line each, at most


async def test_a_silent_or_slow_client_is_closed_after_the_header_timeout(
    fake_nomic: FakeNomic, tmp_path: Path
) -> None:
    async with serving(fake_nomic, tmp_path, GATEWAY_HEADER_TIMEOUT_SECONDS="1") as gateway:

        async def seconds_until_closed(first: bytes, drip: bytes = b"") -> float:
            started = time.monotonic()
            reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
            try:
                writer.write(first)
                for byte in drip:  # a slowloris: one byte every 0.2 s, never the blank line
                    await asyncio.sleep(0.2)
                    if reader.at_eof() or reader.exception() is not None:
                        break  # closed: by a FIN, or by a RST if a byte crossed the close
                    writer.write(bytes([byte]))
                with contextlib.suppress(ConnectionResetError):  # a byte sent as it closed
                    assert await asyncio.wait_for(reader.read(), 10) == b""
            finally:
                writer.close()
            return time.monotonic() - started

        silent, slow = await asyncio.gather(
            seconds_until_closed(b""),
            seconds_until_closed(b"GET /healthz HTTP/1.1\r\n", b"Host: gw\r\nX-Slow: " + b"a" * 40),
        )
        assert 0.8 < silent < 3
        assert 0.8 < slow < 3

        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        try:  # a keep-alive pause is not a slow request: aiohttp's keep-alive timeout rules
            for _ in range(2):
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
                assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"HTTP/1.1 200")
                await asyncio.wait_for(reader.readuntil(b"}"), 5)
                await asyncio.sleep(1.5)
        finally:
            writer.close()
        _, text = await get(gateway.url + "/metrics")
        assert sample(text, "gateway_connections_shed_total", reason="header_timeout") == 2


async def test_at_the_bound_the_longest_idle_connection_goes_or_a_new_one_is_refused(
    fake_nomic: FakeNomic, tmp_path: Path
) -> None:
    env = {"GATEWAY_MAX_CONNECTIONS": "3", "GATEWAY_HEADER_TIMEOUT_SECONDS": "30"}
    async with serving(fake_nomic, tmp_path, **env) as gateway:
        await asyncio.sleep(0.2)  # the health check's connection is gone
        streams = [await asyncio.open_connection("127.0.0.1", gateway.port) for _ in range(3)]
        try:
            for _, writer in streams:  # busy: each is sending its request line
                writer.write(b"GET /healthz HTTP/1.1\r\n")
            await asyncio.sleep(0.5)  # read by the gateway: not idle any more
            refused = await asyncio.open_connection("127.0.0.1", gateway.port)
            assert await asyncio.wait_for(refused[0].read(), 5) == b""  # none idle: closed
            refused[1].close()

            oldest_reader, oldest_writer = streams[0]
            oldest_writer.write(b"Host: gw\r\n\r\n")  # answered, then idle on keep-alive
            assert (await asyncio.wait_for(oldest_reader.readline(), 5)).startswith(b"HTTP/1.1 200")
            await asyncio.wait_for(oldest_reader.readuntil(b"}"), 5)
            newcomer = await asyncio.open_connection("127.0.0.1", gateway.port)
            streams.append(newcomer)
            assert await asyncio.wait_for(oldest_reader.read(), 5) == b""  # shed for it
            newcomer[1].write(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
            assert (await asyncio.wait_for(newcomer[0].readline(), 5)).startswith(b"HTTP/1.1 200")
            for reader, writer in streams[1:3]:  # the busy ones were left alone
                writer.write(b"Host: gw\r\n\r\n")
                assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"HTTP/1.1 200")
        finally:
            for _, writer in streams:
                writer.close()


@contextlib.contextmanager
def descriptors_at_least(count: int) -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= count:
        yield
        return
    if hard != resource.RLIM_INFINITY and hard < count:
        pytest.skip(f"this test needs {count} descriptors; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (count, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_idle_connections_past_the_descriptor_limit_starve_no_one(
    fake_nomic: FakeNomic, tmp_path: Path
) -> None:
    """The incident: thousands of idle connections took every descriptor; /healthz and every
    team hung, the connection to Nomic failed and opened the breaker, asyncio logged 185 MB."""
    with descriptors_at_least(IDLE_CONNECTIONS + 400):
        async with serving(fake_nomic, tmp_path, nofile=GATEWAY_NOFILE) as gateway:
            idle: list[asyncio.StreamWriter] = []
            try:
                for _ in range(IDLE_CONNECTIONS // 100):
                    opened = await asyncio.gather(*(
                        asyncio.open_connection("127.0.0.1", gateway.port) for _ in range(100)
                    ))  # fmt: skip
                    idle += [writer for _, writer in opened]
                started = time.monotonic()
                async with aiohttp.ClientSession() as session:
                    key = await asyncio.wait_for(make_team(session, gateway.url, "newcomer"), 30)
                    async with session.post(
                        gateway.url + "/v1/embedding/image", data=image_form([png(4242)]),
                        headers={"Authorization": f"Bearer {key}"},
                        timeout=aiohttp.ClientTimeout(total=30),
                    ) as response:  # fmt: skip
                        assert response.status == 200, await response.text()
                        assert response.headers["X-Cache"] == "MISS"
                    answered = time.monotonic() - started
                    async with session.get(gateway.url + "/healthz") as response:
                        assert response.status == 200
                    async with session.get(gateway.url + "/metrics") as response:
                        text = await response.text()
            finally:
                for writer in idle:
                    writer.close()
    print(f"\n{IDLE_CONNECTIONS} idle connections: the newcomer's miss answered in "
          f"{answered:.2f} s; {len(gateway.lines())} log lines")  # fmt: skip
    assert answered < 30
    assert len(fake_nomic.calls) == 1
    assert sample(text, "gateway_upstream_breaker_state") == 0
    assert sample(text, "gateway_upstream_calls_total", outcome="200") == 1
    assert sample(text, "gateway_connections_shed_total", reason="idle") > 0
    bound = int(re.search(r"at most (\d+) client connections", gateway.log.read_text())[1])
    assert sample(text, "gateway_connections_open") <= bound < GATEWAY_NOFILE
    lines = gateway.lines()
    assert len(lines) < 200
    log = "\n".join(lines)
    assert "Traceback" not in log
    assert "Nomic is failing" not in log
    assert key not in log


async def _open_quietly(port: int) -> asyncio.StreamWriter | None:
    """A connection, or None if the gateway cannot accept it (no descriptor left)."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 3)
    except (OSError, TimeoutError):
        return None
    return writer


async def test_when_descriptors_run_out_anyway_nomic_is_not_blamed_and_the_log_stays_small(
    fake_nomic: FakeNomic, tmp_path: Path
) -> None:
    """Defence in depth, with a bound set too high for the descriptor limit: the call to
    Nomic finds no descriptor (a 503 of the gateway's, not a Nomic failure: no retry, the
    breaker stays closed) and asyncio's accept() error is logged ten times, not thousands."""
    env = {"GATEWAY_MAX_CONNECTIONS": "5000", "GATEWAY_HEADER_TIMEOUT_SECONDS": "60"}
    with descriptors_at_least(IDLE_CONNECTIONS + 400):
        async with serving(fake_nomic, tmp_path, nofile=GATEWAY_NOFILE, **env) as gateway:
            idle: list[asyncio.StreamWriter | None] = []
            try:
                async with aiohttp.ClientSession() as session:  # connected before the flood
                    key = await make_team(session, gateway.url, "early")
                    for _ in range(IDLE_CONNECTIONS // 100):
                        idle += await asyncio.gather(
                            *(_open_quietly(gateway.port) for _ in range(100))
                        )
                    async with session.post(
                        gateway.url + "/v1/embedding/image", data=image_form([png(4343)]),
                        headers={"Authorization": f"Bearer {key}"},
                    ) as response:  # fmt: skip
                        assert response.status == 503
                        [detail] = (await response.json())["detail"]
                        assert detail["type"] == "gateway_overloaded"
                    async with session.get(gateway.url + "/metrics") as response:
                        text = await response.text()
            finally:
                for writer in idle:
                    if writer is not None:
                        writer.close()
    assert not fake_nomic.calls
    assert sample(text, "gateway_upstream_calls_total", outcome="local_resources") == 1
    assert sample(text, "gateway_upstream_retries_total") == 0
    assert sample(text, "gateway_upstream_breaker_state") == 0
    lines = gateway.lines()
    accept_errors = [line for line in lines if "socket.accept() out of system resource" in line]
    assert 1 <= len(accept_errors) <= 11  # ten, and the count of those suppressed
    assert "similar lines suppressed" in accept_errors[-1]
    assert len(lines) < 200
