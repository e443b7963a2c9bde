"""The naive baseline: what a careful engineer writes in an afternoon. Not shipped.

aiohttp's own multipart reader, xxh3_128 per image, one Redis MGET, the stored JSON returned.
``python -m tests.bench.naive PORT REDIS_URL``; ``seed`` stores JSON answers for given images.
"""

from __future__ import annotations

import sys

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
    values = await request.app["redis"].mget([key(image) for image in images])
    if any(value is None for value in values):
        return web.json_response({"detail": "miss"}, status=404)
    body = b'{"embeddings":[' + b",".join(values) + b'],"usage":{},"model":"' + MODEL.encode()
    return web.Response(body=body + b'"}', content_type="application/json")


def main() -> None:
    port, redis_url = int(sys.argv[1]), sys.argv[2]
    app = web.Application()
    app["redis"] = aioredis.Redis.from_url(redis_url)
    app.router.add_post("/v1/embedding/image", embed)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


if __name__ == "__main__":
    main()
