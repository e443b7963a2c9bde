"""Hostile input, generated: random multipart and urlencoded bodies, encodings, headers and
URLs against a real ``nomic-gateway serve`` process in front of the fake Nomic (a process
too). Every answer is Nomic's shape, never a 500; what the gateway refuses never reaches the
fake; the process stays up and logs no traceback.

CI runs a bounded number of examples; ``pytest --fuzz-examples 20000`` runs a long one.
Requests are written on raw sockets, so nothing a client library would clean up is spared.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import socket
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fake_nomic import FAKE_API_KEY, png
from tests.conftest import ADMIN_TOKEN, free_port
from tests.test_cli import clean_env

CRLF = b"\r\n"
UPSTREAM_REFUSAL = "value_error.upstream"  # the fake, not the gateway, refused an item


class Answer(NamedTuple):
    status: int
    headers: dict[str, str]
    body: bytes


class Served(NamedTuple):
    port: int
    fake_port: int
    key: str
    log: Path


def exchange(port: int, request: bytes, timeout: float = 10.0) -> Answer:
    """Send raw request bytes and read the whole answer (the gateway closes after it)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(OSError):  # answered and closed before all was sent
            sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    raw = b"".join(chunks)
    head, _, body = raw.partition(CRLF * 2)
    lines = head.split(CRLF)
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        body = dechunk(body)
    return Answer(status, headers, body)


def dechunk(body: bytes) -> bytes:
    out, rest = [], body
    while rest:
        size_line, _, rest = rest.partition(CRLF)
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out.append(rest[:size])
        rest = rest[size + 2 :]
    return b"".join(out)


def http_request(
    path: str, headers: list[tuple[bytes, bytes]], body: bytes, method: bytes = b"POST"
) -> bytes:
    lines = [method + b" " + path.encode() + b" HTTP/1.1", b"Host: gateway"]
    lines += [name + b": " + value for name, value in headers]
    lines += [b"Content-Length: " + str(len(body)).encode(), b"Connection: close"]
    return CRLF.join(lines) + CRLF * 2 + body


def fake_calls(fake_port: int) -> int:
    answer = exchange(fake_port, http_request("/_fake/stats", [], b"", b"GET"))
    calls: int = json.loads(answer.body)["calls"]
    return calls


def wait_for(port: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if exchange(port, http_request("/healthz", [], b"", b"GET"), 1).status == 200:
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing answers on port {port}")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The fake and a gateway (embedded store, default limits) as processes of their own."""
    log = tmp_path_factory.mktemp("fuzz") / "gateway.log"
    fake_port, port = free_port(), free_port()
    processes: list[subprocess.Popen[bytes]] = []
    with log.open("wb") as out:
        try:
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "fake_nomic", "--port", str(fake_port)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))  # fmt: skip
            env = clean_env(
                NOMIC_API_KEY=FAKE_API_KEY, GATEWAY_ADMIN_TOKEN=ADMIN_TOKEN,
                GATEWAY_UPSTREAM_URL=f"http://127.0.0.1:{fake_port}",
                GATEWAY_UPSTREAM_RATE_CALLS="100000", GATEWAY_UPSTREAM_RATE_PERIOD_SECONDS="1",
                GATEWAY_MAX_IMAGE_BYTES="4096", GATEWAY_MAX_ITEMS="8",
            )  # fmt: skip
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "gateway", "serve", "--port", str(port)],
                env=env, stdout=out, stderr=out,
            ))  # fmt: skip
            wait_for(port)
            fake_calls(fake_port)  # the fake is up too
            key = make_key(port)
            yield Served(port, fake_port, key, log)
            assert processes[1].poll() is None, "the gateway died"
        finally:
            for process in processes:
                process.kill()
                process.wait()
    text = log.read_text(errors="replace")
    assert "Traceback" not in text
    assert "unexpected error" not in text


def make_key(port: int) -> str:
    admin = [(b"Authorization", f"Bearer {ADMIN_TOKEN}".encode()),
             (b"Content-Type", b"application/json")]  # fmt: skip
    made = exchange(port, http_request("/admin/teams", admin, b'{"id": "fuzz"}'))
    assert made.status == 201, made
    answer = exchange(port, http_request("/admin/teams/fuzz/keys", admin, b""))
    key: str = json.loads(answer.body)["key"]
    return key


