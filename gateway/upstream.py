"""The Nomic client: one upstream call per batch, answers and failures mapped to the error tree."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any, NamedTuple

import aiohttp
import orjson
from aiohttp.abc import AbstractStreamWriter

from gateway import metrics
from gateway.errors import (
    LocalResourceError,
    UpstreamCredentialsRefused,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamServerError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.forms import image_format
from gateway.models import Spec
from gateway.unattributed import Unattributed

IMAGE_PATH = "/v1/embedding/image"
TEXT_PATH = "/v1/embedding/text"
_MAX_MSG = 300


class UpstreamResult(NamedTuple):
    embeddings: list[list[float]]
    total_tokens: int


class UpstreamItemRejected(Exception):
    """Nomic refused the batch because of one item, at ``index`` in the batch."""

    def __init__(self, index: int, msg: str) -> None:
        super().__init__(msg)
        self.index = index
        self.msg = msg


class NomicClient:
    """Calls Nomic's image and text endpoints with the organisation's key."""

    def __init__(
        self, session: aiohttp.ClientSession, base_url: str, api_key: str,
        unattributed: Unattributed | None = None,
    ) -> None:  # fmt: skip
        self._session = session
        self._unattributed = unattributed or Unattributed()  # what Nomic billed to no team
        self._image_url = base_url + IMAGE_PATH
        self._text_url = base_url + TEXT_PATH
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self._json_headers = {**self._headers, "Content-Type": "application/json"}
        self.last_outcome = "no call yet"  # the last call's HTTP status or failure kind

    async def embed(self, spec: Spec, items: Sequence[bytes]) -> UpstreamResult:
        """Embed ``items`` in one call; raises an :class:`UpstreamError` or
        :class:`UpstreamItemRejected`."""
        started = time.perf_counter()
        outcome = "error"
        try:
            data: bytes | aiohttp.FormData | _Multipart
            if spec.text is not None:
                url, data, headers = self._text_url, _text_body(spec, items), self._json_headers
            else:
                url, data, headers = self._image_url, _form(spec, items), self._headers
            async with self._session.post(url, data=data, headers=headers) as response:
                body = await response.read()
                outcome = str(response.status)
                return _result(response.status, response.headers, body, len(items))
        except _Unusable as exc:  # billed all the same: charged to no team, counted
            tokens = exc.billed_tokens
            self._unattributed.record("malformed_answer", tokens=tokens, items=len(items))
            raise
        except TimeoutError:
            outcome = "timeout"
            self._unattributed.record("timeout", tokens=0, items=len(items))  # billed? not known
            raise UpstreamTimeout("Nomic did not answer in time") from None
        except aiohttp.ClientError as exc:
            if LocalResourceError.behind(exc):  # no descriptor here: Nomic is not to blame
                outcome = "local_resources"
                raise LocalResourceError() from None
            outcome = "connection"
            raise UpstreamServerError(f"could not reach Nomic: {type(exc).__name__}") from None
        except OSError as exc:
            if not LocalResourceError.behind(exc):
                raise
            outcome = "local_resources"
            raise LocalResourceError() from None
        finally:
            self.last_outcome = outcome
            metrics.UPSTREAM_CALLS.labels(outcome=outcome).inc()
            metrics.UPSTREAM_ITEMS.observe(len(items))
            metrics.UPSTREAM_SECONDS.observe(time.perf_counter() - started)


def _form(spec: Spec, items: Sequence[bytes]) -> aiohttp.FormData | _Multipart:
    if spec.kind == "url":
        urls = (("urls", url.decode()) for url in items)
        return aiohttp.FormData([("model", spec.model), *urls])
    return _Multipart(spec.model, items)


def _text_body(spec: Spec, texts: Sequence[bytes]) -> bytes:
    """Nomic's text request, every option spelled out (the client's defaults are not the
    API's: what the cache key says is what is asked)."""
    assert spec.text is not None
    body: dict[str, object] = {
        "texts": [text.decode() for text in texts],
        "model": spec.model,
        "task_type": spec.text.task_type,
        "long_text_mode": spec.text.long_text_mode,
    }
    if spec.text.dimensionality is not None:
        body["dimensionality"] = spec.text.dimensionality
    if spec.text.max_tokens_per_text is not None:
        body["max_tokens_per_text"] = spec.text.max_tokens_per_text
    return orjson.dumps(body)


