"""The naive baseline: what a careful engineer writes in an afternoon. Not shipped.

Images: aiohttp's own multipart reader, xxh3_128 per image, one Redis MGET, the stored JSON
returned. Texts (``POST /v1/embedding/text``): the JSON body parsed with orjson, xxh3_128 per
text over the request's model and options and the text, one MGET. Given an upstream
(``python -m tests.bench.naive PORT REDIS_URL [UPSTREAM_URL API_KEY]``), a request that misses
is passed on whole with the organisation's key, and its answer's embeddings stored as JSON (no
single-flight, no batching, no accounting, no validation); without one, a miss is a 404.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Mapping

import aiohttp
import orjson
import redis.asyncio as aioredis
import xxhash
from aiohttp import web

MODEL = "nomic-embed-vision-v1.5"
TEXT_OPTIONS = ("model", "task_type", "dimensionality", "long_text_mode", "max_tokens_per_text")
DEFAULT_TEXT_MODEL = "nomic-embed-text-v1"  # Nomic's, when a body names none
Upstream = tuple[aiohttp.ClientSession, str, str]  # session, Nomic's URL, the organisation's key
REDIS = web.AppKey("redis", aioredis.Redis)
UPSTREAM = web.AppKey("upstream", Upstream)


def key(image: bytes) -> str:
    return "naive:" + xxhash.xxh3_128_hexdigest(MODEL.encode() + b"\0" + image)


def text_key(options: bytes, text: str) -> str:
    """``options``: the request's :data:`TEXT_OPTIONS` values, as :func:`text_options` makes
    them."""
    return "naive:text:" + xxhash.xxh3_128_hexdigest(options + b"\0" + text.encode())


def text_options(fields: Mapping[str, object]) -> bytes:
    return orjson.dumps([fields.get(name) for name in TEXT_OPTIONS])


async def embed(request: web.Request) -> web.Response:
    reader = await request.multipart()
    images = []
    async for part in reader:
        if part.name == "images":
            images.append(await part.read())  # type: ignore[union-attr]
    keys = [key(image) for image in images]
    values = await request.app[REDIS].mget(keys)
    if any(value is None for value in values):
        form = aiohttp.FormData()
        form.add_field("model", MODEL)
        for image in images:
            form.add_field("images", image, filename="image.png", content_type="image/png")
        return await forward(request, "/v1/embedding/image", form, keys)
    return answer(values, MODEL)


async def embed_text(request: web.Request) -> web.Response:
    body = await request.read()
    fields = orjson.loads(body)
    options = text_options(fields)
    keys = [text_key(options, text) for text in fields["texts"]]
    values = await request.app[REDIS].mget(keys)
    if any(value is None for value in values):
        return await forward(request, "/v1/embedding/text", body, keys)
    return answer(values, fields.get("model", DEFAULT_TEXT_MODEL))


def answer(values: list[bytes], model: str) -> web.Response:
    body = b'{"embeddings":[' + b",".join(values) + b'],"usage":{},"model":' + orjson.dumps(model)
    return web.Response(body=body + b"}", content_type="application/json")


async def forward(
    request: web.Request, path: str, data: aiohttp.FormData | bytes, keys: list[str]
) -> web.Response:
    upstream = request.app.get(UPSTREAM)
    if upstream is None:
        return web.json_response({"detail": "miss"}, status=404)
    session, url, api_key = upstream
    headers = {"Authorization": f"Bearer {api_key}"}
    if isinstance(data, bytes):
        headers["Content-Type"] = "application/json"
    async with session.post(url + path, data=data, headers=headers) as up:
        body = await up.read()
        if up.status != 200:
            return web.Response(body=body, status=up.status, content_type="application/json")
    values = [orjson.dumps(vector) for vector in orjson.loads(body)["embeddings"]]
    await request.app[REDIS].mset(dict(zip(keys, values, strict=True)))
    return web.Response(body=body, content_type="application/json")


def make_app(redis_url: str, upstream: tuple[str, str] | None = None) -> web.Application:
    """The baseline's app; ``upstream``: Nomic's URL and the organisation's key, for misses."""
    app = web.Application()

    async def clients(app: web.Application) -> AsyncIterator[None]:
        async with aioredis.Redis.from_url(redis_url) as client, aiohttp.ClientSession() as session:
            app[REDIS] = client
            if upstream is not None:
                app[UPSTREAM] = (session, *upstream)
            yield

    app.cleanup_ctx.append(clients)
    app.router.add_post("/v1/embedding/image", embed)
    app.router.add_post("/v1/embedding/text", embed_text)
    return app


def main() -> None:
    port, redis_url = int(sys.argv[1]), sys.argv[2]
    upstream = (sys.argv[3], sys.argv[4]) if len(sys.argv) > 4 else None
    web.run_app(make_app(redis_url, upstream), host="127.0.0.1", port=port, print=None,
                access_log=None)  # fmt: skip


if __name__ == "__main__":
    main()
