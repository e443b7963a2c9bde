"""Faults that cost seconds, not a minute.

An image's in-flight mark must not outlive a fetch that can no longer end it: when a Redis
Cluster master dies and its replica takes over, when a standalone Redis dies and comes back
from its AOF, when a gateway process dies while it fetches, the other processes fetch the
image themselves within seconds of the fault. And what Nomic bills is charged to a team even
when a request's deadline passed while Nomic was still answering it.

The gateway processes here run with a 20 s request deadline instead of the default 60 s: a
mark that lives as long as its owner's deadline then shows as a request of about 20 s, well
past what these tests allow (the fault's duration and ``GRACE_SECONDS``), and a failing run
stays short. Each team embeds images of its own, so what the fake billed for a team's images
is what the team must be charged.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import pytest
import redis
from aiohttp.test_utils import TestClient
from redis.crc import key_slot

from fake_nomic import FakeNomic, png
from gateway.keys import cache_key, content_digest
from gateway.models import DEFAULT_IMAGE_MODEL as DEFAULT_MODEL
from gateway.models import Spec
from gateway.store.redis_keys import fetch_mark, team_tag
from tests.conftest import (
    ADMIN,
    GatewayFactory,
    ReplicatedCluster,
    admin_get,
    free_port,
    make_team,
    spawn_redis,
    team_headers,
)
from tests.helpers import image_form
from tests.test_cli import start_workers, stop_workers, wait_healthy
from tests.test_operations import sample

DEADLINE_SECONDS = 20.0
GRACE_SECONDS = 8.0  # how much longer than its fault a request may take
FAKE_SECONDS = 1.0  # each upstream call: fetches are in flight at any moment of the load
LOAD_AFTER_FAULT_SECONDS = 4.0
TEAMS = {
    "plain": {},
    "limited": {"limits": {"requests_per_minute": 10**5, "tokens_per_day": 10**8}},
}


class GatewayProcess(NamedTuple):
    process: asyncio.subprocess.Process
    url: str
    log: Path


@contextlib.asynccontextmanager
async def gateway_processes(
    fake: FakeNomic, redis_url: str, workdir: Path, count: int = 2, **env: str
) -> AsyncIterator[list[GatewayProcess]]:
    """``count`` gateway processes (``serve``, each on a port of its own) over one Redis, in
    front of the fake, healthy; all of them stopped at the end, killed if need be."""
    started: list[GatewayProcess] = []
    with contextlib.ExitStack() as logs:
        try:
            for index in range(count):
                home = workdir / f"gateway-{index}"
                home.mkdir()
                teams = home / "teams.toml"
                teams.write_text("")  # teams come from the admin API
                log = logs.enter_context((home / "gateway.log").open("wb"))
                process, url = await start_workers(
                    fake, redis_url, teams, log, workers=1,
                    GATEWAY_REQUEST_DEADLINE_SECONDS=str(DEADLINE_SECONDS),
                    GATEWAY_LOG_LEVEL="warning", **env,
                )  # fmt: skip
                started.append(GatewayProcess(process, url, home / "gateway.log"))
            async with aiohttp.ClientSession() as session:
                for gateway in started:
                    await wait_healthy(session, gateway.url)
            yield started
        finally:
            for gateway in started:
                await stop_workers(gateway.process)


@dataclass
class Sent:
    """One request and what became of it."""

    role: str  # "load", or the part the request plays in the test
    team: str
    gateway: int
    at: float  # time.monotonic() when sent
    seconds: float
    status: int | None  # None: no HTTP answer at all
    retry_after: bool
    error: str = ""

    @property
    def clean(self) -> bool:
        return self.status == 200 or (self.status in (503, 504) and self.retry_after)

    def __str__(self) -> str:
        answer = f"{self.status}{' with Retry-After' if self.retry_after else ''}"
        return (f"{self.role} of {self.team} to gateway {self.gateway}: "
                f"{self.error or answer} after {self.seconds:.1f} s")  # fmt: skip


class Traffic:
    """Clients sending the gateways new and repeated images of their teams, and every
    request's outcome. Images are distinct across teams: ``team_of`` tells whose each is."""

    def __init__(self, session: aiohttp.ClientSession, gateways: list[str]) -> None:
        self.session = session
        self.gateways = gateways
        self.keys: dict[str, str] = {}
        self.team_of: dict[bytes, str] = {}
        self.sent: list[Sent] = []
        self.stopping = asyncio.Event()
        self._seeds = itertools.count(1)

    async def add_team(self, team: str, **fields: Any) -> None:
        self.keys[team] = await make_team(self.session, self.gateways[0], team, **fields)
        for url in self.gateways:  # every gateway has read the key before any fault
            async with self.session.get(url + "/v1/user", headers=self._auth(team)) as response:
                assert response.status == 200, await response.text()

    def new_image(self, team: str) -> bytes:
        image = png(next(self._seeds))
        self.team_of[image] = team
        return image

    def _auth(self, team: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[team]}"}

    async def send(self, team: str, gateway: int, images: list[bytes], role: str) -> Sent:
        at = time.monotonic()
        status, retry_after, error = None, False, ""
        try:
            async with self.session.post(
                self.gateways[gateway] + "/v1/embedding/image", data=image_form(images),
                headers=self._auth(team),
            ) as response:  # fmt: skip
                await response.read()
                status, retry_after = response.status, "Retry-After" in response.headers
        except (aiohttp.ClientError, TimeoutError) as exc:
            error = type(exc).__name__
        sent = Sent(role, team, gateway, at, time.monotonic() - at, status, retry_after, error)
        self.sent.append(sent)
        return sent

    async def client(self, team: str, seed: int) -> None:
        """Until :attr:`stopping`: a new image now and then, else one seen lately; a second
        image in some requests; each request to the next gateway."""
        rng = random.Random(seed)
        seen: list[bytes] = []
        for number in itertools.count():
            if self.stopping.is_set():
                return
            if not seen or rng.random() < 0.25:
                seen.append(self.new_image(team))
            images = [seen[-1] if rng.random() < 0.5 else rng.choice(seen[-20:])]
            if rng.random() < 0.2:
                images.append(rng.choice(seen[-20:]))
            await self.send(team, number % len(self.gateways), images, "load")
            await asyncio.sleep(0.01)

    def load(self, clients_per_team: int = 3) -> asyncio.Future[list[None]]:
        return asyncio.gather(*(
            self.client(team, seed)
            for seed, team in enumerate(sorted(self.keys) * clients_per_team)
        ))  # fmt: skip


