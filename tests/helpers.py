"""Request helpers shared by the functional tests."""

from __future__ import annotations

from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient

from gateway.config import Settings
from gateway.shield import Policy


def image_form(images: list[bytes], model: str | None = None) -> aiohttp.FormData:
    form = aiohttp.FormData()
    if model is not None:
        form.add_field("model", model)
    for data in images:
        form.add_field("images", data, filename="images", content_type="application/octet-stream")
    return form


async def post_images(
    client: TestClient[Any, Any], images: list[bytes], model: str | None = None
) -> aiohttp.ClientResponse:
    return await client.post("/v1/embedding/image", data=image_form(images, model))


async def post_urls(
    client: TestClient[Any, Any], urls: list[str], model: str | None = None
) -> aiohttp.ClientResponse:
    fields = [("urls", url) for url in urls]
    if model is not None:
        fields.append(("model", model))
    return await client.post("/v1/embedding/image", data=fields)


def policy(**changes: Any) -> Policy:
    """The shield's policy of the default settings, with ``changes``."""
    return Policy.of(Settings(nomic_api_key="not-a-real-key"))._replace(**changes)
