from __future__ import annotations

import pytest

from fake_nomic import png
from gateway.errors import InvalidRequest
from gateway.forms import BodyLimits, ParsedRequest, image_format, parser_for

LIMITS = BodyLimits(max_image_bytes=10_000, max_items=8)
BOUNDARY = "b0undary"
CT = f"multipart/form-data; boundary={BOUNDARY}"


def body(*parts: tuple[str, bytes]) -> bytes:
    out = b""
    for name, data in parts:
        out += (
            (
                f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"; '
                f'filename="x"\r\nContent-Type: application/octet-stream\r\n\r\n'
            ).encode()
            + data
            + b"\r\n"
        )
    return out + f"--{BOUNDARY}--\r\n".encode()


def parse(content_type: str, data: bytes, chunk: int | None = None) -> ParsedRequest:
    parser = parser_for(content_type, LIMITS)
    step = chunk or max(1, len(data))
    for start in range(0, len(data), step):
        parser.feed(data[start : start + step])
    return parser.finish()


@pytest.mark.parametrize("chunk", [None, 1, 7, 4096])
def test_multipart_in_any_chunking(chunk: int | None) -> None:
    images = [png(1), png(2), png(1)]
    data = body(("model", b"nomic-embed-vision-v1"), *(("images", i) for i in images))
    parsed = parse(CT, data, chunk)
    assert parsed == ParsedRequest.of("nomic-embed-vision-v1", "image", images)


def test_model_defaults_to_v15_and_may_come_last() -> None:
    assert parse(CT, body(("images", png(1)))).model == "nomic-embed-vision-v1.5"
    assert parse(CT, body(("images", png(1)), ("model", b"nomic-embed-vision-v1"))).model == (
        "nomic-embed-vision-v1"
    )


def test_urlencoded_urls() -> None:
    parsed = parse(
        "application/x-www-form-urlencoded; charset=utf-8",
        b"model=nomic-embed-vision-v1&urls=https%3A%2F%2Fa.example%2Fx.png&urls=http://b.example/y",
    )
    assert parsed.kind == "url"
    assert parsed.items == [b"https://a.example/x.png", b"http://b.example/y"]
    assert parsed.loc(1) == ("body", "urls", 1)


def test_urls_may_come_in_multipart() -> None:
    parsed = parse(CT, body(("urls", b"https://a.example/x.png")))
    assert parsed.kind == "url"


def test_oversized_image_is_refused_while_streaming() -> None:
    parser = parser_for(CT, LIMITS)
    head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="images"\r\n\r\n'.encode()
    parser.feed(head + png(1))
    with pytest.raises(InvalidRequest) as raised:
        for _ in range(10):
            parser.feed(b"\0" * 4096)  # never the end of the part: refused before it
    assert raised.value.loc == ("body", "images", 0)


def test_unknown_fields_of_any_size_are_ignored_and_not_kept() -> None:
    parsed = parse(CT, body(("notes", b"x" * 200_000), ("images", png(1))), chunk=4096)
    assert parsed.items == [png(1)]


def test_oversized_model_field_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="field 'model' larger"):
        parse(CT, body(("images", png(1)), ("model", b"x" * 70_000)))


def test_urlencoded_field_over_the_limit_is_refused_while_streaming() -> None:
    parser = parser_for("application/x-www-form-urlencoded", LIMITS)
    parser.feed(b"urls=http%3A%2F%2Fa%2F")
    with pytest.raises(InvalidRequest, match="field 'urls' larger") as raised:
        for _ in range(100):  # 400 KB at most, refused long before
            parser.feed(b"%41" * 1365)
    assert raised.value.loc == ("body", "urls")


def test_urlencoded_tolerates_empty_fields() -> None:
    parsed = parse(
        "application/x-www-form-urlencoded", b"urls=http://a/&&model=nomic-embed-vision-v1&"
    )
    assert parsed == ParsedRequest.of("nomic-embed-vision-v1", "url", [b"http://a/"])


def test_model_is_compared_exactly_as_sent() -> None:
    with pytest.raises(InvalidRequest, match="unknown model"):
        parse(CT, body(("images", png(1)), ("model", b" nomic-embed-vision-v1 ")))


def test_non_utf8_url_in_multipart_names_its_position() -> None:
    with pytest.raises(InvalidRequest) as raised:
        parse(CT, body(("urls", b"http://a/"), ("urls", b"http://\xff/")))
    assert raised.value.loc == ("body", "urls", 1)


def test_non_utf8_model_is_refused() -> None:
    with pytest.raises(InvalidRequest) as raised:
        parse(CT, body(("images", png(1)), ("model", b"\xff\xfe")))
    assert raised.value.loc == ("body", "model")


def test_too_many_urlencoded_fields() -> None:
    with pytest.raises(InvalidRequest, match="more than 8 urls"):
        parse("application/x-www-form-urlencoded", b"&".join([b"urls=http://a/"] * 40))


def test_overlong_url() -> None:
    url = "https://a.example/" + "x" * 3000
    with pytest.raises(InvalidRequest, match="longer than"):
        parse("application/x-www-form-urlencoded", f"urls={url}".encode())


@pytest.mark.parametrize(
    ("data", "fmt"),
    [
        (b"\x89PNG\r\n\x1a\n....", "png"),
        (b"\xff\xd8\xff\xe0....", "jpeg"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "webp"),
        (b"GIF89a", None),
        (b"RIFF\x00\x00\x00\x00WAVE", None),
        (b"", None),
    ],
)
def test_image_format_by_magic(data: bytes, fmt: str | None) -> None:
    assert image_format(data) == fmt
