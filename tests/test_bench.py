"""The benchmark's own parts, and one short run of it, so that it keeps working.

The run asserts that the bench runs and prints its table, never how fast anything was: that
is for the numbers it prints, read side by side, not for a test on a shared machine.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from gateway import forms
from tests.bench.ceiling import images
from tests.bench.harness import BOUNDARY, multipart
from tests.fake_nomic import png


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
