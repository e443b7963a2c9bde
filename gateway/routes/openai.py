"""OpenAI's embeddings API: ``POST /v1/embeddings``, on the same team keys, cache, limits,
budgets, usage and upstream lanes as Nomic's ``/v1/embedding/text`` (a text embedded through
either is one cache entry), and ``GET /v1/models``, the models it takes. Errors are in
OpenAI's shape (:func:`gateway.openai_shape.error_body`, chosen by the error middleware for
these routes), so the OpenAI SDK raises its own exception classes.
"""

from __future__ import annotations

import functools

from aiohttp import web

from gateway import forms, openai_shape
from gateway.appkeys import AUTH, MODEL_ALIASES, TEXT_LIMITS
from gateway.body_budget import Claim
from gateway.errors import UnknownModel
from gateway.routes import embeddings
from gateway.text_forms import TextLimits

OWNER = "nomic-ai"


def add_routes(app: web.Application) -> None:
    app.router.add_post(
        "/v1/embeddings", create_embeddings, expect_handler=embeddings.expect_body_later
    )
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model}", retrieve_model)


async def create_embeddings(request: web.Request) -> web.Response:
    return await embeddings.serve(request, read_embeddings_request, "text")


async def read_embeddings_request(request: web.Request, claim: Claim) -> forms.ParsedRequest:
    openai_shape.refuse_query(request.query)  # before the body is read
    parse = functools.partial(
        _parse, limits=request.app[TEXT_LIMITS], aliases=request.app[MODEL_ALIASES]
    )
    return await embeddings.read_json(request, claim, parse)


def _parse(
    body: bytes, content_type: str | None, *, limits: TextLimits, aliases: dict[str, str]
) -> forms.ParsedRequest:
    parsed = openai_shape.parse_embeddings_request(body, limits, aliases, content_type)
    costed = len(body) >= embeddings.OFF_LOOP_BYTES
    return embeddings.texts_request(parsed.texts, parsed.shape, "input", costed, parsed.tag)


async def list_models(request: web.Request) -> web.Response:
    """The text models served, and their aliases, in OpenAI's list shape."""
    await request.app[AUTH].team_for(request.headers.get("Authorization"))
    names = sorted(_served(request))
    return web.json_response({"object": "list", "data": [_model(name) for name in names]})


async def retrieve_model(request: web.Request) -> web.Response:
    await request.app[AUTH].team_for(request.headers.get("Authorization"))
    name = request.match_info["model"]
    if name not in _served(request):
        raise UnknownModel(f"The model {name[:100]!r} does not exist here", loc=("path", "model"))
    return web.json_response(_model(name))


def _served(request: web.Request) -> set[str]:
    return {*request.app[TEXT_LIMITS].models.names("text"), *request.app[MODEL_ALIASES]}


def _model(name: str) -> dict[str, object]:
    return {"id": name, "object": "model", "created": 0, "owned_by": OWNER}