# ---- what hostile clients send ------------------------------------------------------------

TEXT = st.text(st.characters(codec="utf-8"), max_size=40)
HOSTS = st.sampled_from([
    "a.example", "[::1", "[zz]", "[::1]", "[v1.x]", "xn--", "a.example\uff03b", "a\u2100b",
    "", ":80", "a.example:http", "a.example:99999", "user@", "%zz", "a b", "\u0000",
])  # fmt: skip
URLS = st.one_of(
    st.builds(lambda scheme, host, path: f"{scheme}://{host}/{path}",
              st.sampled_from(["http", "https", "ftp", "HTTP", "javascript", ""]), HOSTS, TEXT),
    TEXT,
)  # fmt: skip
MODELS = st.sampled_from(["nomic-embed-vision-v1.5", "nomic-embed-vision-v1", "", "x" * 300])
IMAGES = st.one_of(
    st.sampled_from([png(1), png(2), png(1)[:20], b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b""]),
    st.binary(max_size=64),
    st.binary(max_size=64).map(lambda tail: b"\xff\xd8\xff" + tail),  # JPEG magic, no JPEG
    st.just(png(3) + bytes(5000)),  # over the test's 4 KB image limit
)
NAMES = st.one_of(st.sampled_from(["images", "urls", "model", "other", ""]), TEXT)


@st.composite
def multipart_body(draw: st.DrawFn) -> tuple[bytes, bytes]:
    boundary = draw(st.sampled_from([b"b0und4ry", b"", b"x" * 80, b"a b", b"--"]))
    parts = []
    for _ in range(draw(st.integers(0, 5))):
        name = draw(NAMES).encode("utf-8", "surrogateescape")
        value = draw(st.one_of(IMAGES, URLS.map(str.encode), MODELS.map(str.encode)))
        filename = b'; filename="f"' if draw(st.booleans()) else b""
        head = b'Content-Disposition: form-data; name="' + name + b'"' + filename
        extra = draw(st.sampled_from([b"", b"\r\nContent-Type: image/png", b"\r\nX: \x01"]))
        parts.append(b"--" + boundary + CRLF + head + extra + CRLF * 2 + value + CRLF)
    ending = draw(st.sampled_from([b"--" + boundary + b"--\r\n", b"", b"--" + boundary]))
    body = b"".join(parts) + ending
    if draw(st.booleans()):
        body = body[: draw(st.integers(0, len(body)))]  # truncated
    content_type = b"multipart/form-data; boundary=" + boundary
    return content_type, body


@st.composite
def urlencoded_body(draw: st.DrawFn) -> tuple[bytes, bytes]:
    fields = []
    for _ in range(draw(st.integers(0, 10))):
        name = draw(st.sampled_from(["urls", "model", "images", "x", "%zz", "ur%6Cs"]))
        value = draw(st.one_of(URLS, MODELS, st.binary(max_size=20).map(bytes.hex)))
        raw = draw(st.booleans())
        fields.append(f"{name}={value if raw else value.replace('%', '%25')}")
    body = "&".join(fields).encode("utf-8", "surrogateescape")
    return b"application/x-www-form-urlencoded", body


ENCODINGS = st.sampled_from(["", "gzip", "deflate", "br", "zstd", "identity", "GZIP", "x",
                             "gzip, gzip", "compress"])  # fmt: skip
HEADER_VALUES = st.binary(max_size=30).filter(lambda v: b"\r" not in v and b"\n" not in v)