async def until(condition: Callable[[], bool], what: str, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within:g} s")
        await asyncio.sleep(0.01)


async def billed_by_fake(
    fake: FakeNomic, team_of: dict[bytes, str], since: float = 0.0
) -> Counter[str]:
    """Tokens the fake billed per team for the calls it received from ``since`` on, once it
    has answered them all."""
    calls = [call for call in fake.calls if call.at >= since]
    await until(lambda: all(call.status for call in calls), "the fake's answers")
    billed: Counter[str] = Counter()
    for call in calls:
        if call.status == 200:
            for item in call.items:
                billed[team_of[item]] += fake.tokens_per_image
    return billed


async def charged(session: aiohttp.ClientSession, url: str) -> Counter[str]:
    """Billed tokens per team in the usage API (which first writes the process's counts)."""
    async with session.get(url + "/admin/usage", headers=ADMIN) as response:
        assert response.status == 200, await response.text()
        rows = (await response.json())["usage"]
    billed: Counter[str] = Counter()
    for row in rows:
        billed[row["team"]] += row["billed_tokens"]
    return billed


async def charged_when_settled(
    session: aiohttp.ClientSession, urls: list[str], expected: Counter[str]
) -> Counter[str]:
    """The usage API's billed tokens per team once they equal ``expected``, or after 5 s.
    Every gateway is asked (each writes what it counted first); the last answer counts."""
    deadline = time.monotonic() + 5.0
    while True:
        for url in urls:
            found = await charged(session, url)
        if found == expected or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.25)


