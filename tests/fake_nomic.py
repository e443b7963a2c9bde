"""FakeNomic: a test double of Nomic's image embedding API, never used in production.

Nomic cannot be reached from the machines that run these tests, so this aiohttp app stands in
for ``https://api-atlas.nomic.ai``, following Nomic's documented behaviour:

- ``POST /v1/embedding/image`` takes multipart ``images`` parts or urlencoded ``urls``, and a
  ``model`` (``nomic-embed-vision-v1`` or ``-v1.5``, default ``-v1.5``);
- it checks ``Authorization: Bearer <api_key>`` (401 otherwise) and decodes every image with
  Pillow, answering a FastAPI-shaped 422 naming the first item it cannot read;
- it answers 768 float32-valued floats per input, deterministic in (model, input) and cheap
  to make (a benchmark posts thousands), with ``usage`` of ``tokens_per_image`` per input;
- faults are injected per call: ``fail_next`` takes HTTP statuses (with ``Retry-After`` when
  ``retry_after`` is set) or ``"drop"`` to drop the connection; ``fail_when(n)`` decides for
  the n-th call (0-based) the same way, or None to answer; ``latency`` delays answers;
- ``calls`` records what it received, so tests count exactly what went upstream; run as a
  process of its own, it tells the counts at ``GET /_fake/stats`` (not part of Nomic's API).

Its parser is aiohttp's, not the gateway's, so the two are checked against each other.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import random
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

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


@dataclass
class Call:
    model: str
    kind: str  # "image" or "url"
    items: list[bytes]
    at: float
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
    calls: list[Call] = field(default_factory=list)
    held: asyncio.Event | None = None  # answers wait for it: see hold()

    def __post_init__(self) -> None:
        # Nomic documents no body limit; aiohttp's 1 MiB default would refuse a batch of
        # twenty 50 KB photos, so the fake takes what the gateway may send in one call.
        self.app = web.Application(client_max_size=64 * 2**20)
        self.app.router.add_post("/v1/embedding/image", self._embed_image)
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

    @staticmethod
    def embedding(model: str, item: bytes) -> list[float]:
        """What the fake answers for ``item``: float32 values, as a float list."""
        seed = hashlib.sha256(model.encode() + b"\0" + item).digest()
        steps = array("h", random.Random(seed).randbytes(2 * DIMENSIONS))
        return [step / 131072 for step in steps]  # in [-0.25, 0.25), each exact in float32

    async def _stats(self, request: web.Request) -> web.Response:
        """What the fake received, for a benchmark running it as a process of its own."""
        answered = [call for call in self.calls if call.status == 200]
        items = sum(len(call.items) for call in answered)
        return web.json_response({"calls": len(self.calls), "answered_calls": len(answered),
                                  "answered_items": items})  # fmt: skip

    async def _embed_image(self, request: web.Request) -> web.StreamResponse:
        call = Call(model="", kind="", items=[], at=time.monotonic())
        index = len(self.calls)
        self.calls.append(call)
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
    ``python -m tests.fake_nomic --port 9999`` (key: ``FAKE_API_KEY`` above)."""
    import argparse

    parser = argparse.ArgumentParser(description="FakeNomic, a test double of Nomic's API")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9999)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to answers")
    args = parser.parse_args()
    web.run_app(FakeNomic(latency=args.latency).app, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
