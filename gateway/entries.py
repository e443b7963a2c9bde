"""Cache entries: one embedding and its token cost, stored compactly. Pure.

Layout (little-endian): ``version:u8 width:u8 dims:u16 tokens:u32 fresh_until:u32`` then
``dims`` floats of ``width`` bytes. ``fresh_until`` (seconds since the epoch, 0 for never) is
when a URL's entry turns stale: it is kept a grace period longer, to be served while Nomic
fails. Width is 4 (float32) when every value is exactly a float32, which holds for
what Nomic returns, else 8 (float64). Both read back to the very same doubles, so a hit
answers exactly what upstream answered for that item (equal after JSON parsing): a 768-dim
float32 entry is 3,084 bytes, against about 15,000 for the same vector as JSON text.

An entry read or fetched keeps its vector twice: as JSON, spliced into Nomic's answers (and
OpenAI's ``float`` encoding), and as its little-endian float32s in base64, spliced into OpenAI's
``base64`` encoding (made from the JSON at each answer it took 37 µs a vector, from the bytes
4 µs: a 10-text hit 6-13% more CPU than Nomic's shape; made once, when the entry is read from
the store or fetched, it costs a hit nothing).
"""

from __future__ import annotations

import binascii
import struct
import sys
from array import array
from typing import NamedTuple

import orjson

VERSION = 2
_HEADER = struct.Struct("<BBHII")
_SWAP = sys.byteorder != "little"


class Entry(NamedTuple):
    embedding_json: bytes  # the vector as a JSON array, ready to splice into an answer
    tokens: int
    fresh_until: int = 0  # seconds since the epoch; 0: fresh for ever
    base64: bytes = b""  # its little-endian float32s in base64; empty if not exactly float32s

    def float32_base64(self) -> bytes:
        """The vector's little-endian float32s in base64 (rounded to float32s, if it is not
        made of them)."""
        if self.base64:
            return self.base64
        return binascii.b2a_base64(
            _little_endian(array("f", orjson.loads(self.embedding_json))), newline=False
        )

    def fresh(self, now: float) -> bool:
        """Whether the entry may be served as it is at ``now`` (a URL's may have gone stale)."""
        return not self.fresh_until or self.fresh_until > now


class CorruptEntry(ValueError):
    """A stored value that is not an entry of this version."""


def encode(vector: list[float], tokens: int, fresh_until: int = 0) -> bytes:
    """The stored form of one embedding and the tokens it cost upstream.

    Raises ValueError for what cannot be stored: non-numbers, more than 65,535 values, or a
    token count outside 0..2**32-1."""
    try:
        values = array("f", vector)
        if values.tolist() != vector:
            values = array("d", vector)
        header = _HEADER.pack(VERSION, values.itemsize, len(vector), tokens, fresh_until)
    except (TypeError, OverflowError, struct.error) as exc:
        raise ValueError(f"not a storable embedding: {exc}") from None
    if _SWAP:
        values.byteswap()
    return header + values.tobytes()


def decode(blob: bytes) -> Entry:
    """The entry stored by :func:`encode`; raises :class:`CorruptEntry` on anything else."""
    if len(blob) < _HEADER.size:
        raise CorruptEntry("entry shorter than its header")
    version, width, dims, tokens, fresh_until = _HEADER.unpack_from(blob)
    if version != VERSION or width not in (4, 8) or len(blob) != _HEADER.size + width * dims:
        raise CorruptEntry("entry header does not match its body")
    values = array("f" if width == 4 else "d")
    values.frombytes(blob[_HEADER.size :])
    if _SWAP:
        values.byteswap()
    return Entry(vector_json(values.tolist()), tokens, fresh_until, base64_of(blob))


def base64_of(blob: bytes) -> bytes:
    """The vector of a stored entry (made by :func:`encode`) as its little-endian float32s in
    base64, if it was stored as float32s; else empty."""
    if blob[1] != 4:
        return b""
    return binascii.b2a_base64(memoryview(blob)[_HEADER.size :], newline=False)


def _little_endian(values: array[float]) -> bytes:
    if _SWAP:
        values.byteswap()
    return values.tobytes()


def vector_json(vector: list[float]) -> bytes:
    """``vector`` as a JSON array, in a bytes object of its own size.

    orjson returns its output in the buffer it wrote it into, which it sizes up front: for a
    768-dim vector, 127 KiB of allocation behind 15 KB of JSON (seen with orjson 3.13 under
    tracemalloc). An entry kept in the hot cache would hold all of it, eight times what the
    cache counts; the copy costs a memcpy of the JSON."""
    return memoryview(orjson.dumps(vector)).tobytes()
