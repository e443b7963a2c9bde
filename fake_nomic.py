"""FakeNomic: a test double of Nomic's embedding API, never used in production.

Nomic cannot be reached from the machines that run these tests, so this aiohttp app stands in
for ``https://api-atlas.nomic.ai``, following Nomic's documented behaviour:

- ``POST /v1/embedding/image`` takes multipart ``images`` parts or urlencoded ``urls``, and a
  ``model`` (``nomic-embed-vision-v1`` or ``-v1.5``, default ``-v1.5``);
- it checks ``Authorization: Bearer <api_key>`` (401 otherwise) and decodes every image with
  Pillow, answering a FastAPI-shaped 422 naming the first item it cannot read;
- it answers 768 float32-valued floats per input, deterministic in (model, input) and cheap
  to make (a benchmark posts thousands), with ``usage`` of ``tokens_per_image`` per input;
- ``POST /v1/embedding/text`` takes Nomic's JSON body (``texts``, at least one, ``model``,
  ``task_type``, ``long_text_mode``, ``max_tokens_per_text``, ``dimensionality``, with the
  API's defaults, which are not the official client's) and validates it as Nomic's FastAPI
  models would, answering every error found in one 422 (``loc`` like ``["body", "texts", 3]``);
  at most ``max_texts_per_call`` texts a call (Nomic's backend limit); per text, float32-valued
  floats of the requested size (the model's full size, or a Matryoshka ``dimensionality``
  where the model has them: :data:`TEXT_MODELS`, which ``text_models`` extends), deterministic
  in every field that changes Nomic's answer, and a token count (:meth:`FakeNomic.text_tokens`,
  at most the model's context in "truncate" mode) summed in ``usage``, as Nomic's OpenAPI
  schema and the official client describe it;
- faults are injected per call on both routes: ``fail_next`` takes HTTP statuses (with
  ``Retry-After`` when ``retry_after`` is set) or ``"drop"`` to drop the connection;
  ``fail_when(n)`` decides for the n-th call to the fake (0-based, both routes counted) the
  same way, or None to answer; ``latency`` delays answers, and :meth:`FakeNomic.hold` keeps
  them until :meth:`FakeNomic.release`;
- ``calls`` (images) and ``text_calls`` record what it received, so tests count exactly what
  went upstream; run as a process of its own, it tells the counts at ``GET /_fake/stats`` (not
  part of Nomic's API).

Its parsers are aiohttp's and the standard library's, not the gateway's, so the two are checked
against each other.

It is a module of its own, beside the ``gateway`` package and never imported by it: the tests,
the benchmark, the deployment check and ``scripts/fake_nomic.sh`` (``python -m fake_nomic``)
share it, run from a checkout (it is not installed with the gateway). It needs Pillow, from
the test extras, and the container image leaves it out.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import random
import re
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson
from aiohttp import web
from yarl import URL

try:
    import PIL.Image
except ImportError:
    if __name__ == "__main__":  # run as a program without the test extras: say what is missing
        raise SystemExit(
            "the fake Nomic needs Pillow, from the test extras: .venv/bin/pip install -e '.[test]'"
        ) from None
    raise

MODELS = ("nomic-embed-vision-v1", "nomic-embed-vision-v1.5")
DIMENSIONS = 768
FAKE_API_KEY = "nk-fake-organisation-key-0123456789"

TASK_TYPES = ("search_document", "search_query", "classification", "clustering")
LONG_TEXT_MODES = ("truncate", "mean")
MODEL_CONTEXT = 8192  # tokens: Nomic's max_tokens_per_text default in "mean" mode


class TextModel(NamedTuple):
    """What the fake knows of a text model: the sizes it answers in, and its context."""

    smallest: int
    dimensions: int
    context: int | None  # where "truncate" mode cuts a text; None: MODEL_CONTEXT


# Nomic's text models (its schema's NomicTextEmbeddingModel) with their model cards' sizes
# and contexts, as gateway/model_table.py cites them.
TEXT_MODELS = {
    "nomic-embed-text-v1": TextModel(768, 768, 8192),
    "nomic-embed-text-v1.5": TextModel(64, 768, 8192),
    "nomic-embed-text-v2": TextModel(256, 768, 512),
    "nomic-embed-code": TextModel(3584, 3584, None),
    "gte-multilingual-base": TextModel(128, 768, 8192),
    "all-MiniLM-L6-v2": TextModel(384, 384, 256),
}
MAX_TEXTS_PER_CALL = 10
_PIECES = re.compile(r"\w+|[^\w\s]")  # a word or one punctuation mark: the fake's "token"


@dataclass
class Call:
    model: str
    kind: str  # "image" or "url"
    items: list[bytes]
    at: float
    status: int = 0


@dataclass
class TextCall:
    """One call to the text route; the fields are those in effect (Nomic's defaults filled in)
    once the body validated."""

    texts: list[str]
    at: float
    model: str = ""
    task_type: str = ""
    long_text_mode: str = ""
    max_tokens_per_text: int | None = None
    dimensionality: int | None = None
    status: int = 0


@dataclass
class FakeNomic:
    """The fake. ``app`` is served by the tests on a free loopback port."""

    api_key: str = FAKE_API_KEY
    tokens_per_image: int = 10
    latency: float = 0.0
    fail_next: list[int | str] = field(default_factory=list)
    fail_when: Callable[[int], int | str | None] | None = None
    retry_after: float | None = None
    max_texts_per_call: int = MAX_TEXTS_PER_CALL
    text_models: dict[str, TextModel] = field(default_factory=lambda: dict(TEXT_MODELS))
    calls: list[Call] = field(default_factory=list)
    text_calls: list[TextCall] = field(default_factory=list)
    held: asyncio.Event | None = None  # answers wait for it: see hold()

    def __post_init__(self) -> None:
        # Nomic documents no body limit; aiohttp's 1 MiB default would refuse a batch of
        # twenty 50 KB photos, so the fake takes what the gateway may send in one call.
        self.app = web.Application(client_max_size=64 * 2**20)
        self.app.router.add_post("/v1/embedding/image", self._embed_image)
        self.app.router.add_post("/v1/embedding/text", self._embed_text)
        self.app.router.add_get("/_fake/stats", self._stats)  # the fake's own, not Nomic's

    def hold(self) -> None:
        """Keep the answers of calls read from now on (and of calls waiting for their
        ``latency``) until :meth:`release`."""
        self.held = asyncio.Event()

    def release(self) -> None:
        if self.held is not None:
            self.held.set()
            self.held = None

    @property
    def items_received(self) -> list[bytes]:
        return [item for call in self.calls for item in call.items]

    @property
    def texts_received(self) -> list[str]:
        """Every text of every text call whose body was read, in order."""
        return [text for call in self.text_calls for text in call.texts]

    @staticmethod
    def embedding(model: str, item: bytes) -> list[float]:
        """What the fake answers for ``item``: float32 values, as a float list."""
        return _vector(hashlib.sha256(model.encode() + b"\0" + item).digest(), DIMENSIONS)

    @staticmethod
    def text_embedding(
        text: str,
        model: str = "nomic-embed-text-v1",
        task_type: str | None = "search_document",
        dimensionality: int | None = None,
        long_text_mode: str = "mean",
        max_tokens_per_text: int | None = None,
    ) -> list[float]:
        """What the fake answers for ``text`` (defaults: the API's): a vector of
        ``dimensionality`` floats (the model's full size when None; 768 for a model not in
        :data:`TEXT_MODELS`), deterministic in every argument, where an omitted value and
        Nomic's default for it give the same vector."""
        known = TEXT_MODELS.get(model)
        size = dimensionality or (known.dimensions if known else DIMENSIONS)
        cap = max_tokens_per_text or MODEL_CONTEXT
        fields = [model, task_type or "search_document", size, long_text_mode, cap, text]
        seed = hashlib.sha256(json.dumps(fields).encode()).digest()
        return _vector(seed, size)

    @staticmethod
    def text_tokens(text: str, max_tokens_per_text: int | None = None) -> int:
        """The fake's token count for ``text``: its words and punctuation marks (Nomic counts
        neither special tokens nor the task prefix), at most ``max_tokens_per_text`` (in both
        modes: "mean" caps at 8192 by default, "truncate" at the model's context)."""
        return min(len(_PIECES.findall(text)), max_tokens_per_text or MODEL_CONTEXT)

    async def _stats(self, request: web.Request) -> web.Response:
        """What the fake received, for a benchmark running it as a process of its own."""
        answered = [call for call in self.calls if call.status == 200]
        items = sum(len(call.items) for call in answered)
        answered_texts = [call for call in self.text_calls if call.status == 200]
        texts = sum(len(call.texts) for call in answered_texts)
        return web.json_response({"calls": len(self.calls), "answered_calls": len(answered),
                                  "answered_items": items, "text_calls": len(self.text_calls),
                                  "answered_text_calls": len(answered_texts),
                                  "answered_texts": texts})  # fmt: skip

    async def _refused(self, request: web.Request, call: Call | TextCall) -> web.Response | None:
        """The injected latency, then the injected fault or a 401 for ``call``, if any."""
        index = len(self.calls) + len(self.text_calls) - 1
        if self.latency:
            await asyncio.sleep(self.latency)
        fault = self.fail_next.pop(0) if self.fail_next else None
        if fault is None and self.fail_when is not None:
            fault = self.fail_when(index)
        if fault is not None:
            if fault == "drop":
                assert request.transport is not None
                request.transport.close()
                return web.Response()
            assert isinstance(fault, int)
            call.status = fault
            headers = {"Retry-After": str(self.retry_after)} if self.retry_after else {}
            return web.json_response({"detail": "injected fault"}, status=fault, headers=headers)
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            call.status = 401
            return web.json_response({"detail": "Invalid API key"}, status=401)
        return None

    async def _embed_image(self, request: web.Request) -> web.StreamResponse:
        call = Call(model="", kind="", items=[], at=time.monotonic())
        self.calls.append(call)
        refused = await self._refused(request, call)
        if refused is not None:
            return refused
        form = await request.post()
        call.model = str(form.get("model", "nomic-embed-vision-v1.5"))
        images = [_read_and_close(part) for part in form.getall("images", [])]
        urls = [str(url).encode() for url in form.getall("urls", [])]
        call.kind, call.items = ("image", images) if images else ("url", urls)
        error = self._validate(call.model, images, urls)
        if error is not None:
            call.status = 422
            return web.json_response({"detail": [error]}, status=422)
        if self.held is not None:
            await self.held.wait()
        call.status = 200
        tokens = self.tokens_per_image * len(call.items)
        return web.Response(
            body=orjson.dumps(
                {
                    "embeddings": [self.embedding(call.model, item) for item in call.items],
                    "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                    "model": call.model,
                }
            ),
            content_type="application/json",
        )

    @staticmethod
    def _validate(model: str, images: list[bytes], urls: list[bytes]) -> dict[str, object] | None:
        if model not in MODELS:
            return {"loc": ["body", "model"], "msg": "unknown model", "type": "value_error"}
        if not images and not urls:
            return {"loc": ["body"], "msg": "no images or urls", "type": "value_error"}
        for index, data in enumerate(images):
            try:
                PIL.Image.open(io.BytesIO(data)).verify()
            except Exception:
                return {
                    "loc": ["body", "images", index],
                    "msg": "cannot identify image file",
                    "type": "value_error",
                }
        for index, url in enumerate(urls):
            if b"unreachable" in url:
                return {
                    "loc": ["body", "urls", index],
                    "msg": "could not fetch image from url",
                    "type": "value_error",
                }
        return None

    async def _embed_text(self, request: web.Request) -> web.StreamResponse:
        call = TextCall(texts=[], at=time.monotonic())
        self.text_calls.append(call)
        refused = await self._refused(request, call)
        if refused is not None:
            return refused
        raw = await request.read()
        fields, errors = self.judge_text_body(request.headers.get("Content-Type"), raw)
        if isinstance(fields.get("texts"), list):
            call.texts = [text for text in fields["texts"] if isinstance(text, str)]
        if errors:
            call.status = 422
            return web.json_response({"detail": errors}, status=422)
        if self.held is not None:
            await self.held.wait()
        call.model = fields.get("model", "nomic-embed-text-v1")
        call.task_type = fields.get("task_type") or "search_document"
        call.long_text_mode = fields.get("long_text_mode", "mean")
        call.max_tokens_per_text = _integer(fields.get("max_tokens_per_text"))
        call.dimensionality = _integer(fields.get("dimensionality"))
        call.status = 200
        model = self.text_models[call.model]
        embeddings = [
            self.text_embedding(text, call.model, call.task_type,
                                call.dimensionality or model.dimensions, call.long_text_mode,
                                call.max_tokens_per_text)
            for text in call.texts
        ]  # fmt: skip
        cap = call.max_tokens_per_text
        if cap is None and call.long_text_mode == "truncate":
            cap = model.context
        tokens = sum(self.text_tokens(text, cap) for text in call.texts)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        body = {"embeddings": embeddings, "usage": usage, "model": call.model}
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    def judge_text_body(
        self, content_type: str | None, body: bytes
    ) -> tuple[dict[str, Any], list[Error]]:
        """A text request's fields and every error Nomic would answer for them (none: it
        embeds them), without a call: for tests that check the gateway's parser against it."""
        fields, errors = _json_object(content_type, body)
        return fields, (errors or _type_errors(fields, tuple(self.text_models))
                        or self._handler_errors(fields))  # fmt: skip

    def _handler_errors(self, fields: dict[str, Any]) -> list[Error]:
        """What Nomic refuses once its model has checked the types: too many texts, an
        unknown task type, a size the model does not embed in."""
        count = len(fields["texts"])
        if count > self.max_texts_per_call:
            most = self.max_texts_per_call
            return [_error(["texts"], "too_long", f"List should have at most {most} items, "
                           f"not {count}")]  # fmt: skip
        task_type = fields.get("task_type")
        if task_type is not None and task_type not in TASK_TYPES:
            return [_error(["task_type"], "value_error", f"unknown task type {task_type!r}")]
        model = fields.get("model", "nomic-embed-text-v1")
        least, most, _ = self.text_models[model]
        dimensionality = _integer(fields.get("dimensionality"))
        if dimensionality is not None and not least <= dimensionality <= most:
            msg = f"{model} embeds in {least} to {most} dimensions"
            return [_error(["dimensionality"], "value_error", msg)]
        return []


Error = dict[str, object]
NOT_AN_OBJECT = "Input should be a valid dictionary or object to extract fields from"
STRING = "Input should be a valid string"


def _vector(seed: bytes, size: int) -> list[float]:
    steps = array("h", random.Random(seed).randbytes(2 * size))
    return [step / 131072 for step in steps]  # in [-0.25, 0.25), each exact in float32


def _error(loc: list[str | int], kind: str, msg: str) -> Error:
    return {"loc": ["body", *loc], "msg": msg, "type": kind}


def _json_object(content_type: str | None, body: bytes) -> tuple[dict[str, Any], list[Error]]:
    """The body's JSON object, or the errors FastAPI answers instead: it reads JSON only when
    the Content-Type is absent, application/json or application/*+json."""
    if not body:
        return {}, [_error([], "missing", "Field required")]
    mime = (content_type or "application/json").partition(";")[0].strip().lower()
    main, _, sub = mime.partition("/")
    if main != "application" or not (sub == "json" or sub.endswith("+json")):
        return {}, [_error([], "model_attributes_type", NOT_AN_OBJECT)]
    try:
        fields = json.loads(body)
    except ValueError as exc:  # a JSONDecodeError, or bytes that are not UTF-8
        return {}, [_error([getattr(exc, "pos", 0)], "json_invalid", "JSON decode error")]
    if not isinstance(fields, dict):
        return {}, [_error([], "model_attributes_type", NOT_AN_OBJECT)]
    return fields, []


def _type_errors(fields: dict[str, Any], models: tuple[str, ...]) -> list[Error]:
    """Every field of the wrong type, in the order of Nomic's model, as Pydantic lists them."""
    errors = []
    texts = fields.get("texts")
    if "texts" not in fields:
        errors.append(_error(["texts"], "missing", "Field required"))
    elif not isinstance(texts, list):
        errors.append(_error(["texts"], "list_type", "Input should be a valid list"))
    elif not texts:
        msg = "List should have at least 1 item after validation, not 0"
        errors.append(_error(["texts"], "too_short", msg))
    else:
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                errors.append(_error(["texts", index], "string_type", STRING))
    errors += _enum_errors(fields, "model", models)
    task_type = fields.get("task_type")
    if task_type is not None and not isinstance(task_type, str):
        errors.append(_error(["task_type"], "string_type", STRING))
    errors += _enum_errors(fields, "long_text_mode", LONG_TEXT_MODES)
    for name in ("max_tokens_per_text", "dimensionality"):
        value = fields.get(name)
        if name not in fields or (value is None and name == "dimensionality"):
            continue
        number = _integer(value)
        if number is None:
            errors.append(_error([name], "int_type", "Input should be a valid integer"))
        elif number < 1:
            errors.append(_error([name], "greater_than_equal", "Input should be at least 1"))
    return errors


def _enum_errors(fields: dict[str, Any], name: str, allowed: tuple[str, ...]) -> list[Error]:
    if name in fields and fields[name] not in allowed:
        choices = " or ".join(repr(value) for value in allowed)
        return [_error([name], "enum", f"Input should be {choices}")]
    return []


def _integer(value: object) -> int | None:
    """``value`` as an integer if JSON wrote one (``5`` or ``5.0``), else None."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _read_and_close(part: Any) -> bytes:
    """An uploaded file's bytes. Closed here: aiohttp closes it only once an answer was
    sent, and a caller that went away (a gateway killed mid-call) gets none."""
    with part.file as file:
        data: bytes = file.read()
    return data


def png(seed: int, size: int = 8) -> bytes:
    """A small, valid, distinct PNG for each seed."""
    rng = random.Random(seed)
    image = PIL.Image.new("RGB", (size, size))
    image.putdata([tuple(rng.randrange(256) for _ in range(3)) for _ in range(size * size)])
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def main() -> None:
    """Serve the fake on its own, to try the gateway without a Nomic account:
    ``python -m fake_nomic --port 9999`` (key: ``FAKE_API_KEY`` above)."""
    import argparse

    parser = argparse.ArgumentParser(description="FakeNomic, a test double of Nomic's API")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9999)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to answers")
    args = parser.parse_args()
    url = URL.build(scheme="http", host=args.host, port=args.port)  # as aiohttp names its site

    def listening(_banner: str) -> None:
        # One line, flushed: whoever started it (a script, a test) reads it through a pipe,
        # where aiohttp's own banner would sit in the buffer until the process ends.
        print(f"fake Nomic listening on {url}", flush=True)

    web.run_app(FakeNomic(latency=args.latency).app, host=args.host, port=args.port,
                print=listening)  # fmt: skip


if __name__ == "__main__":
    main()
