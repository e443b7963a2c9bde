"""The benchmark's own parts, and one short run of it, so that it keeps working.

The run asserts that the bench runs and prints its table, never how fast anything was: that
is for the numbers it prints, read side by side, not for a test on a shared machine.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from gateway import forms
from tests.bench import harness, nginx
from tests.bench.ceiling import images
from tests.bench.harness import BOUNDARY, MODEL, multipart
from tests.conftest import free_port
from tests.fake_nomic import FAKE_API_KEY, FakeNomic, png


def test_the_bench_bodies_are_what_the_gateway_and_the_ceiling_read() -> None:
    pictures = [png(1), png(2), png(3) + b"00000042"]
    body = multipart(pictures)
    content_type = f"multipart/form-data; boundary={BOUNDARY}"
    parser = forms.parser_for(content_type, forms.BodyLimits(2**20, 10))
    parser.feed(body)
    parsed = parser.finish()
    assert (parsed.model, parsed.items) == ("nomic-embed-vision-v1.5", pictures)
    assert images(body, content_type) == pictures


@pytest.mark.slow
def test_a_short_bench_run_prints_its_table() -> None:
    if shutil.which("wrk") is None or shutil.which("taskset") is None:
        pytest.fail("the bench needs wrk and taskset: scripts/test.sh installs them")
    done = subprocess.run(
        [sys.executable, "-m", "tests.bench", "--seconds", "1", "--rounds", "1", "--only", "b",
         "--budget", "120"],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| b. 8-image hits")]
    assert [row.split(" | ")[1] for row in rows] == ["gateway", "naive baseline",
                                                     "ceiling baseline"]  # fmt: skip
    assert "b. 8-image hits >= 2.5x naive:" in done.stdout
    assert "Redis MEMORY USAGE per cached 768-dim embedding" in done.stdout


@pytest.mark.slow
def test_the_nginx_row_caches_by_body_with_the_organisations_key(tmp_path: Path) -> None:
    if nginx.binary() is None:
        pytest.fail("the bench's nginx row needs nginx: scripts/test.sh installs it")
    fake_port, nginx_port = free_port(), free_port()
    fake_args = [sys.executable, "-m", "tests.fake_nomic", "--port", str(fake_port)]
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
