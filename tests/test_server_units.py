"""The pure parts of serving: the log rate limiter, the connection guard and its descriptor
budget, protocol error answers, and local shortages kept apart from Nomic's failures."""

from __future__ import annotations

import asyncio
import errno
import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp.http_exceptions import BadHttpMessage, BadStatusLine, InvalidHeader, LineTooLong

from fake_nomic import png
from gateway import logs
from gateway.config import Settings
from gateway.connections import ConnectionGuard, budget
from gateway.errors import LocalResourceError, UpstreamServerError
from gateway.models import Spec, TextOptions
from gateway.refusals import MAX_HEADER_LINE, MAX_REQUEST_LINE, refusal
from gateway.shield import Job
from gateway.store.memory_coordinator import MemoryCoordinator
from gateway.upstream import NomicClient, UpstreamResult
from tests.helpers import breaker as make_breaker
from tests.helpers import policy as make_policy
from tests.helpers import shield as make_shield


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Lines(logging.Handler):
    """Keeps the messages it is handed."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def limited() -> Iterator[tuple[logging.Logger, Lines, Clock, logs.RepeatFilter]]:
    """A logger whose one handler has a RepeatFilter of 3 lines per 10 s on a fake clock."""
    clock, lines = Clock(), Lines()
    repeats = logs.RepeatFilter(lines.handle, limit=3, window_seconds=10, clock=clock)
    lines.addFilter(repeats)
    logger = logging.getLogger("test.repeats")
    logger.handlers[:], logger.propagate, logger.level = [lines], False, logging.DEBUG
    yield logger, lines, clock, repeats
    logger.handlers[:], logger.propagate = [], True


def test_identical_lines_pass_up_to_the_limit_per_window_then_one_summary(
    limited: tuple[logging.Logger, Lines, Clock, logs.RepeatFilter],
) -> None:
    logger, lines, clock, _ = limited
    for attempt in range(8):
        logger.warning("accept() failed: %d", attempt)  # one template, one kind of line
        clock.now += 1
    logger.error("accept() failed: %d", 99)  # another level: counted apart
    logger.warning("another line")
    assert lines.messages == [
        "accept() failed: 0", "accept() failed: 1", "accept() failed: 2",
        "accept() failed: 99", "another line",
    ]  # fmt: skip
    clock.now += 2  # the first line's window (from t=100) is over
    logger.warning("accept() failed: %d", 8)
    assert lines.messages[-2:] == [
        "5 similar lines suppressed: accept() failed: %d",
        "accept() failed: 8",
    ]


def test_a_summary_comes_with_any_later_line_or_at_a_flush(
    limited: tuple[logging.Logger, Lines, Clock, logs.RepeatFilter],
) -> None:
    logger, lines, clock, repeats = limited
    for _ in range(5):
        logging.getLogger("test.repeats.child").info("flood")
    clock.now += 11
    logger.info("something else, much later")
    assert lines.messages == ["flood"] * 3 + [
        "2 similar lines suppressed: flood",
        "something else, much later",
    ]
    for _ in range(4):
        logger.info("flood")
    repeats.flush()
    repeats.flush()  # nothing new: nothing more
    assert lines.messages[-4:] == ["flood"] * 3 + ["1 similar lines suppressed: flood"]


def test_request_lines_are_never_limited(
    limited: tuple[logging.Logger, Lines, Clock, logs.RepeatFilter],
) -> None:
    _, lines, _, _ = limited
    logs.ACCESS.handlers[:], logs.ACCESS.propagate = [lines], False
    try:
        for _ in range(20):
            logs.ACCESS.warning(logs.REQUEST_MESSAGE, "GET", "/v1/user", 200, 1.0)
    finally:
        logs.ACCESS.handlers[:], logs.ACCESS.propagate = [], True
    assert len(lines.messages) == 20


def test_configure_limits_every_line_through_the_root_handler() -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        logs.configure("INFO", "text")
        assert any(isinstance(f, logs.RepeatFilter) for f in root.handlers[0].filters)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        logs.configure_fast_path(None)


class FakeConnection:
    def __init__(self, idle: bool) -> None:
        self.idle = idle
        self.closed = False

    def shed_reason(self, now: float) -> str | None:
        return "idle" if self.idle else None

    def shed(self) -> None:
        self.closed = True


def test_at_the_bound_the_longest_idle_connection_makes_room() -> None:
    guard = ConnectionGuard(3)
    first, second, third = FakeConnection(True), FakeConnection(False), FakeConnection(True)
    assert all(guard.admit(c, 0.0) for c in (first, second, third))
    guard.active(first)  # it just finished a request: third is now the longest idle
    newcomer = FakeConnection(True)
    assert guard.admit(newcomer, 0.0)
    assert (first.closed, second.closed, third.closed) == (False, False, True)
    assert guard.open == 3
    guard.forget(third)  # its connection_lost, later: already forgotten
    assert guard.open == 3


def test_at_the_bound_with_nothing_idle_a_new_connection_is_refused() -> None:
    guard = ConnectionGuard(2)
    busy = [FakeConnection(False), FakeConnection(False)]
    assert all(guard.admit(c, 0.0) for c in busy)
    assert not guard.admit(FakeConnection(True), 0.0)
    assert not any(c.closed for c in busy)
    guard.forget(busy[0])
    assert guard.admit(FakeConnection(True), 0.0)


def settings(**values: Any) -> Settings:
    return Settings(nomic_api_key="nk-x", **values)


def test_the_bound_is_the_descriptor_limit_minus_a_reserve() -> None:
    alone = budget(settings(), 1024)
    assert alone.bound + alone.reserve == 1024
    assert not alone.configured
    assert not alone.overcommitted
    with_redis = budget(settings(redis_url="redis://r", redis_max_connections=64), 1024)
    assert with_redis.reserve == alone.reserve + 64
    assert budget(settings(workers=4), 1024).reserve > alone.reserve
    assert budget(settings(), 256).bound == 64  # a tiny limit: a quarter, never nothing
    assert budget(settings(), 8192).bound == 8192 - alone.reserve
    assert budget(settings(), 2**20).bound == 10_000  # memory bounds it too
    configured = budget(settings(max_connections=1000), 1024)
    assert (configured.bound, configured.configured, configured.overcommitted) == (1000, True, True)
    assert "at most 1000 client connections" in configured.describe()


def test_the_soft_descriptor_limit_is_raised_to_the_hard_one() -> None:
    script = (
        "import resource\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
        "from gateway.connections import raise_descriptor_limit\n"
        "print(raise_descriptor_limit() == resource.getrlimit(resource.RLIMIT_NOFILE)[0]"
        " == min(hard, 1 << 20))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=30
    )
    assert result.stdout.strip() == "True"


SECRET = "nk-0123456789abcdefSECRET"


@pytest.mark.parametrize(
    ("exc", "status", "loc"),
    [
        (LineTooLong(f"Bearer {SECRET}".encode(), MAX_HEADER_LINE), 431, ["header"]),
        (LineTooLong(f"/{SECRET}".encode(), MAX_REQUEST_LINE), 414, ["request"]),
        (
            BadHttpMessage(f"Invalid header value char:\n\n  b'Bearer {SECRET}\\x01'"),
            400,
            ["header"],
        ),
        (InvalidHeader(f"Bearer {SECRET}\x00".encode()), 400, ["header"]),
        (
            BadHttpMessage(f"Invalid character in Content-Length:\n\n  b'{SECRET}'"),
            400,
            ["header", "content-length"],
        ),
        (
            BadStatusLine(error=f"Bad status line:\n  Invalid method:\n\n  b'GET /{SECRET}'"),
            400,
            ["request"],
        ),
        (BadHttpMessage("Too many headers received"), 431, ["header"]),
        (
            BadHttpMessage(f"Unexpected whitespace after header value:\n\n  b' {SECRET}'"),
            400,
            ["header"],
        ),
    ],
)
def test_a_protocol_error_is_answered_in_general_terms(
    exc: BadHttpMessage, status: int, loc: list[str]
) -> None:
    answer = refusal(exc)
    [detail] = answer.detail()
    assert (answer.status, detail["loc"], detail["type"]) == (status, loc, "protocol_error")
    assert SECRET not in str(detail)
    assert "nk-" not in str(detail)


def test_local_shortages_are_told_apart_from_unreachable_hosts() -> None:
    key: Any = None  # aiohttp's connection key: only its printing uses it
    for code in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
        assert LocalResourceError.behind(aiohttp.ClientConnectorError(key, OSError(code, "short")))
        assert LocalResourceError.behind(aiohttp.ClientOSError(code, "short"))
        assert LocalResourceError.behind(OSError(code, "short"))
    refused = aiohttp.ClientConnectorError(key, OSError(errno.ECONNREFUSED, "refused"))
    assert not LocalResourceError.behind(refused)
    assert not LocalResourceError.behind(aiohttp.ServerDisconnectedError())


class FailingSession:
    """Stands in for the session to Nomic: every call fails with ``error``."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def post(self, *args: object, **kwargs: object) -> Any:
        raise self.error


