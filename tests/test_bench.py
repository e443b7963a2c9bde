"""The benchmark's own parts, and one short run of it, so that it keeps working.

The run asserts that the bench runs and prints its table, never how fast anything was: that
is for the numbers it prints, read side by side, not for a test on a shared machine.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import redis
from pytest_aiohttp import AiohttpClient

from fake_nomic import FAKE_API_KEY, FakeNomic, png
from gateway import forms, openai_shape, text_forms
from tests.bench import harness, naive, nginx
from tests.bench.ceiling import images
from tests.bench.harness import BOUNDARY, JSON, MODEL, PASSAGE, TEXTS, multipart, text_body
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent


def test_the_bench_bodies_are_what_the_gateway_and_the_ceiling_read() -> None:
    pictures = [png(1), png(2), png(3) + b"00000042"]
    body = multipart(pictures)
    content_type = f"multipart/form-data; boundary={BOUNDARY}"
    parser = forms.parser_for(content_type, forms.BodyLimits(2**20, 10))
    parser.feed(body)
    parsed = parser.finish()
    assert (parsed.model, parsed.items) == ("nomic-embed-vision-v1.5", pictures)
    assert images(body, content_type) == pictures


def lua_misses_body(salt: int, counter: int) -> bytes:
    """What the misses' wrk script sends as request ``counter`` of run ``salt``."""
    index = itertools.count(1)
    return re.sub(harness.TAG.encode(), lambda _: b"%04d %012d %02d" % (salt, counter, next(index)),
                  harness.text_misses_template())  # fmt: skip


def test_the_bench_text_bodies_are_what_the_gateway_and_the_fake_read() -> None:
    hits = [f"{index:02d} {PASSAGE}" for index in range(TEXTS)]
    misses = [f"0007 000000000042 {index:02d} {PASSAGE}" for index in range(1, TEXTS + 1)]
    limits = text_forms.TextLimits(max_texts=TEXTS, max_text_bytes=2**20)
    for body, texts in ((text_body(hits), hits), (lua_misses_body(7, 42), misses)):
        parsed = text_forms.parse_text_request(body, limits, JSON)
        assert parsed.texts == texts
        assert (parsed.model, parsed.task_type, parsed.long_text_mode, parsed.dimensionality) == (
            "nomic-embed-text-v1.5", "search_document", "truncate", None)  # fmt: skip
        assert FakeNomic().judge_text_body(JSON, body)[1] == []


def test_the_bench_openai_bodies_ask_for_the_entries_of_its_nomic_body() -> None:
    texts = [f"{index:02d} {PASSAGE}" for index in range(TEXTS)]
    limits = text_forms.TextLimits(max_texts=TEXTS, max_text_bytes=2**20)
    nomic = text_forms.parse_text_request(text_body(texts), limits, JSON)
    shapes = []
    for encoding in harness.OPENAI_ENCODINGS:
        parsed = openai_shape.parse_embeddings_request(
            harness.openai_body(texts, encoding), limits, {}, JSON
        )
        assert parsed.texts == nomic  # model, options and texts: the same cache keys
        shapes.append(parsed.shape)
    assert shapes == ["openai", "openai-base64"]


async def test_the_naive_baseline_passes_text_misses_on_and_answers_hits(
    aiohttp_client: AiohttpClient, fake_nomic: FakeNomic, redis_client: redis.Redis, redis_url: str
) -> None:
    client = await aiohttp_client(naive.make_app(redis_url, (fake_nomic.url, FAKE_API_KEY)))
    texts = ["one text", "another text"]
    expected = [FakeNomic.text_embedding(text, **harness.TEXT_OPTIONS) for text in texts]
    answers = []
    for _ in range(2):
        response = await client.post(harness.TEXT_PATH, data=text_body(texts),
                                     headers={"Content-Type": JSON})  # fmt: skip
        assert response.status == 200
        answers.append(orjson.loads(await response.read()))
    assert [answer["embeddings"] for answer in answers] == [expected, expected]
    assert [answer["model"] for answer in answers] == [harness.TEXT_OPTIONS["model"]] * 2
    assert fake_nomic.texts_received == texts  # the second request was a hit
    assert len(redis_client.keys("naive:text:*")) == 2


