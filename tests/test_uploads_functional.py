"""Memory does not follow the uploads: a real ``nomic-gateway serve`` process takes a hundred
concurrent 19 MB uploads within its budget of body bytes in flight, and a team over its
per-minute limit is refused before its body is read."""

from __future__ import annotations

import asyncio
import io
import os
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import PIL.Image
import pytest

from fake_nomic import FAKE_API_KEY, FakeNomic
from tests.conftest import ADMIN_TOKEN, free_port, make_team
from tests.test_cli import clean_env, wait_healthy

pytestmark = pytest.mark.serial  # peak memory of a whole process: measured alone

MiB = 1024 * 1024
UPLOAD_BYTES = 19 * 1000 * 1000


def noise_png(seed: int, size: int = UPLOAD_BYTES) -> bytes:
    """A valid PNG of random pixels (incompressible), about ``size`` bytes."""
    side = int((size / 3) ** 0.5)
    pixels = PIL.Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))
    out = io.BytesIO()
    pixels.save(out, format="PNG", compress_level=0)
    _ = seed
    return out.getvalue()


def peak_rss(pid: int) -> int:
    """The process's peak resident memory (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.fixture
async def served(
    fake_nomic: FakeNomic, tmp_path: Path
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """``nomic-gateway serve`` on the embedded store, with default memory settings."""
    port = free_port()
    env = clean_env(
        NOMIC_API_KEY=FAKE_API_KEY, GATEWAY_UPSTREAM_URL=fake_nomic.url,  # type: ignore[attr-defined]
        GATEWAY_ADMIN_TOKEN=ADMIN_TOKEN, GATEWAY_LOG_LEVEL="warning",
        GATEWAY_UPSTREAM_RATE_CALLS="100000", GATEWAY_UPSTREAM_RATE_PERIOD_SECONDS="1",
    )  # fmt: skip
    log = (tmp_path / "gateway.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", "--port", str(port),
        env=env, stdout=asyncio.subprocess.DEVNULL, stderr=log,
    )  # fmt: skip
    try:
        yield process, f"http://127.0.0.1:{port}"
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
        log.close()


async def upload(session: aiohttp.ClientSession, url: str, key: str, image: bytes) -> str:
    """Post one image; the status, with ``+retry`` when a 503 says when to come back."""
    form = aiohttp.FormData()
    form.add_field("images", io.BytesIO(image), filename="big.png", content_type="image/png")
    try:
        async with session.post(
            url + "/v1/embedding/image", data=form,
            headers={"Authorization": f"Bearer {key}"},
        ) as response:  # fmt: skip
            await response.read()
            retry = "+retry" if "Retry-After" in response.headers else ""
            return f"{response.status}{retry if response.status in (429, 503) else ''}"
    except aiohttp.ClientOSError:
        return "reset"  # refused before its body: the server may close while we still send


async def test_a_hundred_concurrent_19_mb_uploads_stay_under_a_gibibyte(
    served: tuple[asyncio.subprocess.Process, str], fake_nomic: FakeNomic
) -> None:
    process, url = served
    images = [noise_png(seed) for seed in range(4)]
    fake_nomic.latency = 0.5  # bodies stay in flight while Nomic works
    async with aiohttp.ClientSession() as session:
        await wait_healthy(session, url)
        keys = [await make_team(session, url, f"big{team}") for team in range(10)]
        before = peak_rss(process.pid)
        outcomes = await asyncio.gather(  # ten teams: each within its share, all in the budget
            *(upload(session, url, keys[i % 10], images[i % len(images)]) for i in range(100))
        )
        peak = peak_rss(process.pid)
    counts = Counter(outcomes)
    print(f"\n100 x 19 MB: {dict(counts)}; peak RSS {peak / MiB:.0f} MiB "
          f"(at start {before / MiB:.0f} MiB)")  # fmt: skip
    assert set(counts) <= {"200", "413", "429", "429+retry", "503+retry"}
    assert counts["200"] >= 1
    assert peak < 1024 * MiB
    assert len(fake_nomic.items_received) <= len(images)


async def test_a_team_over_its_per_minute_limit_is_refused_before_its_upload(
    served: tuple[asyncio.subprocess.Process, str], fake_nomic: FakeNomic
) -> None:
    process, url = served
    image = noise_png(9)
    async with aiohttp.ClientSession() as session:
        await wait_healthy(session, url)
        key = await make_team(session, url, "slow", limits={"requests_per_minute": 1})
        first = [await upload(session, url, key, image) for _ in range(2)]
        assert first == ["200", "429+retry"]  # the second is read, refused: now it is known
        before = peak_rss(process.pid)
        outcomes = await asyncio.gather(*(upload(session, url, key, image) for _ in range(60)))
        peak = peak_rss(process.pid)
    print(f"\n60 refused uploads: {dict(Counter(outcomes))}; peak RSS grew "
          f"{(peak - before) / MiB:.0f} MiB")  # fmt: skip
    assert set(outcomes) <= {"429+retry", "reset"}
    assert outcomes.count("429+retry") >= 1
    assert peak - before < 2 * UPLOAD_BYTES  # far from the 60 bodies a late check would read
