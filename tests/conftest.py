"""Fixtures: a real redis-server on a free port, the fake Nomic, and gateways on both stores."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import redis
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import create_app
from gateway.config import Settings
from tests.fake_nomic import FAKE_API_KEY, FakeNomic

STORES = ("memory", "redis")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A redis-server of the suite's own, on a free port, gone at the end of the session."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed: run the README's test command, it installs it")
    port = free_port()
    with tempfile.TemporaryDirectory() as workdir:
        process = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", workdir],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        url = f"redis://127.0.0.1:{port}/0"
        client = redis.Redis.from_url(url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or process.poll() is not None:
                    process.kill()
                    pytest.fail("redis-server did not start")
                time.sleep(0.02)
        client.close()
        yield url
        process.terminate()
        process.wait(10)


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    yield client
    client.close()


@pytest.fixture(params=STORES)
def store_url(request: pytest.FixtureRequest) -> str | None:
    """Every test using this runs once on the embedded store and once on a flushed Redis."""
    if request.param == "memory":
        return None
    request.getfixturevalue("redis_client")
    url: str = request.getfixturevalue("redis_url")
    return url


@pytest.fixture
async def fake_nomic() -> AsyncIterator[FakeNomic]:
    fake = FakeNomic()
    server = TestServer(fake.app, host="127.0.0.1")
    await server.start_server()
    fake.url = str(server.make_url("")).rstrip("/")  # type: ignore[attr-defined]
    yield fake
    await server.close()


def gateway_settings(fake: FakeNomic, store_url: str | None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "nomic_api_key": FAKE_API_KEY,
        "upstream_url": fake.url,  # type: ignore[attr-defined]
        "redis_url": store_url,
        "upstream_timeout_seconds": 5.0,
        **overrides,
    }
    return Settings(**values)


GatewayFactory = Callable[..., Any]


@pytest.fixture
async def make_gateway(
    fake_nomic: FakeNomic, store_url: str | None
) -> AsyncIterator[GatewayFactory]:
    """Start gateways (settings overridable) in front of the fake, on the parametrized store."""
    clients: list[TestClient[Any, Any]] = []

    async def start(**overrides: Any) -> TestClient[Any, Any]:
        app = create_app(gateway_settings(fake_nomic, store_url, **overrides))
        client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.close()


@pytest.fixture
async def gateway(make_gateway: GatewayFactory) -> TestClient[Any, Any]:
    client: TestClient[Any, Any] = await make_gateway()
    return client
