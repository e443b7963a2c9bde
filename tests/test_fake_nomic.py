"""The fake Nomic run as a program of its own (``python -m fake_nomic``), as the bench,
the deployment check and a newcomer trying the gateway run it."""

from __future__ import annotations

import json
import select
import subprocess
import sys
import urllib.request
from pathlib import Path

from fake_nomic import FAKE_API_KEY
from tests.conftest import free_port, stop_nodes

ROOT = Path(__file__).resolve().parent.parent
READY_SECONDS = 30  # a loaded machine imports aiohttp and Pillow slowly


def test_run_as_a_program_it_says_where_it_listens_once_it_does(tmp_path: Path) -> None:
    port = free_port()
    errors = tmp_path / "stderr.txt"
    with errors.open("wb") as stderr:
        fake = subprocess.Popen(
            [sys.executable, "-m", "fake_nomic", "--port", str(port)],
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr, text=True,
        )  # fmt: skip
    try:
        assert fake.stdout is not None
        ready, _, _ = select.select([fake.stdout], [], [], READY_SECONDS)
        line = fake.stdout.readline() if ready else ""
        assert line == f"fake Nomic listening on http://127.0.0.1:{port}\n", errors.read_text()
        # It listens once it says so: no retry here.
        body = json.dumps({"texts": ["hello"], "model": "nomic-embed-text-v1.5"}).encode()
        call = urllib.request.Request(f"http://127.0.0.1:{port}/v1/embedding/text", data=body,
                                      headers={"Authorization": f"Bearer {FAKE_API_KEY}",
                                               "Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(call, timeout=10) as answer:
            assert len(json.load(answer)["embeddings"]) == 1
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_fake/stats", timeout=10) as answer:
            assert json.load(answer)["answered_texts"] == 1
    finally:
        stop_nodes([fake])
        assert fake.stdout is not None
        fake.stdout.close()
