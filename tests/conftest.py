"""Fixtures: a real redis-server on a free port, the fake Nomic, and gateways on both stores."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
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


def spawn_redis(port: int, workdir: str) -> subprocess.Popen[bytes]:
    """A redis-server of the suite's own on ``port``, answering PING when this returns."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed: run the README's test command, it installs it")
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    client = redis.Redis(port=port)
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
    return process


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The session's redis-server, on a free port, gone at the end of the session."""
    port = free_port()
    with tempfile.TemporaryDirectory() as workdir:
        process = spawn_redis(port, workdir)
        yield f"redis://127.0.0.1:{port}/0"
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
        # Tests of other things should not wait on Nomic's real rate, nor retry the faults
        # they inject; the shield's own tests set these back.
        "upstream_rate_calls": 100_000,
        "upstream_rate_period_seconds": 1.0,
        "upstream_rate_burst": 1000,
        "upstream_max_attempts": 1,
        "breaker_failures": 1000,
        **overrides,
    }
    return Settings(**values)


GatewayFactory = Callable[..., Any]
ADMIN_TOKEN = "admin-token-for-tests-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def make_team(
    session: aiohttp.ClientSession, base: str, team_id: str = "test", **fields: Any
) -> str:
    """Create ``team_id`` (if new) through the admin API and give it a new key."""
    body = {"id": team_id, "name": team_id.title(), **fields}
    async with session.post(f"{base}/admin/teams", json=body, headers=ADMIN) as response:
        assert response.status in (201, 409), await response.text()
    async with session.post(f"{base}/admin/teams/{team_id}/keys", headers=ADMIN) as response:
        assert response.status == 201, await response.text()
        key: str = (await response.json())["key"]
    return key


async def team_headers(client: TestClient[Any, Any], team_id: str, **fields: Any) -> dict[str, str]:
    """Make a team on the gateway behind ``client``; the headers that authenticate as it."""
    key = await make_team(client.session, client.base, team_id, **fields)  # type: ignore[attr-defined]
    return {"Authorization": f"Bearer {key}"}


async def admin_get(client: TestClient[Any, Any], path: str) -> Any:
    response = await client.get(path, headers=ADMIN)
    assert response.status == 200, await response.text()
    return await response.json()


async def start_gateway(
    fake: FakeNomic, store_url: str | None, **overrides: Any
) -> TestClient[Any, Any]:
    """A gateway in front of ``fake`` with team ``test`` (no limits), whose key it sends by
    default (``client.team_key``); ``client.base`` is its URL."""
    settings = gateway_settings(fake, store_url, admin_token=ADMIN_TOKEN, **overrides)
    server = TestServer(create_app(settings), host="127.0.0.1")
    await server.start_server()
    base = str(server.make_url("")).rstrip("/")
    try:
        async with aiohttp.ClientSession() as session:
            key = await make_team(session, base)
    except BaseException:
        await server.close()
        raise
    client: TestClient[Any, Any] = TestClient(server, headers={"Authorization": f"Bearer {key}"})
    await client.start_server()
    client.team_key = key  # type: ignore[attr-defined]
    client.base = base  # type: ignore[attr-defined]
    return client


@pytest.fixture
async def make_gateway(
    fake_nomic: FakeNomic, store_url: str | None
) -> AsyncIterator[GatewayFactory]:
    """Start gateways (settings overridable) in front of the fake, on the parametrized store."""
    clients: list[TestClient[Any, Any]] = []

    async def start(**overrides: Any) -> TestClient[Any, Any]:
        clients.append(await start_gateway(fake_nomic, store_url, **overrides))
        return clients[-1]

    yield start
    for client in clients:
        await client.close()


@pytest.fixture
async def make_redis_gateway(
    fake_nomic: FakeNomic, redis_client: redis.Redis, redis_url: str
) -> AsyncIterator[GatewayFactory]:
    """Start gateways that share the suite's (flushed) Redis, as replicas do."""
    clients: list[TestClient[Any, Any]] = []

    async def start(**overrides: Any) -> TestClient[Any, Any]:
        clients.append(await start_gateway(fake_nomic, redis_url, **overrides))
        return clients[-1]

    yield start
    for client in clients:
        await client.close()


@pytest.fixture
async def gateway(make_gateway: GatewayFactory) -> TestClient[Any, Any]:
    client: TestClient[Any, Any] = await make_gateway()
    return client
