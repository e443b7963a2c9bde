"""What the benchmark runs its servers and wrk with: bodies, processes, /proc readings, wrk
scripts.

Every process started here is stopped when its ``with`` block ends, whatever happens in it.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, NamedTuple

import orjson

BOUNDARY = "benchboundary"
MODEL = "nomic-embed-vision-v1.5"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
JSON = "application/json"
TEXT_PATH = "/v1/embedding/text"
OPENAI_PATH = "/v1/embeddings"
# OpenAI's encodings: the API's default, then the OpenAI SDK's when the caller sets none.
OPENAI_ENCODINGS = ("float", "base64")
TEXTS = 10  # a text request's texts: a full upstream call, as the official client sends them
TAG = "@tag@"  # where a text of the misses' template gets what makes it new
# The official client's text body: its model, task type and long-text mode, no dimensionality.
TEXT_OPTIONS = {"model": "nomic-embed-text-v1.5", "task_type": "search_document",
                "dimensionality": None, "long_text_mode": "truncate"}  # fmt: skip
PASSAGE = (
    "Caching embeddings pays off when the same passages come back: a support team re-indexes "
    "its knowledge base every night, and most articles have not changed since the day before. "
    "Each paragraph is sent to the embedding model again, billed again, and answered with the "
    "very same vector. A gateway that keys each text by its model, options and exact content "
    "answers those from its cache and sends only the new or edited paragraphs upstream."
)


def multipart_head() -> bytes:
    """The body up to the first image's bytes."""
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="model"\r\n\r\n{MODEL}\r\n'
    ).encode()


def image_part(image: bytes) -> bytes:
    return (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="images"; filename="images"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + image
        + b"\r\n"
    )


def multipart(images: Sequence[bytes]) -> bytes:
    return multipart_head() + b"".join(map(image_part, images)) + f"--{BOUNDARY}--\r\n".encode()


def text_body(texts: Sequence[str]) -> bytes:
    """A ``POST /v1/embedding/text`` body, as the official client sends one."""
    return orjson.dumps({"texts": list(texts), **TEXT_OPTIONS})


def openai_body(texts: Sequence[str], encoding_format: str) -> bytes:
    """A ``POST /v1/embeddings`` body, as the OpenAI SDK sends one, for the model of
    :func:`text_body`; Nomic's options left out, so the gateway fills in the official client's
    (:data:`TEXT_OPTIONS`): the same texts are the same cache entries through either shape."""
    fields = {"input": list(texts), "model": TEXT_OPTIONS["model"]}
    return orjson.dumps({**fields, "encoding_format": encoding_format})


def text_misses_template() -> bytes:
    """A body of :data:`TEXTS` times the passage, each behind a :data:`TAG`."""
    return text_body([f"{TAG} {PASSAGE}"] * TEXTS)


@contextlib.contextmanager
def process(
    args: Sequence[str], env: dict[str, str] | None = None, cpus: str | None = None,
    log: IO[bytes] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:  # fmt: skip
    """``args`` running (on ``cpus`` if given, its stderr to ``log`` if given) until the
    block ends; then stopped, killed if it takes over 20 s."""
    pinned = ["taskset", "-c", cpus, *args] if cpus else list(args)
    stderr = subprocess.DEVNULL if log is None else log
    proc = subprocess.Popen(pinned, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_http(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except urllib.error.HTTPError:
            return  # it answers: up
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


def post(url: str, body: bytes, key: str, content_type: str = MULTIPART) -> bytes:
    request = _post_request(url, body, key, content_type)
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.read()  # type: ignore[no-any-return]


def cache_status(
    url: str, body: bytes, key: str, content_type: str = MULTIPART, header: str = "X-Cache-Status"
) -> str:
    """What a cache's ``header`` says of one post (HIT, MISS, ...): nginx's
    ``X-Cache-Status`` by default, the gateway's is ``X-Cache``."""
    request = _post_request(url, body, key, content_type)
    with urllib.request.urlopen(request, timeout=60) as response:
        response.read()
        return str(response.headers.get(header, ""))


def _post_request(
    url: str, body: bytes, key: str, content_type: str = MULTIPART
) -> urllib.request.Request:
    headers = {"Content-Type": content_type, "Authorization": f"Bearer {key}"}
    return urllib.request.Request(url, data=body, headers=headers)


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()  # type: ignore[no-any-return]


def get_json(url: str) -> object:
    return orjson.loads(fetch(url))


def tree(pid: int) -> list[int]:
    """``pid`` and every process under it (a supervisor and its workers)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        found.append(todo.pop())
        todo.extend(children.get(found[-1], []))
    return found


def cpu_seconds(pids: Sequence[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pids: Sequence[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            status = Path(f"/proc/{pid}/status").read_text()
            total += int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]
    return total / 1024


class WrkResult(NamedTuple):
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int


def lua_string(data: bytes) -> str:
    return '"' + "".join(f"\\{byte}" for byte in data) + '"'


def wrk_script(
    path: Path, key: str, body: str, dynamic: str = "", content_type: str = MULTIPART
) -> Path:
    """A wrk script posting bodies of ``content_type``. ``body`` is a Lua expression for a
    fixed body; ``dynamic``, if given, is a Lua expression evaluated for every request instead
    (``body`` is then Lua run once before, and ``counter`` the request's number)."""
    headers = (
        f'wrk.method = "POST"\n'
        f'wrk.headers["Content-Type"] = "{content_type}"\n'
        f'wrk.headers["Authorization"] = "Bearer {key}"\n'
    )
    read = (
        "local function read(name)\n"
        '  local f = assert(io.open(name, "rb")); local data = f:read("*a"); f:close()\n'
        "  return data\nend\n"
    )
    text = read + headers
    if dynamic:
        text += (
            f"{body}\nmath.randomseed(1)\ncounter = 0\n"
            "request = function()\n  counter = counter + 1\n"
            f"  return wrk.format(nil, nil, nil, {dynamic})\nend\n"
        )
    else:
        text += f"wrk.body = {body}\n"
    path.write_text(text)
    return path


def run_wrk(url: str, script: Path, seconds: float, connections: int, cpus: str) -> WrkResult:
    args = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "--timeout", "30s",
            "-s", str(script), url]  # fmt: skip
    out = subprocess.run(["taskset", "-c", cpus, *args], capture_output=True, text=True,
                         check=True, timeout=seconds + 60).stdout  # fmt: skip
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"errors during the run:\n{out}")

    def number(pattern: str) -> re.Match[str]:
        found = re.search(pattern, out)
        if found is None:
            raise RuntimeError(f"wrk printed no {pattern!r}:\n{out}")
        return found

    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    p50, p99 = (number(rf"\s{pct}%\s+([\d.]+)(us|ms|s)\b") for pct in ("50", "99"))
    return WrkResult(
        rps=float(number(r"Requests/sec:\s+([\d.]+)").group(1)),
        p50_ms=float(p50.group(1)) * scale[p50.group(2)],
        p99_ms=float(p99.group(1)) * scale[p99.group(2)],
        requests=int(number(r"(\d+) requests in").group(1)),
    )