class _Multipart(aiohttp.Payload):
    """The images as one multipart body, written from the images' own bytes in writes of at
    most ``_SLICE_BYTES``: no joined copy of a large body, and slices small enough that the
    socket's send buffer never holds a whole large image either. (aiohttp's ``FormData``
    goes through its multipart writer, about 1.5 ms slower on this machine for one image.)"""

    def __init__(self, model: str, items: Sequence[bytes]) -> None:
        boundary = uuid.uuid4().hex
        while any(boundary.encode() in data for data in items):  # never, in practice
            boundary = uuid.uuid4().hex
        parts = [_MODEL_PART.format(boundary=boundary, model=model).encode()]
        for data in items:
            fmt = image_format(data) or "octet-stream"
            head = _IMAGE_PART.format(boundary=boundary, fmt=fmt)
            parts += (head.encode(), data, b"\r\n")
        parts.append(f"--{boundary}--\r\n".encode())
        super().__init__(parts, content_type=f"multipart/form-data; boundary={boundary}")
        self._parts = parts
        self._size = sum(len(part) for part in parts)

    async def write(self, writer: AbstractStreamWriter) -> None:
        """Writes of up to ``_SLICE_BYTES`` each, parts joined up to that: one send for a
        small image (a send is a system call, and costly), slices for a large one."""
        pending: list[memoryview] = []
        size = 0
        for part in self._parts:
            view = memoryview(part)
            for start in range(0, len(view), _SLICE_BYTES):
                piece = view[start : start + _SLICE_BYTES]
                if pending and size + len(piece) > _SLICE_BYTES:
                    await writer.write(b"".join(pending))
                    pending, size = [], 0
                pending.append(piece)
                size += len(piece)
        if pending:
            await writer.write(b"".join(pending))

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return b"".join(self._parts).decode(encoding, errors)


_SLICE_BYTES = 256 * 1024
_MODEL_PART = '--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\n{model}\r\n'
_IMAGE_PART = (
    '--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="image.{fmt}"'
    "\r\nContent-Type: image/{fmt}\r\n\r\n"
)


def _result(status: int, headers: Any, body: bytes, count: int) -> UpstreamResult:
    if status == 200:
        return _parse_embeddings(body, count)
    retry_after = _retry_after(headers.get("Retry-After"))
    if status in (401, 403):
        raise UpstreamCredentialsRefused(
            "Nomic refused the gateway's upstream credentials; the operator must check "
            "NOMIC_API_KEY"
        )
    if status == 422:
        rejected = _rejected_item(body)
        if rejected is not None:
            raise rejected
        raise UpstreamError("Nomic rejected the request without naming an item")
    if status == 429:
        raise UpstreamRateLimited("Nomic is rate limiting; retry later", retry_after=retry_after)
    if status == 503:
        raise UpstreamUnavailable("Nomic is unavailable; retry later", retry_after=retry_after)
    if status >= 500:
        raise UpstreamServerError(f"Nomic answered HTTP {status}", retry_after=retry_after)
    raise UpstreamError(f"Nomic answered HTTP {status}", retry_after=retry_after)


class _Unusable(UpstreamError):
    """A 200 the gateway cannot use; ``billed_tokens``: what its ``usage`` says (0 if none)."""

    def __init__(self, msg: str, billed_tokens: int = 0) -> None:
        super().__init__(msg)
        self.billed_tokens = billed_tokens


def _parse_embeddings(body: bytes, count: int) -> UpstreamResult:
    try:
        data = orjson.loads(body)
        embeddings = data["embeddings"]
        usage = data.get("usage") or {}
        tokens = int(usage.get("total_tokens", usage.get("prompt_tokens", 0)))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        raise _Unusable("Nomic answered 200 with a body that is not an embedding answer") from None
    billed = max(tokens, 0)
    if not isinstance(embeddings, list) or len(embeddings) != count:
        raise _Unusable(f"Nomic answered a wrong number of embeddings for {count} items", billed)
    lengths = {len(vector) if isinstance(vector, list) else 0 for vector in embeddings}
    if len(lengths) > 1 or 0 in lengths or tokens < 0:
        raise _Unusable("Nomic answered malformed embeddings", billed)
    return UpstreamResult(embeddings, tokens)


def _rejected_item(body: bytes) -> UpstreamItemRejected | None:
    """The first item a Nomic 422 names (``loc: ["body", "images", 3]``), if it names one."""
    try:
        details = orjson.loads(body)["detail"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    for detail in details if isinstance(details, list) else []:
        loc = detail.get("loc") if isinstance(detail, dict) else None
        if isinstance(loc, list) and len(loc) >= 3 and isinstance(loc[2], int):
            msg = str(detail.get("msg", "rejected by Nomic"))[:_MAX_MSG]
            return UpstreamItemRejected(loc[2], msg)
    return None


def _retry_after(value: str | None) -> float | None:
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and 0 <= seconds < 86400 else None