@st.composite
def hostile_request(draw: st.DrawFn, key: str) -> bytes:
    content_type, body = draw(st.one_of(
        multipart_body(), urlencoded_body(),
        st.tuples(st.sampled_from([b"application/json", b"text/plain", b"", b"multipart/mixed"]),
                  st.binary(max_size=100)),
    ))  # fmt: skip
    encoding = draw(ENCODINGS)
    if encoding.lower() in ("gzip", "deflate") and draw(st.booleans()):
        body = gzip.compress(body) if encoding.lower() == "gzip" else zlib.compress(body)
    headers = [(b"Content-Type", content_type)]
    if encoding:
        headers.append((b"Content-Encoding", encoding.encode()))
    auth = draw(st.sampled_from([f"Bearer {key}", f"Bearer {key}", "", "Bearer nk-x", "Basic x"]))
    if auth:
        headers.append((b"Authorization", auth.encode()))
    for _ in range(draw(st.integers(0, 2))):
        headers.append((draw(st.sampled_from([b"X-Request-Id", b"Accept", b"X-Junk"])),
                        draw(HEADER_VALUES)))  # fmt: skip
    return http_request("/v1/embedding/image", headers, body)


def check(answer: Answer, calls_before: int, calls_after: int) -> None:
    assert answer.status != 500, answer
    data: Any = json.loads(answer.body)  # every answer is JSON
    if answer.status == 200:
        assert isinstance(data["embeddings"], list)
        return
    assert 400 <= answer.status < 500 or answer.status == 503, answer
    assert isinstance(data["detail"], list), answer
    assert data["detail"], answer
    for detail in data["detail"]:
        assert set(detail) == {"loc", "msg", "type"}, answer
    if answer.status == 503:
        assert "retry-after" in answer.headers, answer
    if data["detail"][0]["type"] != UPSTREAM_REFUSAL:
        assert calls_after == calls_before, f"a refused request reached the fake: {answer}"


def test_hostile_requests_get_nomic_shaped_4xx_and_never_reach_the_fake(
    served: Served, fuzz_examples: int
) -> None:
    seen: dict[int, int] = {}

    @settings(max_examples=fuzz_examples, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip
    @given(request=hostile_request(served.key))
    def one(request: bytes) -> None:
        before = fake_calls(served.fake_port)
        answer = exchange(served.port, request)
        check(answer, before, fake_calls(served.fake_port))
        seen[answer.status] = seen.get(answer.status, 0) + 1

    one()
    print(f"\n{sum(seen.values())} hostile requests: {dict(sorted(seen.items()))}")
    assert exchange(served.port, http_request("/healthz", [], b"", b"GET")).status == 200


@pytest.mark.parametrize(
    ("content_type", "body", "encoding", "status"),
    [
        (b"application/x-www-form-urlencoded", b"urls=http://[::1", "", 422),
        (b"application/x-www-form-urlencoded", b"urls=http://[zz]/a", "", 422),
        (b"application/x-www-form-urlencoded", "urls=http://a\uff03b/".encode(), "", 422),
        (b"application/x-www-form-urlencoded", b"urls=http://a.example/x", "br", 415),
        (b"application/x-www-form-urlencoded", b"urls=http://a.example/x", "zstd", 415),
        (b"application/x-www-form-urlencoded", b"not gzip at all", "gzip", 400),
        (b"application/x-www-form-urlencoded", b"not deflate at all", "deflate", 400),
    ],
)
def test_the_inputs_that_gave_500s_get_4xx(
    served: Served, content_type: bytes, body: bytes, encoding: str, status: int
) -> None:
    headers = [(b"Content-Type", content_type), (b"Authorization", f"Bearer {served.key}".encode())]
    if encoding:
        headers.append((b"Content-Encoding", encoding.encode()))
    answer = exchange(served.port, http_request("/v1/embedding/image", headers, body))
    assert answer.status == status, answer
    assert json.loads(answer.body)["detail"][0]["msg"]
    if status == 415:
        assert answer.headers["accept-encoding"] == "gzip, deflate"
        assert "install" not in answer.body.decode()


def test_a_deeply_nested_admin_body_is_a_422(served: Served) -> None:
    admin = [(b"Authorization", f"Bearer {ADMIN_TOKEN}".encode()),
             (b"Content-Type", b"application/json")]  # fmt: skip
    answer = exchange(served.port, http_request("/admin/teams", admin, b"[" * 100_000))
    assert answer.status == 422
    assert json.loads(answer.body)["detail"][0]["msg"] == "the body is not JSON"
