"""``GET /v1/user``: the official ``nomic`` client calls it before its first embedding."""

from __future__ import annotations

from aiohttp import web


async def current_user(request: web.Request) -> web.Response:
    # Until team keys exist every caller is the organisation's anonymous user.
    return web.json_response({"id": "anonymous", "name": "nomic-gateway", "organizations": []})