def bare_python(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -S``: the standard library only, as a python3 without the project's
    dependencies (``scripts/bench.sh --help`` runs one before anything is installed)."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("PYTHON")}
    return subprocess.run([sys.executable, "-S", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def test_the_bench_parses_its_arguments_with_the_standard_library_only() -> None:
    assert bare_python("-c", "import orjson").returncode != 0  # it lacks them indeed
    helped = bare_python("-m", "tests.bench", "--help")
    assert helped.returncode == 0, helped.stderr
    assert "--only ONLY" in helped.stdout
    wrong = bare_python("-m", "tests.bench", "--seconds", "three")
    assert wrong.returncode == 2
    assert "argument --seconds: invalid int value: 'three'" in wrong.stderr
    assert "Traceback" not in helped.stderr + wrong.stderr


def test_the_bench_without_its_dependencies_says_how_to_install_them() -> None:
    done = bare_python("-m", "tests.bench", "--only", "b")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "has no module 'orjson'" in done.stderr  # the first the bench's modules import
    assert "Run ./scripts/test.sh once" in done.stderr


@pytest.mark.slow
def test_a_short_bench_run_prints_its_table() -> None:
    if shutil.which("wrk") is None or shutil.which("taskset") is None:
        pytest.fail("the bench needs wrk and taskset: scripts/test.sh installs them")
    done = subprocess.run(
        [sys.executable, "-m", "tests.bench", "--seconds", "1", "--rounds", "1", "--only", "bf",
         "--budget", "180"],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr

    def servers(scenario: str) -> list[str]:
        rows = [line for line in done.stdout.splitlines() if line.startswith(f"| {scenario} |")]
        return [row.split(" | ")[1] for row in rows]

    assert servers("b. 8-image hits") == ["gateway", "naive baseline", "ceiling baseline"]
    assert servers("f. 10-text hits") == [
        "gateway", "gateway, OpenAI shape, float", "gateway, OpenAI shape, base64",
        "naive baseline"]  # fmt: skip
    for clients in ("1 client", "8 clients"):
        assert servers(f"f. text misses, {clients}") == ["fake Nomic, direct", "gateway",
                                                         "naive baseline"]  # fmt: skip
    assert "b. 8-image hits >= 2.5x naive:" in done.stdout
    assert "f. a lone text miss (no target) adds at p50" in done.stdout
    for encoding in ("float", "base64"):
        assert re.search(rf"^f\. OpenAI-shape 10-text hits, {encoding}, cost no more CPU than "
                         r"the Nomic shape's \(within 5%\): (met|NOT met) \(\d+\.\d\dx its CPU "
                         r"per request, \d+\.\d\dx its requests/s\)$", done.stdout,
                         re.M)  # fmt: skip
    assert "Redis MEMORY USAGE per cached 768-dim embedding" in done.stdout


@pytest.mark.slow
def test_the_nginx_row_caches_by_body_with_the_organisations_key(tmp_path: Path) -> None:
    if nginx.binary() is None:
        pytest.fail("the bench's nginx row needs nginx: scripts/test.sh installs it")
    fake_port, nginx_port = free_port(), free_port()
    fake_args = [sys.executable, "-m", "fake_nomic", "--port", str(fake_port)]
    nginx_args = nginx.command(tmp_path, nginx_port, f"127.0.0.1:{fake_port}", FAKE_API_KEY)
    with harness.process(fake_args) as fake, harness.process(nginx_args) as proxy:
        harness.wait_http(f"http://127.0.0.1:{fake_port}/_fake/stats", fake)
        harness.wait_http(f"http://127.0.0.1:{nginx_port}{nginx.PROBE}", proxy)
        url = f"http://127.0.0.1:{nginx_port}/v1/embedding/image"
        one, other = multipart([png(1, size=128)]), multipart([png(2, size=128)])
        statuses = [harness.cache_status(url, body, "any-client-key") for body in (one, one, other)]
        answer = orjson.loads(harness.post(url, one, "any-client-key"))
        stats = harness.get_json(f"http://127.0.0.1:{fake_port}/_fake/stats")
    assert statuses == ["MISS", "HIT", "MISS"]
    assert answer["embeddings"] == [FakeNomic.embedding(MODEL, png(1, size=128))]
    assert isinstance(stats, dict)
    assert (stats["calls"], stats["answered_calls"], stats["answered_items"]) == (2, 2, 2)


def test_the_ceiling_passes_a_miss_on_with_the_organisations_key(redis_url: str) -> None:
    fake_port, ceiling_port = free_port(), free_port()
    fake_args = [sys.executable, "-m", "fake_nomic", "--port", str(fake_port)]
    fake_url = f"http://127.0.0.1:{fake_port}"
    ceiling_args = [sys.executable, "-m", "tests.bench.ceiling", str(ceiling_port), redis_url,
                    fake_url, FAKE_API_KEY]  # fmt: skip
    with harness.process(fake_args) as fake, harness.process(ceiling_args) as ceiling:
        harness.wait_http(fake_url + "/_fake/stats", fake)
        harness.wait_http(f"http://127.0.0.1:{ceiling_port}/", ceiling)
        url = f"http://127.0.0.1:{ceiling_port}/v1/embedding/image"
        answer = orjson.loads(harness.post(url, multipart([png(1, size=128)]), "any-client-key"))
        stats = harness.get_json(fake_url + "/_fake/stats")
    assert answer["embeddings"] == [FakeNomic.embedding(MODEL, png(1, size=128))]
    assert isinstance(stats, dict)
    assert (stats["answered_calls"], stats["answered_items"]) == (1, 1)


@pytest.mark.slow
def test_a_short_memory_run_prints_both_gateways() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tests.bench.memory", "--seconds", "2", "--clients", "2"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert re.findall(r"^(hot cache .*):$", done.stdout, re.M) == [
        "hot cache 64 MiB (default)", "hot cache off"
    ]  # fmt: skip
    assert len(re.findall(r"requests answered  RSS +\d+\.\d MiB", done.stdout)) >= 4
    assert done.stdout.count("over the second half") == 2


@pytest.mark.slow
def test_a_short_soak_keeps_usage_equal_to_what_the_fake_billed_through_a_redis_restart() -> None:
    """Traffic of every kind over both replicas, Redis killed and started again halfway:
    usage equals what the fake billed, no answer is unclean. Flatness is printed only: 24 s
    are all warm-up, and a shared machine's timing is no test."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.bench.soak", "--minutes", "0.4", "--rate", "20",
         "--sample-seconds", "2", "--table-minutes", "0.1", "--url-ttl", "3",
         "--outage-seconds", "2"],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "Redis stopped (SIGKILL)" in out
    assert "Redis started again on its AOF" in out
    answered = [int(n.replace(",", "")) for n in re.findall(r"^ +\d+ s +([\d,]+) answered", out,
                                                             re.M)]  # fmt: skip
    restarted = out.index("Redis started again")
    after = [int(n.replace(",", "")) for n in re.findall(r"^ +\d+ s +([\d,]+) answered",
                                                          out[restarted:], re.M)]  # fmt: skip
    assert answered == sorted(answered)
    assert after[-1] > after[0]  # traffic flowed after the restart
    answers = re.search(r"^answers: (.*)$", out, re.M)
    assert answers is not None
    for kind in ("image", "url", "text", "openai"):
        assert f"{kind} 200 " in answers.group(1)
    assert "unclean" not in answers.group(1)
    usage = re.search(r"^usage equals billed: met \(usage billed_tokens ([\d,]+), the fake "
                      r"billed ([\d,]+), answers said ([\d,]+)\)$", out, re.M)  # fmt: skip
    assert usage is not None, out
    assert usage.group(1) == usage.group(2) != "0"
    assert re.search(r"^gateway-1\.log: \d+ log lines, 0 tracebacks$", out, re.M)
    assert re.search(r"^gateway-2\.log: \d+ log lines, 0 tracebacks$", out, re.M)
    assert "Redis keys by kind" in out
    assert out.count("flat after warm-up, ") == 5