async def test_no_descriptor_for_nomic_is_a_local_503_not_an_upstream_failure() -> None:
    cases: list[tuple[BaseException, type[BaseException], str]] = [
        (aiohttp.ClientConnectorError(None, OSError(errno.EMFILE, "Too many open files")),  # type: ignore[arg-type]
         LocalResourceError, "local_resources"),
        (OSError(errno.ENOBUFS, "No buffer space available"), LocalResourceError,
         "local_resources"),
        (aiohttp.ClientConnectorError(None, OSError(errno.ECONNREFUSED, "refused")),  # type: ignore[arg-type]
         UpstreamServerError, "connection"),
        (OSError(errno.EPIPE, "Broken pipe"), OSError, "error"),
    ]  # fmt: skip
    for error, raised, outcome in cases:
        client = NomicClient(FailingSession(error), "http://nomic.test", "nk-x")  # type: ignore[arg-type]
        with pytest.raises(raised) as caught:
            await client.embed(Spec("nomic-embed-vision-v1.5", "image"), [png(1)])
        assert client.last_outcome == outcome
        if raised is LocalResourceError:
            assert isinstance(caught.value, LocalResourceError)
            assert (caught.value.status, caught.value.kind) == (503, "gateway_overloaded")
            assert caught.value.retry_after == 1


