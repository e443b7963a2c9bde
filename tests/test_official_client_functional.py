"""The official ``nomic`` Python client, unmodified, through the gateway (in a subprocess:
:func:`tests.helpers.run_official_client`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from fake_nomic import FAKE_API_KEY, FakeNomic, png
from tests.helpers import run_official_client

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
    return await run_official_client(SCRIPT, base_url, token, home, inputs)


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
