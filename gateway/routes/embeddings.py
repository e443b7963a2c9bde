"""``POST /v1/embedding/image``: Nomic's endpoint, answered from the cache where it can be."""

from __future__ import annotations

import asyncio

from aiohttp import web

from gateway import forms
from gateway.appkeys import LIMITS, PIPELINE, SETTINGS
from gateway.errors import BodyTimeout, PayloadTooLarge


async def embed_image(request: web.Request) -> web.Response:
    seconds = request.app[SETTINGS].body_timeout_seconds
    try:
        async with asyncio.timeout(seconds):
            parsed = await read_form(request)
    except TimeoutError:
        raise BodyTimeout(f"request body not received within {seconds:g} seconds") from None
    answer = await request.app[PIPELINE].embed(parsed)
    return web.Response(
        body=answer.body,
        content_type="application/json",
        headers={
            "X-Cache": answer.cache_status,
            "X-Cache-Hits": str(answer.hits),
            "X-Cache-Misses": str(answer.misses),
            "X-Billed-Tokens": str(answer.billed_tokens),
        },
    )


async def read_form(request: web.Request) -> forms.ParsedRequest:
    """Stream the body into its parser, refusing it once it passes the body limit."""
    limit = request.app[SETTINGS].max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"request body larger than {limit} bytes")
    parser = forms.parser_for(request.headers.get("Content-Type", ""), request.app[LIMITS])
    received = 0
    async for chunk in request.content.iter_any():
        received += len(chunk)
        if received > limit:
            raise PayloadTooLarge(f"request body larger than {limit} bytes")
        parser.feed(chunk)
    return parser.finish()