class ShortOfDescriptors:
    calls = 0

    async def embed(self, spec: Spec, items: Any) -> UpstreamResult:
        self.calls += 1
        raise LocalResourceError()


async def test_the_shield_neither_retries_nor_counts_a_local_shortage() -> None:
    upstream, breaker = ShortOfDescriptors(), make_breaker(failures_to_open=2)
    policy = make_policy(linger_seconds=0, rate_calls=100_000, rate_period_seconds=1,
                         rate_burst=1000)  # fmt: skip
    shield = make_shield(upstream, MemoryCoordinator(), policy, breaker=breaker)
    errors = []
    try:
        for attempt in range(5):
            job = Job(b"image", owner=attempt, deadline=time.monotonic() + 10)
            [answer] = shield.submit(Spec("nomic-embed-vision-v1.5", "image"), [job])
            with pytest.raises(LocalResourceError) as caught:
                await asyncio.wait_for(answer, 5)
            errors.append(caught.value)
    finally:
        await shield.drain()
    assert upstream.calls == 5  # one call each: no retries
    assert len(errors) == 5
    assert breaker.state == "closed"


class Answers:
    async def embed(self, spec: Spec, items: Any) -> UpstreamResult:
        return UpstreamResult([[0.5] * 4 for _ in items], len(items))


async def test_a_lane_nobody_uses_any_more_goes_away(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every set of text options has a lane of its own, and a team picks them
    (max_tokens_per_text alone has 2**31 values): lanes that stayed for good were a task and
    about 4 KB each, for ever (20,000 requests of one text each: 87 MiB)."""
    monkeypatch.setattr("gateway.shield.LANE_IDLE_SECONDS", 0.05, raising=False)
    policy = make_policy(linger_seconds=0, rate_calls=100_000, rate_period_seconds=1,
                         rate_burst=1000)  # fmt: skip
    shield = make_shield(Answers(), MemoryCoordinator(), policy)
    try:
        for tokens in range(1, 101):
            options = TextOptions("search_document", None, "mean", tokens)
            spec = Spec("nomic-embed-text-v1.5", "text", options)
            [answer] = shield.submit(spec, [Job(b"text", tokens, time.monotonic() + 10)])
            assert (await asyncio.wait_for(answer, 5)).tokens == 1
        await asyncio.sleep(0.5)
        lanes = [task for task in asyncio.all_tasks()
                 if getattr(task.get_coro(), "__qualname__", "") == "Shield._run"]  # fmt: skip
        assert lanes == []
        assert shield._lanes == {}
        [answer] = shield.submit(spec, [Job(b"again", 0, time.monotonic() + 10)])
        assert (await asyncio.wait_for(answer, 5)).tokens == 1  # a lane comes back when needed
    finally:
        await shield.drain()


class Writes:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    async def write(self, chunk: bytes | memoryview) -> None:
        self.writes.append(bytes(chunk))


async def test_an_upstream_body_goes_in_one_write_when_small_and_in_bounded_slices_when_large(
) -> None:  # fmt: skip
    from gateway.upstream import _SLICE_BYTES, _Multipart

    for images in ([png(1)], [png(1), png(2)], [bytes(3 * _SLICE_BYTES + 5), png(3)]):
        body = _Multipart("nomic-embed-vision-v1.5", images)
        writer = Writes()
        await body.write(writer)  # type: ignore[arg-type]
        sent = b"".join(writer.writes)
        assert sent == b"".join(body._parts)
        assert max(len(write) for write in writer.writes) <= _SLICE_BYTES  # memory stays bounded
        if len(sent) <= _SLICE_BYTES:
            assert len(writer.writes) == 1  # one send, not one per part
        else:
            assert len(writer.writes) <= len(sent) // _SLICE_BYTES + 2
