"""The ceiling baseline: the least work a hit, or a miss, can take on aiohttp. Not shipped,
not safe.

The body is read whole and split at the boundary with no validation at all, each image is
hashed with xxh3_128, one Redis MGET fetches the stored JSON fragments, and the answer is
those fragments between a prefix and suffix made once. aiohttp's low-level server, no
router, no middleware. A miss, given an upstream, is the body passed on as it came with the
organisation's key, over a kept-alive connection, and Nomic's answer passed back: nothing
stored, nothing counted. It only marks how fast this hardware and this stack let a hit, or a
miss, be. ``python -m tests.bench.ceiling PORT REDIS_URL [NOMIC_URL NOMIC_KEY]``; keys are
the naive baseline's.
"""

from __future__ import annotations

import asyncio
import sys

import aiohttp
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


async def serve(port: int, redis_url: str, upstream: tuple[str, str] | None) -> None:
    client = aioredis.Redis.from_url(redis_url)
    session = aiohttp.ClientSession()

    async def handle(request: web.BaseRequest) -> web.Response:
        body = await request.read()
        content_type = request.headers["Content-Type"]
        values = await client.mget([key(image) for image in images(body, content_type)])
        if None not in values:
            return web.Response(body=PREFIX + b",".join(values) + SUFFIX, headers=HEADERS)
        if upstream is None:
            return web.Response(status=404)
        url, api_key = upstream
        headers = {"Authorization": f"Bearer {api_key}", "Content-Type": content_type}
        async with session.post(url + request.path, data=body, headers=headers) as answer:
            return web.Response(body=await answer.read(), status=answer.status, headers=HEADERS)

    server = web.Server(handle, access_log=None)
    await asyncio.get_running_loop().create_server(server, "127.0.0.1", port, reuse_address=True)
    await asyncio.Event().wait()


def main() -> None:
    upstream = (sys.argv[3], sys.argv[4]) if len(sys.argv) > 4 else None
    asyncio.run(serve(int(sys.argv[1]), sys.argv[2], upstream))


if __name__ == "__main__":
    main()
