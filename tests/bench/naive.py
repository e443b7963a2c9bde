"""The naive baseline: what a careful engineer writes in an afternoon. Not shipped.

aiohttp's own multipart reader, xxh3_128 per image, one Redis MGET, the stored JSON returned.
Given an upstream (``python -m tests.bench.naive PORT REDIS_URL [UPSTREAM_URL API_KEY]``), a
request that misses is passed on whole with the organisation's key, and its answer's
embeddings stored as JSON (no single-flight, no batching, no accounting); without one, a miss
is a 404. ``seed`` stores JSON answers for given images.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator

import aiohttp
import orjson
import redis.asyncio as aioredis
import xxhash
from aiohttp import web

MODEL = "nomic-embed-vision-v1.5"


def key(image: bytes) -> str:
    return "naive:" + xxhash.xxh3_128_hexdigest(MODEL.encode() + b"\0" + image)


async def embed(request: web.Request) -> web.Response:
    reader = await request.multipart()
    images = []
    async for part in reader:
        if part.name == "images":
            images.append(await part.read())  # type: ignore[union-attr]
    keys = [key(image) for image in images]
    values = await request.app["redis"].mget(keys)
    if any(value is None for value in values):
        return await forward(request, images, keys)
    body = b'{"embeddings":[' + b",".join(values) + b'],"usage":{},"model":"' + MODEL.encode()
    return web.Response(body=body + b'"}', content_type="application/json")


async def forward(request: web.Request, images: list[bytes], keys: list[str]) -> web.Response:
    upstream = request.app.get("upstream")
    if upstream is None:
        return web.json_response({"detail": "miss"}, status=404)
    session, url, api_key = upstream
    form = aiohttp.FormData()
    form.add_field("model", MODEL)
    for image in images:
        form.add_field("images", image, filename="image.png", content_type="image/png")
    async with session.post(url, data=form, headers={"Authorization": f"Bearer {api_key}"}) as up:
        body = await up.read()
        if up.status != 200:
            return web.Response(body=body, status=up.status, content_type="application/json")
    answer = orjson.loads(body)
    values = [orjson.dumps(vector) for vector in answer["embeddings"]]
    await request.app["redis"].mset(dict(zip(keys, values, strict=True)))
    return web.Response(body=body, content_type="application/json")


async def _session(app: web.Application) -> AsyncIterator[None]:
    async with aiohttp.ClientSession() as session:
        url, api_key = app["upstream_at"]
        app["upstream"] = (session, url + "/v1/embedding/image", api_key)
        yield


def main() -> None:
    port, redis_url = int(sys.argv[1]), sys.argv[2]
    app = web.Application()
    app["redis"] = aioredis.Redis.from_url(redis_url)
    if len(sys.argv) > 4:
        app["upstream_at"] = (sys.argv[3], sys.argv[4])
        app.cleanup_ctx.append(_session)
    app.router.add_post("/v1/embedding/image", embed)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


if __name__ == "__main__":
    main()
