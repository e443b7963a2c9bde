"""The ceiling baseline: the least work a hit can take on aiohttp. Not shipped, not safe.

The body is read whole and split at the boundary with no validation at all, each image is
hashed with xxh3_128, one Redis MGET fetches the stored JSON fragments, and the answer is
those fragments between a prefix and suffix made once. aiohttp's low-level server, no
router, no middleware. It only marks how fast this hardware lets a hit be.
``python -m tests.bench.ceiling PORT REDIS_URL``; keys are the naive baseline's.
"""

from __future__ import annotations

import asyncio
import sys

import redis.asyncio as aioredis
from aiohttp import web

from tests.bench.naive import MODEL, key

PREFIX = b'{"embeddings":['
SUFFIX = b'],"usage":{},"model":"' + MODEL.encode() + b'"}'
HEADERS = {"Content-Type": "application/json"}


def images(body: bytes, content_type: str) -> list[bytes]:
    delimiter = b"--" + content_type.rpartition("boundary=")[2].encode()
    found = []
    for part in body.split(delimiter)[1:-1]:
        head, _, content = part.partition(b"\r\n\r\n")
        if b'name="images"' in head:
            found.append(content[:-2])  # the CRLF before the next delimiter
    return found


async def serve(port: int, redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)

    async def handle(request: web.BaseRequest) -> web.Response:
        body = await request.read()
        keys = [key(image) for image in images(body, request.headers["Content-Type"])]
        values = await client.mget(keys)
        if None in values:
            return web.Response(status=404)
        return web.Response(body=PREFIX + b",".join(values) + SUFFIX, headers=HEADERS)

    server = web.Server(handle, access_log=None)
    await asyncio.get_running_loop().create_server(server, "127.0.0.1", port, reuse_address=True)
    await asyncio.Event().wait()


def main() -> None:
    asyncio.run(serve(int(sys.argv[1]), sys.argv[2]))


if __name__ == "__main__":
    main()
