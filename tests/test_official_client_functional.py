"""The official ``nomic`` Python client, unmodified, through the gateway.

The client reads ``~/.nomic/credentials`` when it is imported and is synchronous, so it runs in
a subprocess with a temporary HOME and ``ATLAS_API_PATH`` pointing at the server under test.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from tests.fake_nomic import FAKE_API_KEY, FakeNomic, png

Client = TestClient[Any, Any]

SCRIPT = """
import json, sys
from nomic import embed
images = sys.argv[1:]
files = embed.image(images=[i for i in images if not i.startswith("http")])
urls = embed.image(images=[i for i in images if i.startswith("http")])
print(json.dumps({"files": files, "urls": urls}))
"""


async def run_client(base_url: str, token: str, home: Path, inputs: list[str]) -> Any:
    (home / ".nomic").mkdir(exist_ok=True)
    credentials = {"refresh_token": None, "token": token, "tenant": "production", "expires": None}
    (home / ".nomic" / "credentials").write_text(json.dumps(credentials))
    env = {**os.environ, "HOME": str(home), "ATLAS_API_PATH": base_url}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SCRIPT, *inputs,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, stderr.decode()[-3000:]
    return json.loads(stdout)


async def test_official_client_through_the_gateway_equals_nomic_directly(
    gateway: Client, fake_nomic: FakeNomic, tmp_path: Path
) -> None:
    paths = []
    for seed in range(3):
        path = tmp_path / f"image{seed}.png"
        path.write_bytes(png(seed, size=32))
        paths.append(str(path))
    inputs = [*paths, "https://example.com/a.png", "https://example.com/b.png"]

    direct = await run_client(fake_nomic.url, FAKE_API_KEY, tmp_path, inputs)  # type: ignore[attr-defined]
    fake_nomic.calls.clear()

    gateway_url = str(gateway.server.make_url("")).rstrip("/")
    team_key = gateway.team_key  # type: ignore[attr-defined]
    through = await run_client(gateway_url, team_key, tmp_path, inputs)
    assert through == direct
    assert len(through["files"]["embeddings"]) == 3
    assert len(through["urls"]["embeddings"]) == 2
    assert len(fake_nomic.items_received) == 5

    fake_nomic.calls.clear()
    again = await run_client(gateway_url, team_key, tmp_path, inputs)
    assert again == direct
    assert fake_nomic.calls == []
