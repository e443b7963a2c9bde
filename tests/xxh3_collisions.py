"""Test double of an attacker: inputs that collide under XXH3 with its default secret.

The old cache key, ``xxh3_128(prefix + content)``, has a public prefix and a public secret, so
anyone can make a second content with the same key and get another team's cached embedding.
This module makes such pairs on demand, so tests can show the attack and that the new key
defeats it.

How (inputs over 240 bytes; XXH3 64 and 128 bit share this part): the input is read in 64-byte
stripes, 16 to a 1024-byte block. In stripe ``n`` of a block, lane ``i`` (the little-endian
word ``d`` at ``64n + 8i``) meets the secret word ``s`` at ``8n + 8i`` and does::

    k = d ^ s;  acc[i ^ 1] += d;  acc[i] += (k & 0xFFFFFFFF) * (k >> 32)

A block only adds; blocks are scrambled in between and the last 64 bytes take another path.
So inputs of one length and the same last 64 bytes collide if each block adds the same totals
to each accumulator. A word whose ``k`` has a zero half adds nothing to ``acc[i]`` and its
other half is free, so two such words can add any total to ``acc[i ^ 1]``: rewriting lanes
``i`` and ``i ^ 1`` in two stripes of a block restores both accumulators, whatever else
changed in those lanes of that block.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

from PIL import Image

# XXH3_kSecret, XXH3's default 192-byte secret, as published in xxhash.h.
_SECRET = bytes.fromhex(
    "b8fe6c3923a44bbe7c01812cf721ad1cded46de9839097db7240a4a4b7b3671f"
    "cb79e64eccc0e578825ad07dccff7221b8084674f743248ee03590e6813a264c"
    "3c2852bb91c300cb88d0658b1b532ea371644897a20df94e3819ef46a9deacd8"
    "a8fa763fe39c343ff9dcbbc7c70b4f1d8a51e04bcdb45931c89f7ec9d9787364"
    "eac5ac8334d3ebc3c581a0fffa1363eb170ddd51b7f0da49d316552629d4689e"
    "2b16be587d47a1fc8ff8b8d17ad031ce45cb3a8f95160428afd7fbcabb4b407e"
)
_BLOCK = (len(_SECRET) - 64) // 8  # stripes per block
_M32, _M64 = 2**32 - 1, 2**64 - 1


def _word(buf: bytes | bytearray, pos: int) -> int:
    return int.from_bytes(buf[pos : pos + 8], "little")


def _secret(stripe: int, lane: int) -> int:
    return _word(_SECRET, 8 * (stripe % _BLOCK + lane))


def _product(d: int, s: int) -> int:
    k = d ^ s
    return (k & _M32) * (k >> 32)


def _block_sums(msg: bytes | bytearray) -> list[list[int]]:
    """What each block's stripes add to each of the 8 accumulators, mod 2**64."""
    stripes = (len(msg) - 1) // 64  # XXH3 leaves the rest to its last-64-bytes stripe
    sums = [[0] * 8 for _ in range(-(-stripes // _BLOCK))]
    for g in range(stripes):
        acc = sums[g // _BLOCK]
        for lane in range(8):
            d = _word(msg, 64 * g + 8 * lane)
            acc[lane ^ 1] = (acc[lane ^ 1] + d) & _M64
            acc[lane] = (acc[lane] + _product(d, _secret(g, lane))) & _M64
    return sums


def _balance(prefix: bytes, original: bytes, edited: bytes, regions: Sequence[range]) -> bytes:
    """``edited`` with unedited words in ``regions`` rewritten to collide with ``original``."""
    p, whole, msg = len(prefix), prefix + original, bytearray(prefix + edited)
    if len(msg) <= 240 or len(msg) != len(whole) or msg[-64:] != whole[-64:]:
        raise ValueError("prefix + content must exceed 240 bytes; its last 64 may not change")

    def usable(g: int, pair: int) -> bool:
        pos = 64 * g + 16 * pair
        inside = any(pos - p in r and pos - p + 15 in r for r in regions)
        return inside and pos + 16 <= len(msg) - 64 and msg[pos : pos + 16] == whole[pos : pos + 16]

    for block, (want, have) in enumerate(zip(_block_sums(whole), _block_sums(msg), strict=True)):
        for pair in range(4):
            a, b = 2 * pair, 2 * pair + 1
            if want[a] == have[a] and want[b] == have[b]:
                continue
            slots = [g for g in range(_BLOCK * block, _BLOCK * (block + 1)) if usable(g, pair)][:2]
            if len(slots) < 2:
                raise ValueError(f"no room in block {block} to rebalance; widen the region")
            need_a, need_b = want[a] - have[a], want[b] - have[b]
            for g in slots:  # what the slots' current words add, to be replaced
                da, db = _word(msg, 64 * g + 8 * a), _word(msg, 64 * g + 8 * b)
                need_a += _product(da, _secret(g, a)) + db
                need_b += _product(db, _secret(g, b)) + da
            for lane, need in ((a, need_b), (b, need_a)):
                s1, s2 = (_secret(g, lane) for g in slots)
                rest = (need - (s1 >> 32 << 32) - (s2 & _M32)) & _M64
                # k's high half is zero in the first word and its low half in the second.
                words = (s1 >> 32 << 32) | (rest & _M32), (rest >> 32 << 32) | (s2 & _M32)
                for g, w in zip(slots, words, strict=True):
                    msg[64 * g + 8 * lane : 64 * g + 8 * lane + 8] = w.to_bytes(8, "little")
    return bytes(msg[p:])


def colliding_twin(
    prefix: bytes, content: bytes, *, offset: int = 0, length: int | None = None
) -> bytes:
    """A different ``content`` of the same length and XXH3 (64 and 128 bit) of prefix + content.

    At most 33 bytes change, all in ``content[offset:offset + length]`` (by default, from
    ``offset`` on) and none in the last 64. Raises ValueError if prefix + content is 240 bytes
    or less or the region too small: it must reach into three stripes of one block, and 260
    bytes always do.
    """
    end = len(content) if length is None else offset + length
    if not 0 <= offset <= end <= len(content):
        raise ValueError("region lies outside content")
    # Flip one byte, then let _balance undo its effect elsewhere in its block.
    for pos in range(offset, min(end, len(content) - 64), 16):
        flipped = content[:pos] + bytes([content[pos] ^ 1]) + content[pos + 1 :]
        try:
            return _balance(prefix, content, flipped, [range(offset, end)])
        except ValueError:
            continue
    raise ValueError("prefix + content is too short or the region too small for a collision")


def _jpeg_body(color: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), color).save(out, "JPEG")
    return out.getvalue()[2:]  # without SOI


def colliding_jpegs(prefix: bytes) -> tuple[bytes, bytes]:
    """Two valid JPEGs, a red and a blue 64x64 square, with the same XXH3 of prefix + file.

    Both files hold both pictures. Only the length of a comment (COM) segment differs: in the
    red file it ends before the red picture, in the blue one it swallows it. Comments on both
    sides of that length give _balance a whole block to work in, whatever the prefix.
    """
    red, blue, pad = _jpeg_body("red"), _jpeg_body("blue"), bytes(1100)

    def build(skipped: bytes) -> bytes:
        switch = b"\xff\xfe" + (2 + len(pad) + len(skipped)).to_bytes(2, "big")
        com = b"\xff\xfe" + (2 + len(pad)).to_bytes(2, "big") + pad
        return b"\xff\xd8" + com + switch + pad + red + blue

    red_file, edited = build(b""), build(red)
    pads = [range(6, 6 + len(pad)), range(10 + len(pad), 10 + 2 * len(pad))]
    return red_file, _balance(prefix, red_file, edited, pads)