def fault_problems(sent: list[Sent], fault_seconds: float) -> list[str]:
    """Requests that took longer than the fault and ``GRACE_SECONDS``, and requests not
    answered 200, nor 503/504 with Retry-After."""
    bound = fault_seconds + GRACE_SECONDS
    slow = sorted((s for s in sent if s.seconds > bound), key=lambda s: -s.seconds)
    unclean = [s for s in sent if not s.clean]
    outcomes = Counter(f"{s.role}: {s.error or s.status}" for s in sent)
    print(f"\n  fault {fault_seconds:.1f} s; {len(sent)} requests {dict(outcomes)}; longest "
          f"{max(s.seconds for s in sent):.1f} s")  # fmt: skip
    return [
        *(f"{s}: over the {fault_seconds:.1f} s fault + {GRACE_SECONDS:g} s" for s in slow),
        *(f"{s}: not 200, nor 503/504 with Retry-After" for s in unclean),
    ]


def charge_problems(charged: Counter[str], billed: Counter[str]) -> list[str]:
    if charged == billed:
        return []
    return [f"tokens charged per team {dict(charged)}, but the fake billed {dict(billed)}"]


def log_problems(gateways: list[GatewayProcess]) -> list[str]:
    return [f"a Traceback in {g.log}" for g in gateways if "Traceback" in g.log.read_text()]


def report(problems: list[str], shown: int = 8) -> str:
    more = [f"... and {len(problems) - shown} more"] if len(problems) > shown else []
    return "\n".join(["", *problems[:shown], *more])


async def run_fault(
    traffic: Traffic, fake: FakeNomic, probes: dict[tuple[str, int], bytes],
    fault: Callable[[], Awaitable[None]], recovery: Callable[[], Awaitable[None]],
) -> float:  # fmt: skip
    """Under load, ask each gateway for new images (``probes``, by team and gateway) and
    ``fault`` while the fake holds its answers to them, so their fetches, marks taken, are
    surely in flight; then, the fake answering, wait for the ``recovery``, ask each probe's
    image again of the other gateway (which did not fetch it, so has no answer of its own in
    memory), and keep the load a few seconds more. Returns the fault's duration."""
    load = traffic.load()
    asked: list[asyncio.Future[Any]] = []
    try:
        await asyncio.sleep(2.0)
        fake.hold()
        try:
            asked += [
                asyncio.ensure_future(traffic.send(team, gateway, [image], "fetched at the fault"))
                for (team, gateway), image in probes.items()
            ]
            await until(lambda: set(probes.values()) <= set(fake.items_received), "probes sent")
            began = time.monotonic()
            await fault()
        finally:
            fake.release()
        await recovery()
        fault_seconds = time.monotonic() - began
        asked += [
            asyncio.ensure_future(traffic.send(team, 1 - gateway, [image], "asked again elsewhere"))
            for (team, gateway), image in probes.items()
        ]
        await asyncio.sleep(LOAD_AFTER_FAULT_SECONDS)
    finally:
        traffic.stopping.set()
        await asyncio.gather(load, *asked)
    return fault_seconds


@pytest.mark.serial
async def test_a_cluster_master_killed_under_load_costs_seconds_not_a_minute(
    fake_nomic: FakeNomic, replicated_cluster: ReplicatedCluster, tmp_path: Path
) -> None:
    """The master serving one team's keys, and the in-flight marks and the cache entries of
    images being fetched, is SIGKILLed; its replica takes over."""
    cluster = replicated_cluster
    fake_nomic.latency = FAKE_SECONDS
    table = cluster.slot_table()

    def master(key: str) -> int:
        slot = key_slot(key.encode())
        return next(port for start, end, port in table if start <= slot <= end)

    def home(image: bytes) -> int:
        """The master holding the image's entry and its mark (its hash tag is the entry's
        key: one slot)."""
        key = cache_key(Spec(DEFAULT_MODEL, "image"), content_digest(image))
        entry, mark = master(key), master(fetch_mark(key))
        assert entry == mark
        return entry

    victim = home(png(10**6))
    seed_node = next(port for _, _, port in table if port != victim)
    limited = next(
        f"limited-{n}" for n in itertools.count() if master(team_tag(f"limited-{n}")) == victim
    )
    teams = {"plain": TEAMS["plain"], limited: TEAMS["limited"]}
    async with (
        gateway_processes(fake_nomic, cluster.url(seed_node), tmp_path,
                          GATEWAY_REDIS_MODE="cluster") as gateways,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=40)) as session,
    ):  # fmt: skip
        traffic = Traffic(session, [gateway.url for gateway in gateways])
        for team, fields in teams.items():
            await traffic.add_team(team, **fields)

        def probe(team: str) -> bytes:
            """A new image of ``team`` whose entry and in-flight mark live on the victim."""
            return next(image for _ in range(1000)
                        if home(image := traffic.new_image(team)) == victim)  # fmt: skip

        async def kill() -> None:
            cluster.kill(victim)

        async def failover() -> None:
            slot = next(start for start, _, port in table if port == victim)
            await asyncio.to_thread(cluster.wait_for_failover, slot, victim)

        probes = {(team, gateway): probe(team) for team in teams for gateway in (0, 1)}
        fault_seconds = await run_fault(traffic, fake_nomic, probes, kill, failover)
        expected = await billed_by_fake(fake_nomic, traffic.team_of)
        found = await charged_when_settled(session, [g.url for g in gateways], expected)
    problems = fault_problems(traffic.sent, fault_seconds)
    problems += charge_problems(found, expected) + log_problems(gateways)
    assert not problems, report(problems)


