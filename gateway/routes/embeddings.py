"""``POST /v1/embedding/image`` and ``/text``: Nomic's endpoints, answered from the cache
where they can be.

What can be decided before the body is read is decided first, so a refused request costs no
upload: the team key, a per-minute limit this process already saw used up, the body's
``Content-Length`` and ``Content-Type`` (its ``Content-Encoding`` in the middleware), and
room in the process's budget of body bytes in flight (held until the answer).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable

from aiohttp import HttpVersion11, web

from gateway import answer_room, forms, malloc, tags, text_forms
from gateway.answers import Shape
from gateway.appkeys import (
    ACCOUNTS,
    AUTH,
    BODY_BUDGET,
    BODY_LIMITS,
    HEAVY_WORK,
    PIPELINE,
    SETTINGS,
    TEXT_LIMITS,
    TIMINGS,
)
from gateway.assembly import Answer, Completed, FetchFailed, Lookup, assemble
from gateway.body_budget import Claim
from gateway.errors import BodyTimeout, InvalidRequest, PayloadTooLarge
from gateway.middlewares import LOG_FIELDS
from gateway.models import Kind
from gateway.teams import Team
from gateway.text_forms import TextLimits

# A texts body this large is parsed off the event loop: about 5 ms of parsing and per-text work.
OFF_LOOP_BYTES = 256 * 1024


async def embed_image(request: web.Request) -> web.Response:
    return await serve(request, read_form, "image")  # images or URLs: the same limits


async def embed_text(request: web.Request) -> web.Response:
    return await serve(request, read_texts, "text")


async def serve(
    request: web.Request,
    read: Callable[[web.Request, Claim], Awaitable[forms.ParsedRequest]],
    kind: Kind,
) -> web.Response:
    """Judge the request before its body (key, tag, the limits a request of ``kind``
    counts toward, room for the body), ``read`` the body, and answer it. A tag in the
    ``X-Gateway-Tag`` header wins over one the body names (OpenAI's ``user``)."""
    app = request.app
    deadline = time.monotonic() + app[TIMINGS].deadline_seconds
    team = await app[AUTH].team_for(request.headers.get("Authorization"))
    log = request[LOG_FIELDS]
    log["team"] = team.id
    tag = header_tag(request)
    app[ACCOUNTS].refuse_early(team, kind, tag or tags.UNTAGGED)
    claim = app[BODY_BUDGET].claim(team.id)
    try:
        with claim:
            parsed = await read(request, claim)
            if tag is not None:
                parsed = parsed._replace(tag=tag)
            if claim.bytes >= malloc.TRIM_AFTER_BYTES:
                malloc.release_freed_memory()  # the socket's chunks, joined into images now
            log.update(model=parsed.model, items=len(parsed.items))
            return await _embed(request, team, parsed, deadline)
    finally:
        if claim.largest >= malloc.TRIM_AFTER_BYTES:
            malloc.release_freed_memory()  # the images, answered


def header_tag(request: web.Request) -> str | None:
    """The tag the ``X-Gateway-Tag`` header names (None: none, or empty); a malformed
    one is refused, naming the header (:mod:`gateway.tags`)."""
    value = request.headers.get(tags.HEADER)
    if not value:
        return None
    try:
        return tags.check(value)
    except tags.InvalidTag as exc:
        raise InvalidRequest(f"{tags.HEADER} {exc}", loc=("header", tags.HEADER)) from None


async def _embed(
    request: web.Request, team: Team, parsed: forms.ParsedRequest, deadline: float
) -> web.Response:
    log = request[LOG_FIELDS]
    pipeline, accounts = request.app[PIPELINE], request.app[ACCOUNTS]
    lookup = await pipeline.lookup(parsed, team.cache_scope)
    if not lookup.missing:  # room for its answer first: it is about to be built
        async with answer_room.reserved(request, answer_room.hit_bound(lookup)):
            cached = assemble(lookup)
            await accounts.admit_answered(team, lookup, cached)
            return _response(cached, log)
    fetch = functools.partial(_fetch, request, team, lookup, deadline)
    answer = await accounts.answer_misses(team, lookup, fetch)
    async with answer_room.reserved(request, answer_room.held_for(len(answer.body)), built=True):
        return _response(answer, log)


async def _fetch(request: web.Request, team: Team, lookup: Lookup, deadline: float) -> Completed:
    """Fetch what the lookup missed and answer, logging how long that took and, if it failed,
    what it cost all the same."""
    log = request[LOG_FIELDS]
    calls = team.limits.upstream_calls_per_minute
    started = time.perf_counter()
    try:
        return await request.app[PIPELINE].complete(lookup, deadline, team.id, calls)
    except FetchFailed as failed:
        log["billed_tokens"] = failed.bill.paid
        raise
    finally:
        log["upstream_ms"] = round((time.perf_counter() - started) * 1000, 2)


def _response(answer: Answer, log: dict[str, object]) -> web.Response:
    log.update(hits=answer.hits, misses=answer.misses, billed_tokens=answer.billed_tokens)
    return web.Response(
        body=answer.body,
        content_type="application/json",
        headers={
            "X-Cache": answer.cache_status,
            "X-Cache-Hits": str(answer.hits),
            "X-Cache-Misses": str(answer.misses),
            "X-Cache-Stale": str(answer.stale),
            "X-Billed-Tokens": str(answer.billed_tokens),
        },
    )


async def expect_body_later(request: web.Request) -> None:
    """The route's ``Expect`` handler: no ``100 Continue`` before the request is judged (its
    key, its team's limits, its Content-Length and Content-Type, room for its body); the
    handler sends it when it starts to read the body (:func:`_continue`), so a refused
    client never uploads."""


async def _continue(request: web.Request) -> None:
    if request.version == HttpVersion11 and (
        request.headers.get("Expect", "").lower() == "100-continue"
    ):
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # as aiohttp's own handler: the answer has not begun


async def read_form(request: web.Request, claim: Claim) -> forms.ParsedRequest:
    """The images' (or URLs') request: the body streamed into its parser."""
    forms.refuse_query(request.query)  # Nomic's routes take none: before the body is read
    parser = forms.parser_for(request.headers.get("Content-Type", ""), request.app[BODY_LIMITS])
    await _stream(request, claim, parser.feed)
    return parser.finish()


async def read_texts(request: web.Request, claim: Claim) -> forms.ParsedRequest:
    """The texts' request: a JSON body, read whole, then judged."""
    forms.refuse_query(request.query)  # Nomic's routes take none: before the body is read
    parse = functools.partial(_parse_texts, limits=request.app[TEXT_LIMITS])
    return await read_json(request, claim, parse)


async def read_json(
    request: web.Request, claim: Claim, parse: Callable[[bytes, str | None], forms.ParsedRequest]
) -> forms.ParsedRequest:
    """A JSON body read whole, then ``parse``d (with its ``Content-Type``). A large one is
    parsed, digested and costed in the heavy-work thread: a batch of long documents took
    seconds of the event loop, every other team's hits waiting."""
    content_type = request.headers.get("Content-Type")
    text_forms.check_content_type(content_type)  # before the body is read
    body = bytearray()
    await _stream(request, claim, body.extend)
    if len(body) < OFF_LOOP_BYTES:
        return parse(bytes(body), content_type)
    work = functools.partial(parse, bytes(body), content_type)
    return await asyncio.get_running_loop().run_in_executor(request.app[HEAVY_WORK], work)


def _parse_texts(
    body: bytes, content_type: str | None, *, limits: TextLimits
) -> forms.ParsedRequest:
    texts = text_forms.parse_text_request(body, limits, content_type)
    return texts_request(texts, costed=len(body) >= OFF_LOOP_BYTES)


def texts_request(
    texts: text_forms.TextRequest, shape: Shape = "nomic", field: str = "", costed: bool = True,
    tag: str = tags.UNTAGGED,
) -> forms.ParsedRequest:  # fmt: skip
    """The request of validated ``texts``, answered in ``shape`` (its items at ``field``),
    of the job ``tag``. ``costed``: each text's cost worked out now, as a large body's are,
    in the heavy-work thread; a small body's are worked out on the loop, for its misses
    alone."""
    items = [text.encode() for text in texts.texts]
    return forms.ParsedRequest.of(
        texts.model, "text", items, texts.options(), shape=shape, field=field, costed=costed,
        tag=tag,
    )  # fmt: skip


async def _stream(request: web.Request, claim: Claim, feed: Callable[[bytes], object]) -> None:
    """Feed the body to ``feed`` as it comes, within the body time limit, the body size limit
    and ``claim`` on the process's budget of body bytes."""
    seconds = request.app[SETTINGS].body_timeout_seconds
    try:
        async with asyncio.timeout(seconds):
            await _feed(request, claim, feed)
    except TimeoutError:
        raise BodyTimeout(f"request body not received within {seconds:g} seconds") from None


async def _feed(request: web.Request, claim: Claim, feed: Callable[[bytes], object]) -> None:
    limit = request.app[SETTINGS].max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"request body larger than {limit} bytes")
    claim.cover(request.content_length or 0)  # compressed bodies grow it as they inflate
    await _continue(request)
    received = 0
    async for chunk in request.content.iter_any():
        received += len(chunk)
        if received > limit:
            raise PayloadTooLarge(f"request body larger than {limit} bytes")
        claim.cover(received)
        feed(chunk)
