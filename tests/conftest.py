"""Fixtures: a real redis-server on a free port, the fake Nomic, and gateways on both stores."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, settings

from fake_nomic import FAKE_API_KEY, FakeNomic
from gateway.app import create_app
from gateway.config import Settings
from gateway.store import RedisBackend
from gateway.store.base import Coordinator, Ledger
from gateway.store.data_dir import DataDir
from gateway.store.memory_coordinator import MemoryCoordinator
from gateway.store.memory_ledger import MemoryLedger
from gateway.store.redis_coordinator import RedisCoordinator
from gateway.store.redis_ledger import RedisLedger

# Hypothesis's deadline (200 ms an example) and its too_slow check are timings asserted: on a
# machine shared with other work an example can take longer through no fault of the code.
settings.register_profile("suite", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("suite")

STORES = ("memory", "redis", "cluster")
# The store contract's tests run on these: the embedded store in memory and on disk too.
EVERY_STORE = ("memory", "embedded", "redis", "cluster")
EMBEDDED = "embedded:"  # a store_url of the embedded store on disk: a directory follows
CLUSTER_URLS: set[str] = set()  # store URLs that name a Redis Cluster seed node


def free_cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too, both below 65536."""
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(20000, 30000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def spawn_redis(port: int, workdir: str, *extra: str) -> subprocess.Popen[bytes]:
    """A redis-server of the suite's own on ``port``, answering PING when this returns."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed: run the README's test command, it installs it")
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", workdir, *extra],
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


class RestartableRedis:
    """A redis-server of the test's own, with AOF, so teams and usage survive a restart."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = str(workdir)
        self.process: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = spawn_redis(self.port, self.workdir, "--appendonly", "yes",
                                   "--appendfsync", "always")  # fmt: skip

    def stop(self) -> None:
        assert self.process is not None
        self.process.terminate()
        self.process.wait(10)


@pytest.fixture
def outage_redis(tmp_path: Path) -> Iterator[RestartableRedis]:
    server = RestartableRedis(tmp_path)
    server.start()
    yield server
    if server.process is not None and server.process.poll() is None:
        server.stop()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The session's redis-server, on a free port, gone at the end of the session."""
    port = free_port()
    with tempfile.TemporaryDirectory() as workdir:
        process = spawn_redis(port, workdir)
        yield f"redis://127.0.0.1:{port}/0"
        process.terminate()
        process.wait(10)


def start_cluster(
    ports: list[int], workdir: str, replicas: int, node_timeout_ms: int, *extra: str
) -> list[subprocess.Popen[bytes]]:
    """A local Redis Cluster on ``ports`` (each master followed by ``replicas`` replicas),
    answering ``cluster_state:ok`` on every node, every replica in sync, when this returns.
    On failure every node it started is gone again."""
    cli = shutil.which("redis-cli")
    if cli is None:
        pytest.fail("redis-cli is not installed: run the README's test command, it installs it")
    nodes: list[subprocess.Popen[bytes]] = []
    try:
        for port in ports:
            node_dir = Path(workdir) / str(port)
            node_dir.mkdir()
            nodes.append(spawn_redis(port, str(node_dir), "--cluster-enabled", "yes",
                                     "--cluster-config-file", "nodes.conf",
                                     "--cluster-node-timeout", str(node_timeout_ms),
                                     *extra))  # fmt: skip
        subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
             "--cluster-replicas", str(replicas), "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while not all(_node_ready(port) for port in ports):
            if time.monotonic() > deadline:
                pytest.fail("the test Redis Cluster did not form")
            time.sleep(0.1)
    except BaseException:
        stop_nodes(nodes)
        raise
    return nodes


def _node_ready(port: int) -> bool:
    """The node sees the whole cluster up and, if it is a replica, is in sync."""
    with redis.Redis(port=port) as client:
        if client.cluster("info")["cluster_state"] != "ok":
            return False
        replication = client.info("replication")
        return bool(replication["role"] == "master" or replication["master_link_status"] == "up")


def stop_nodes(nodes: list[subprocess.Popen[Any]]) -> None:
    """Terminate every process of ``nodes``, killing any still running after 10 s."""
    for node in nodes:
        if node.poll() is None:
            node.terminate()
    for node in nodes:
        try:
            node.wait(10)
        except subprocess.TimeoutExpired:
            node.kill()
            node.wait()


def free_cluster_ports(count: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_cluster_port())
    return sorted(ports)


@pytest.fixture(scope="session")
def cluster_url() -> Iterator[str]:
    """A real 3-master Redis Cluster of the suite's own, on free ports."""
    ports = free_cluster_ports(3)
    with tempfile.TemporaryDirectory() as workdir:
        nodes = start_cluster(ports, workdir, replicas=0, node_timeout_ms=2000)
        try:
            url = f"redis://127.0.0.1:{ports[0]}/0"
            CLUSTER_URLS.add(url)
            yield url
        finally:
            stop_nodes(nodes)


class ReplicatedCluster:
    """A local Redis Cluster of 3 masters with a replica each, for a test to break: a
    master killed is replaced by its replica within about two node timeouts."""

    NODE_TIMEOUT_MS = 1000

    def __init__(self, workdir: str) -> None:
        ports = free_cluster_ports(6)
        # Replicas sync at once, not after Redis's default 5 s wait for more replicas.
        nodes = start_cluster(ports, workdir, 1, self.NODE_TIMEOUT_MS,
                              "--repl-diskless-sync-delay", "0")  # fmt: skip
        self.nodes = dict(zip(ports, nodes, strict=True))

    def url(self, port: int) -> str:
        return f"redis://127.0.0.1:{port}/0"

    def alive(self) -> list[int]:
        return [port for port, node in self.nodes.items() if node.poll() is None]

    def slot_table(self) -> list[tuple[int, int, int]]:
        """(first slot, last slot, master's port) of every range, as a live node sees it."""
        with redis.Redis(port=self.alive()[0]) as client:
            table = client.execute_command("CLUSTER", "SLOTS")
        return [(int(start), int(end), int(master[1])) for start, end, master, *_ in table]

    def master_of(self, slot: int) -> int | None:
        """The port of the master serving ``slot``; None while none does."""
        table = self.slot_table()
        return next((port for start, end, port in table if start <= slot <= end), None)

    def kill(self, port: int) -> None:
        """SIGKILL a node: no goodbye to the cluster, as a machine that dies."""
        self.nodes[port].kill()
        self.nodes[port].wait(10)

    def wait_for_failover(self, slot: int, dead: int, timeout: float = 20.0) -> None:
        """Return once another node serves ``slot`` and every live node says the cluster
        is ok."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.master_of(slot) not in (dead, None) and all(map(_state_ok, self.alive())):
                    return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"no failover of slot {slot} within {timeout:g} s")
            time.sleep(0.05)

    def stop(self) -> None:
        stop_nodes(list(self.nodes.values()))


def _state_ok(port: int) -> bool:
    with redis.Redis(port=port) as client:
        return bool(client.cluster("info")["cluster_state"] == "ok")


@pytest.fixture
def replicated_cluster(tmp_path: Path) -> Iterator[ReplicatedCluster]:
    """A 3-master, 3-replica Redis Cluster of the test's own, gone at its end."""
    workdir = tmp_path / "cluster"
    workdir.mkdir()
    cluster = ReplicatedCluster(str(workdir))
    try:
        yield cluster
    finally:
        cluster.stop()


def flush(url: str) -> None:
    """Empty a Redis, or every master of a Redis Cluster."""
    if url in CLUSTER_URLS:
        cluster = redis.RedisCluster.from_url(url)
        cluster.flushall(target_nodes=redis.RedisCluster.PRIMARIES)
        cluster.close()
    else:
        client = redis.Redis.from_url(url)
        client.flushall()
        client.close()


def sync_client(url: str) -> redis.Redis | redis.RedisCluster:
    """A synchronous client for tests that look into the store."""
    if url in CLUSTER_URLS:
        return redis.RedisCluster.from_url(url)
    return redis.Redis.from_url(url)


def all_keys(client: redis.Redis | redis.RedisCluster, pattern: str) -> list[bytes]:
    if isinstance(client, redis.RedisCluster):
        return list(client.keys(pattern, target_nodes=redis.RedisCluster.PRIMARIES))
    return list(client.keys(pattern))


async def stored_keys(
    client: redis.Redis | redis.RedisCluster, pattern: str, count: int, seconds: float = 5.0
) -> list[bytes]:
    """The keys matching ``pattern`` once there are ``count`` of them (or after ``seconds``):
    entries are stored just after the answer goes out."""
    keys = all_keys(client, pattern)
    for _ in range(round(seconds / 0.02)):
        if len(keys) >= count:
            break
        await asyncio.sleep(0.02)
        keys = all_keys(client, pattern)
    return keys


def open_redis_backend(url: str, **kwargs: Any) -> RedisBackend:
    return RedisBackend(url, cluster=url in CLUSTER_URLS, **kwargs)


@contextlib.asynccontextmanager
async def data_dir(store_url: str) -> AsyncIterator[DataDir]:
    """A data directory of its own under the embedded ``store_url``'s, open."""
    data = await DataDir.open(Path(tempfile.mkdtemp(dir=store_url[len(EMBEDDED) :])), 10_000_000)
    try:
        yield data
    finally:
        await data.close()


@pytest.fixture
async def ledger(store_url: str | None) -> AsyncIterator[Ledger]:
    """The ledger on the parametrized store (``store_url``)."""
    if store_url is None:
        yield MemoryLedger()
        return
    if store_url.startswith(EMBEDDED):
        async with data_dir(store_url) as data:
            yield data.ledger
        return
    backend = open_redis_backend(store_url)
    yield RedisLedger(backend)
    await backend.close()


@pytest.fixture
async def coordinator(store_url: str | None) -> AsyncIterator[Coordinator]:
    """The upstream coordinator on the parametrized store (``store_url``)."""
    if store_url is None:
        yield MemoryCoordinator()
        return
    backend = open_redis_backend(store_url)
    yield RedisCoordinator(backend)
    await backend.close()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    yield client
    client.close()


@pytest.fixture(params=STORES)
def store_url(request: pytest.FixtureRequest) -> str | None:
    """Every test using this runs on the embedded store, on a flushed Redis and on a flushed
    3-master Redis Cluster (and, where a test asks, on the embedded store on disk: see
    ``EVERY_STORE``)."""
    return chosen_store(request)


def chosen_store(request: pytest.FixtureRequest) -> str | None:
    """The ``store_url`` of ``request.param``: None for the embedded store in memory."""
    if request.param == "memory":
        return None
    if request.param == "embedded":
        return EMBEDDED + str(request.getfixturevalue("tmp_path"))
    url: str = request.getfixturevalue("cluster_url" if request.param == "cluster" else "redis_url")
    flush(url)
    return url


@contextlib.asynccontextmanager
async def serve_fake(fake: FakeNomic | None = None) -> AsyncIterator[FakeNomic]:
    """``fake`` (a new FakeNomic by default) served on a free loopback port (``fake.url``)
    until the block ends."""
    fake = fake or FakeNomic()
    server = TestServer(fake.app, host="127.0.0.1")
    await server.start_server()
    fake.url = str(server.make_url("")).rstrip("/")  # type: ignore[attr-defined]
    try:
        yield fake
    finally:
        await server.close()


@pytest.fixture
async def fake_nomic() -> AsyncIterator[FakeNomic]:
    async with serve_fake() as fake:
        yield fake


def gateway_settings(fake: FakeNomic, store_url: str | None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "nomic_api_key": FAKE_API_KEY,
        "upstream_url": fake.url,  # type: ignore[attr-defined]
        **store_settings(store_url),
        "upstream_timeout_seconds": 5.0,
        # A loaded test machine can take over a second to open a hundred connections to a
        # cluster; a tight timeout would then look like an outage (and fail open).
        "redis_timeout_seconds": 5.0,
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


def store_settings(store_url: str | None) -> dict[str, Any]:
    """The settings of a gateway on ``store_url`` (on the embedded store on disk: in a data
    directory of its own, as in memory each gateway has a store of its own)."""
    if store_url is None:
        return {"redis_url": None, "data_dir": None}
    if store_url.startswith(EMBEDDED):
        return {"redis_url": None, "data_dir": tempfile.mkdtemp(dir=store_url[len(EMBEDDED) :])}
    return {"redis_url": store_url,
            "redis_mode": "cluster" if store_url in CLUSTER_URLS else "standalone"}  # fmt: skip


@contextlib.contextmanager
def state_home(directory: Path) -> Iterator[None]:
    """Gateway processes started meanwhile keep their embedded store (its default directory
    is under ``XDG_STATE_HOME``) under ``directory``."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_STATE_HOME", str(directory))
        yield


@pytest.fixture(autouse=True, scope="module")
def module_state_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A module's own state directory, for the gateways its module-scoped fixtures start."""
    with state_home(tmp_path_factory.mktemp("state")):
        yield


@pytest.fixture(autouse=True)
def own_state_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A test's own state directory: no two tests' gateway processes share a data directory
    (nor one with the user's own gateway)."""
    with state_home(tmp_path_factory.mktemp("state")):
        yield


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


@contextlib.asynccontextmanager
async def gateways(fake: FakeNomic, store_url: str | None) -> AsyncIterator[GatewayFactory]:
    """A factory of gateways (settings overridable) on one store, all closed at the end."""
    clients: list[TestClient[Any, Any]] = []

    async def start(**overrides: Any) -> TestClient[Any, Any]:
        clients.append(await start_gateway(fake, store_url, **overrides))
        return clients[-1]

    try:
        yield start
    finally:
        for client in clients:
            await client.close()


@pytest.fixture
async def make_gateway(
    fake_nomic: FakeNomic, store_url: str | None
) -> AsyncIterator[GatewayFactory]:
    """Start gateways in front of the fake, on the parametrized store."""
    async with gateways(fake_nomic, store_url) as start:
        yield start


@pytest.fixture
async def make_redis_gateway(
    fake_nomic: FakeNomic, redis_client: redis.Redis, redis_url: str
) -> AsyncIterator[GatewayFactory]:
    """Start gateways that share the suite's (flushed) Redis, as replicas do."""
    async with gateways(fake_nomic, redis_url) as start:
        yield start


@pytest.fixture
async def gateway(make_gateway: GatewayFactory) -> TestClient[Any, Any]:
    client: TestClient[Any, Any] = await make_gateway()
    return client


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item) -> None:
    """A failed test's frames are let go of here, in its own teardown: pytest keeps the last
    failure's traceback (for a debugger) until the next test runs, and with it every
    coroutine, task or connection the failed test's frames still held. Freed later, their
    warnings ("coroutine ... was never awaited") would fail whichever test runs then."""
    failure = getattr(sys, "last_traceback", None)
    if failure is None:
        return
    traceback.clear_frames(failure)
    del sys.last_type, sys.last_value, sys.last_traceback
    del failure
    gc.collect()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--fuzz-examples", type=int, default=300,
        help="hostile requests the fuzz test generates (CI: 300; a long run: 20000)",
    )  # fmt: skip


@pytest.fixture
def fuzz_examples(request: pytest.FixtureRequest) -> int:
    examples: int = request.config.getoption("--fuzz-examples")
    return examples