@pytest.mark.serial
async def test_a_redis_killed_and_restarted_under_load_costs_seconds_not_a_minute(
    fake_nomic: FakeNomic, tmp_path: Path
) -> None:
    """Redis with AOF (every write synced) is SIGKILLed while images are fetched and started
    again on its port 2 s later: their marks come back from the AOF, their entries do not."""
    fake_nomic.latency = FAKE_SECONDS
    port = free_port()
    workdir = tmp_path / "redis"
    workdir.mkdir()
    aof = ("--appendonly", "yes", "--appendfsync", "always")
    servers = [spawn_redis(port, str(workdir), *aof)]
    try:
        async with (
            gateway_processes(fake_nomic, f"redis://127.0.0.1:{port}/0", tmp_path) as gateways,
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=40)) as session,
        ):
            traffic = Traffic(session, [gateway.url for gateway in gateways])
            for team, fields in TEAMS.items():
                await traffic.add_team(team, **fields)

            async def kill() -> None:
                servers[0].kill()
                servers[0].wait(10)

            async def restart() -> None:
                await asyncio.sleep(2.0)
                servers.append(await asyncio.to_thread(spawn_redis, port, str(workdir), *aof))

            probes = {(team, gw): traffic.new_image(team) for team in TEAMS for gw in (0, 1)}
            fault_seconds = await run_fault(traffic, fake_nomic, probes, kill, restart)
            expected = await billed_by_fake(fake_nomic, traffic.team_of)
            found = await charged_when_settled(session, [g.url for g in gateways], expected)
    finally:
        for server in servers:
            if server.poll() is None:
                server.terminate()
                server.wait(10)
    problems = fault_problems(traffic.sent, fault_seconds)
    problems += charge_problems(found, expected) + log_problems(gateways)
    assert not problems, report(problems)


