"""``nomic-gateway serve`` as a user runs it: a real process, settings from env and flags."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from fake_nomic import FAKE_API_KEY, FakeNomic, png
from gateway.teams import key_hash, new_key
from tests.conftest import ADMIN_TOKEN, free_port
from tests.helpers import image_form


def run_cli(*args: str, env: dict[str, str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], input=stdin,
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "NOMIC_"))}
    return {**env, **extra}


def test_missing_nomic_key_stops_startup_with_one_line_naming_it() -> None:
    result = run_cli("serve", env=clean_env())
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "nomic-gateway: NOMIC_API_KEY is not set: the organisation's Nomic API key "
        "(required; never logged)"
    ]


def test_malformed_flag_and_env_stop_startup_naming_them() -> None:
    result = run_cli("serve", "--port", "http", env=clean_env(NOMIC_API_KEY="nk-x"))
    assert result.returncode == 2
    assert "--port='http' is not valid" in result.stderr
    result = run_cli("serve", env=clean_env(NOMIC_API_KEY="nk-x", GATEWAY_MAX_ITEMS="many"))
    assert result.returncode == 2
    assert "GATEWAY_MAX_ITEMS='many' is not valid" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


async def wait_healthy(session: aiohttp.ClientSession, url: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            async with session.get(url + "/healthz") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError("the gateway did not become healthy")


def teams_file_with_a_key(directory: Path) -> tuple[Path, str]:
    key = new_key()
    sha = run_cli("keys", "hash", env=clean_env(), stdin=key + "\n").stdout.strip()
    path = directory / "teams.toml"
    path.write_text(f'[teams.cli]\nname = "CLI"\n[[teams.cli.keys]]\nsha256 = "{sha}"\n')
    return path, key


async def test_serve_answers_and_finishes_in_flight_requests_on_sigterm(
    fake_nomic: FakeNomic, tmp_path: Path
) -> None:
    port = free_port()
    teams, key = teams_file_with_a_key(tmp_path)
    env = clean_env(
        NOMIC_API_KEY=FAKE_API_KEY,
        GATEWAY_UPSTREAM_URL=fake_nomic.url,  # type: ignore[attr-defined]
        GATEWAY_TEAMS_FILE=str(teams),
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", "--port", str(port), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            await wait_healthy(session, url)
            fake_nomic.latency = 1.0
            in_flight = asyncio.ensure_future(
                session.post(
                    url + "/v1/embedding/image",
                    data=image_form([png(1)]),
                    headers={"Authorization": f"Bearer {key}"},
                )
            )
            while not fake_nomic.calls:
                await asyncio.sleep(0.01)
            process.send_signal(signal.SIGTERM)
            response = await in_flight
            assert response.status == 200
            assert len((await response.json())["embeddings"]) == 1
        assert await asyncio.wait_for(process.wait(), 30) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.stdout is not None
    logs = (await process.stdout.read()).decode()
    assert "listening on http://127.0.0.1" in logs
    assert "stopped" in logs
    assert FAKE_API_KEY not in logs
    assert key not in logs


def test_keys_hash_prints_the_sha256_of_the_key_on_stdin() -> None:
    key = new_key()
    result = run_cli("keys", "hash", env=clean_env(), stdin=key + "\n")
    assert result.returncode == 0
    assert result.stdout.strip() == key_hash(key)
    bad = run_cli("keys", "hash", env=clean_env(), stdin="not-a-key\n")
    assert bad.returncode == 1
    assert "does not hold a team key" in bad.stderr


def test_a_broken_teams_file_stops_startup_naming_the_entry(tmp_path: Path) -> None:
    path = tmp_path / "teams.toml"
    path.write_text('[teams.research.limits]\ntokens_per_day = "lots"\n')
    result = run_cli("serve", env=clean_env(NOMIC_API_KEY="nk-x", GATEWAY_TEAMS_FILE=str(path)))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"nomic-gateway: {path}: teams.research: limits.tokens_per_day must be a whole "
        "number from 0 to 9007199254740992, or null"
    ]


async def start_workers(
    fake: FakeNomic, redis_url: str, teams: Path, log: Any, workers: int = 3, **env: str
) -> tuple[asyncio.subprocess.Process, str]:
    """``nomic-gateway serve --workers N`` as a real process over ``redis_url``, in front of
    the fake, at the fake's pace (no global rate to wait on); its log goes to ``log``. It
    leads a process group of its own and keeps its metrics files beside the teams file, so
    :func:`stop_workers` reaps every worker and file, whatever happened."""
    port = free_port()
    environment = clean_env(
        NOMIC_API_KEY=FAKE_API_KEY, GATEWAY_UPSTREAM_URL=fake.url,  # type: ignore[attr-defined]
        GATEWAY_REDIS_URL=redis_url, GATEWAY_TEAMS_FILE=str(teams), GATEWAY_ADMIN_TOKEN=ADMIN_TOKEN,
        GATEWAY_UPSTREAM_RATE_CALLS="100000", GATEWAY_UPSTREAM_RATE_PERIOD_SECONDS="1",
        GATEWAY_UPSTREAM_RATE_BURST="1000", GATEWAY_METRICS_DIR=str(teams.parent), **env,
    )  # fmt: skip
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", "--workers", str(workers), "--port", str(port),
        env=environment, stdout=asyncio.subprocess.DEVNULL, stderr=log, start_new_session=True,
    )  # fmt: skip
    return process, f"http://127.0.0.1:{port}"


async def stop_workers(process: asyncio.subprocess.Process) -> None:
    """Stop a :func:`start_workers` gateway: SIGTERM (its workers finish and it cleans up),
    then, if it has not exited in 20 s, SIGKILL to its whole group, workers included."""
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), 20)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # workers left by a supervisor that died
    await process.wait()


def test_a_port_in_use_stops_startup_in_one_line() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("serve", "--port", str(port), env=clean_env(NOMIC_API_KEY="nk-x"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"nomic-gateway: cannot listen on 127.0.0.1:{port}: the port is in use by another "
        "program (choose --port or GATEWAY_PORT)"
    ]
    assert "listening" not in result.stdout + result.stderr


async def test_an_unreachable_redis_at_start_up_is_said_and_tried_again(
    fake_nomic: FakeNomic, tmp_path: Path
) -> None:
    from tests.conftest import spawn_redis

    redis_port, port = free_port(), free_port()
    teams, key = teams_file_with_a_key(tmp_path)
    env = clean_env(
        NOMIC_API_KEY=FAKE_API_KEY, GATEWAY_UPSTREAM_URL=fake_nomic.url,  # type: ignore[attr-defined]
        GATEWAY_TEAMS_FILE=str(teams), GATEWAY_REDIS_TIMEOUT_SECONDS="0.5",
        GATEWAY_REDIS_URL=f"redis://:secret-password@127.0.0.1:{redis_port}/0",
    )  # fmt: skip
    log = tmp_path / "gateway.log"
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "serve", "--port", str(port),
            env=env, stdout=out, stderr=out,
        )  # fmt: skip
    redis_process = None
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            await wait_healthy(session, url)  # up, though its store is not
            assert f"the store (redis at 127.0.0.1:{redis_port}) is unreachable" in log.read_text()
            redis_process = spawn_redis(redis_port, str(tmp_path))
            deadline = time.monotonic() + 15
            while "answers again" not in log.read_text() and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            async with session.post(
                url + "/v1/embedding/image", data=image_form([png(1)]),
                headers={"Authorization": f"Bearer {key}"},
            ) as response:  # fmt: skip
                assert response.status == 200  # the teams file was applied once Redis came
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
        if redis_process is not None:
            redis_process.kill()
            redis_process.wait()
    text = log.read_text()
    assert "answers again" in text
    assert "secret-password" not in text
    assert "Traceback" not in text
