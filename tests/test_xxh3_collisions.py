"""The attacker double in tests/xxh3_collisions.py really collides xxh3, and not sha256."""

from __future__ import annotations

import hashlib
import io
import random

import pytest
import xxhash
from PIL import Image

from tests.xxh3_collisions import colliding_jpegs, colliding_twin

GATEWAY_PREFIX = b"nomic-embed-vision-v1.5\x00image\x00"
PREFIX_LENGTHS = range(131)


def assert_collide(prefix: bytes, a: bytes, b: bytes) -> None:
    assert a != b
    assert len(a) == len(b)
    assert xxhash.xxh3_128(prefix + a).digest() == xxhash.xxh3_128(prefix + b).digest()
    assert xxhash.xxh3_64(prefix + a).digest() == xxhash.xxh3_64(prefix + b).digest()
    assert hashlib.sha256(prefix + a).digest() != hashlib.sha256(prefix + b).digest()


def test_twin_collides_for_every_prefix_length() -> None:
    rng = random.Random(20240611)
    for n in PREFIX_LENGTHS:
        prefix = rng.randbytes(n)
        for size in (max(300 - n, 241), 1500, 4000):
            content = rng.randbytes(size)
            assert_collide(prefix, content, colliding_twin(prefix, content))


def test_twin_collides_when_hashed_in_two_updates_like_the_gateway() -> None:
    content = random.Random(7).randbytes(3000)
    twin = colliding_twin(GATEWAY_PREFIX, content)
    digests = []
    for body in (content, twin):
        digest = xxhash.xxh3_128()
        digest.update(GATEWAY_PREFIX)
        digest.update(body)
        digests.append(digest.hexdigest())
    assert digests[0] == digests[1]
    assert content != twin


def test_twin_changes_only_the_chosen_region() -> None:
    rng = random.Random(99)
    content = rng.randbytes(5000)
    for n in PREFIX_LENGTHS:
        prefix = rng.randbytes(n)
        offset = rng.randrange(0, 4000)
        twin = colliding_twin(prefix, content, offset=offset, length=260)
        assert_collide(prefix, content, twin)
        changed = [i for i, (x, y) in enumerate(zip(content, twin, strict=True)) if x != y]
        assert offset <= min(changed) <= max(changed) < offset + 260
        assert len(changed) <= 33


def test_twin_rejects_what_it_cannot_collide() -> None:
    content = bytes(1000)
    with pytest.raises(ValueError, match="too short"):
        colliding_twin(b"", bytes(240))
    with pytest.raises(ValueError, match="too short"):
        colliding_twin(b"", content, offset=100, length=100)
    with pytest.raises(ValueError, match="outside"):
        colliding_twin(b"", content, offset=900, length=200)
    with pytest.raises(ValueError, match="too short"):
        colliding_twin(b"", content, offset=len(content) - 100)  # only the last 64 bytes' stripe


def test_jpegs_decode_show_different_pictures_and_collide() -> None:
    rng = random.Random(5)
    prefixes = [GATEWAY_PREFIX] + [rng.randbytes(n) for n in PREFIX_LENGTHS]
    for prefix in prefixes:
        red, blue = colliding_jpegs(prefix)
        assert_collide(prefix, red, blue)
        pictures: list[tuple[int, ...]] = []
        for data in (red, blue):
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                assert image.format == "JPEG"
                assert image.size == (64, 64)
                pixel = image.convert("RGB").getpixel((32, 32))
                assert isinstance(pixel, tuple)
                pictures.append(pixel)
        (red_r, _, red_b), (blue_r, _, blue_b) = pictures
        assert red_r > 200 > red_b
        assert blue_b > 200 > blue_r