@pytest.mark.serial
async def test_a_gateway_killed_while_it_fetches_leaves_its_images_to_another_within_seconds(
    fake_nomic: FakeNomic, redis_client: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """One process fetches six images (the fake holds its call); another waits on its marks
    for three of them; the first is SIGKILLed. The second fetches all six itself: those it
    was waiting for, and those asked of it after the kill."""
    fake_nomic.latency = FAKE_SECONDS
    async with (
        gateway_processes(fake_nomic, redis_url, tmp_path) as (doomed, survivor),
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=40)) as session,
    ):
        traffic = Traffic(session, [doomed.url, survivor.url])
        await traffic.add_team("plain")
        images = [traffic.new_image("plain") for _ in range(6)]
        fake_nomic.hold()
        try:
            owner = asyncio.ensure_future(traffic.send("plain", 0, images, "owner"))
            await until(lambda: set(images) <= set(fake_nomic.items_received), "owner's call")
            waiting = asyncio.ensure_future(
                traffic.send("plain", 1, images[:3], "waiting on its marks")
            )
            await until_watching(session, survivor.url, 3)
            doomed.process.send_signal(signal.SIGKILL)
            await doomed.process.wait()
            killed_at = time.monotonic()
        finally:
            fake_nomic.release()
        after = [
            asyncio.ensure_future(traffic.send("plain", 1, [image], "asked after the kill"))
            for image in images
        ]
        answered = [await waiting, *await asyncio.gather(*after)]
        assert (await owner).status is None  # its process died under it
        # The dead process's call was billed too, and nobody can be charged for it.
        billed = await billed_by_fake(fake_nomic, traffic.team_of, since=killed_at)
        charged = await charged_when_settled(session, [survivor.url], billed)
    print(f"\n  after the kill: {[str(s) for s in answered]}")
    problems = [
        f"{s}, {s.at + s.seconds - killed_at:.1f} s after the kill"
        for s in answered
        if s.status != 200 or s.at + s.seconds > killed_at + GRACE_SECONDS
    ]
    again = {item for call in fake_nomic.calls if call.at >= killed_at for item in call.items}
    if not set(images) <= again:
        problems.append(f"{len(set(images) - again)} of the images were not fetched again")
    problems += charge_problems(charged, billed)
    problems += log_problems([survivor])
    assert not problems, report(problems)


async def until_watching(session: aiohttp.ClientSession, url: str, items: int) -> None:
    """Until the gateway at ``url`` waits for ``items`` misses another replica fetches."""
    deadline = time.monotonic() + 10
    while True:
        async with session.get(url + "/metrics") as response:
            text = await response.text()
        if sample(text, "gateway_replica_coalesced_items_total") >= items:
            return
        assert time.monotonic() < deadline, "the second gateway never waited for the first"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("limits", [{}, {"tokens_per_day": 10**6}], ids=["unlimited", "budget"])
async def test_items_answered_after_their_requests_deadline_are_charged(
    fake_nomic: FakeNomic, make_gateway: GatewayFactory, limits: dict[str, int]
) -> None:
    """A request whose deadline (1 s) passes while Nomic is still answering gets its 504;
    the answer, when it comes, is cached and charged to the request's team, so asking again
    is a hit that costs nothing."""
    gateway: TestClient[Any, Any] = await make_gateway(request_deadline_seconds=1.0)
    team = await team_headers(gateway, "late", limits=limits)
    image = png(1)
    fake_nomic.hold()
    try:
        response = await gateway.post("/v1/embedding/image", data=image_form([image]), headers=team)
        assert response.status == 504
    finally:
        fake_nomic.release()
    billed = await billed_by_fake(fake_nomic, {image: "late"})
    charged = await charged_by(gateway, sum(billed.values()))
    assert charged == billed, f"charged {dict(charged)}, but the fake billed {dict(billed)}"
    again = await gateway.post("/v1/embedding/image", data=image_form([image]), headers=team)
    assert (again.status, again.headers["X-Cache"], again.headers["X-Billed-Tokens"]) == (
        200, "HIT", "0"
    )  # fmt: skip
    assert await charged_by(gateway, sum(billed.values())) == billed
    assert len(fake_nomic.items_received) == 1


@pytest.mark.parametrize("limits", [{}, {"tokens_per_day": 10**6}], ids=["unlimited", "budget"])
async def test_a_client_that_hangs_up_during_its_miss_is_charged(
    fake_nomic: FakeNomic, make_gateway: GatewayFactory, limits: dict[str, int]
) -> None:
    """A client sends new images and hangs up while Nomic embeds them (an attacker's way to
    get embeddings unpaid, then ask again for hits): the request goes on, its answer is
    cached, and what Nomic billed is charged to its team."""
    gateway: TestClient[Any, Any] = await make_gateway()
    team = await team_headers(gateway, "gone", limits=limits)
    images = [png(1), png(2)]
    fake_nomic.hold()
    try:
        sent = asyncio.ensure_future(
            gateway.post("/v1/embedding/image", data=image_form(images), headers=team)
        )
        await until(lambda: bool(fake_nomic.calls), "the upstream call")
        sent.cancel()  # the client's connection closes
        with contextlib.suppress(asyncio.CancelledError):
            await sent
    finally:
        fake_nomic.release()
    billed = await billed_by_fake(fake_nomic, {image: "gone" for image in images})
    assert billed == {"gone": 2 * fake_nomic.tokens_per_image}
    charged = await charged_by(gateway, sum(billed.values()))
    assert charged == billed, f"charged {dict(charged)}, but the fake billed {dict(billed)}"
    again = await gateway.post("/v1/embedding/image", data=image_form(images), headers=team)
    assert (again.status, again.headers["X-Cache"], again.headers["X-Billed-Tokens"]) == (
        200, "HIT", "0"
    )  # fmt: skip
    assert len(fake_nomic.items_received) == 2


async def test_an_item_answered_after_its_owners_deadline_is_charged_though_another_request_got_it(
    fake_nomic: FakeNomic, make_gateway: GatewayFactory
) -> None:
    """As above, but another team's request joined the fetch before Nomic answered and got
    the answer as a hit: what Nomic billed is still charged, once, to one of the two."""
    gateway: TestClient[Any, Any] = await make_gateway(request_deadline_seconds=1.0)
    first = await team_headers(gateway, "first")
    second = await team_headers(gateway, "second")
    image = png(1)
    fake_nomic.hold()
    try:
        late = await gateway.post("/v1/embedding/image", data=image_form([image]), headers=first)
        assert late.status == 504
        joined = asyncio.ensure_future(
            gateway.post("/v1/embedding/image", data=image_form([image]), headers=second)
        )
        await asyncio.sleep(0.2)  # it waits for the fetch still in flight
    finally:
        fake_nomic.release()
    assert (await joined).status == 200
    billed = sum((await billed_by_fake(fake_nomic, {image: "first"})).values())
    charged = await charged_by(gateway, billed)
    assert sum(charged.values()) == billed, f"charged {dict(charged)}, but the fake billed {billed}"
    assert len(fake_nomic.items_received) == 1


async def charged_by(gateway: TestClient[Any, Any], total: int) -> Counter[str]:
    """Billed tokens per team in the usage API once they add up to ``total``, or after 5 s."""
    deadline = time.monotonic() + 5
    while True:
        charged: Counter[str] = Counter()
        for row in (await admin_get(gateway, "/admin/usage"))["usage"]:
            charged[row["team"]] += row["billed_tokens"]
        if charged.total() == total or time.monotonic() > deadline:
            return charged
        await asyncio.sleep(0.25)


async def test_a_refresh_that_outlives_its_request_is_charged_though_the_stale_entry_answered(
    fake_nomic: FakeNomic, make_gateway: GatewayFactory
) -> None:
    """A URL past its TTL: Nomic is slow to answer the refresh, so the request gets the stale
    entry by its deadline; the refresh goes on, is stored, and what Nomic billed for it is
    charged to the request's team."""
    # The deadline is the stale answer's wait; 1 s once ran out on the first (fresh) miss of a
    # loaded machine's cluster run, answered 504 before the test began.
    gateway: TestClient[Any, Any] = await make_gateway(
        request_deadline_seconds=3.0, url_ttl_seconds=1, stale_grace_seconds=600
    )
    team = await team_headers(gateway, "stale")
    url = {"model": DEFAULT_MODEL, "urls": "https://example.com/slow.png"}
    assert (await gateway.post("/v1/embedding/image", data=url, headers=team)).status == 200
    await asyncio.sleep(2.1)  # past the TTL, rounded up to whole seconds
    fake_nomic.hold()
    try:
        stale = await gateway.post("/v1/embedding/image", data=url, headers=team)
        assert (stale.status, stale.headers["X-Cache"]) == (200, "STALE")
    finally:
        fake_nomic.release()
    await until(lambda: all(call.status for call in fake_nomic.calls), "the fake's answers")
    billed = fake_nomic.tokens_per_image * len(fake_nomic.items_received)
    assert (await charged_by(gateway, billed))["stale"] == billed == 2 * fake_nomic.tokens_per_image
    fresh = await gateway.post("/v1/embedding/image", data=url, headers=team)
    assert (fresh.headers["X-Cache"], fresh.headers["X-Billed-Tokens"]) == ("HIT", "0")
