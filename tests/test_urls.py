"""The URLs the gateway forwards: syntactically valid http(s) URLs only, and no exception for
any text at all."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.urls import MAX_URL_LENGTH, url_problem


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com",
        "https://example.com/a.png",
        "HTTPS://Example.COM./a.png?size=2&x=%20#top",
        "http://a/",
        "http://my_host.example.com/x",  # DNS names hold underscores; fetchers take them
        "http://xn--bcher-kva.example/x.png",
        "http://bücher.example/x.png",  # fetched as its IDNA form
        "http://127.0.0.1:8080/x.png",
        "http://[::1]/x.png",
        "http://[2001:db8::8a2e:370:7334]:443/x.png",
        "http://user:secret@example.com/x.png",
        "https://example.com/caf%C3%A9/ünïcödé.png",
        "https://example.com/" + "x" * (MAX_URL_LENGTH - 20),
    ],
)
def test_valid_urls_are_forwarded(url: str) -> None:
    assert url_problem(url) is None


@pytest.mark.parametrize(
    ("url", "word"),
    [
        ("ftp://example.com/a.png", "not an http(s) URL"),
        ("example.com/a.png", "not an http(s) URL"),
        ("", "not an http(s) URL"),
        ("https://", "no host"),
        ("http:///a.png", "no host"),
        ("http://exa mple.com/\x00", "whitespace or a control"),
        ("http://example.com/\x00", "whitespace or a control"),
        ("http://example.com/a\x7f", "whitespace or a control"),
        ("http://example.com/a\x85", "whitespace or a control"),  # C1 control (NEL)
        ("http://example.com/a b", "whitespace or a control"),
        ("http://example.com/\u00a0", "whitespace or a control"),
        ("http://example.com/\u200b", "whitespace or a control"),  # zero-width space
        ("http://example.com/\u202e", "whitespace or a control"),  # bidi override
        ("http://exa%20mple.com/", "host name"),
        ("http://exa\\mple.com/", "host name"),
        ("http://-example.com/", "host name"),
        ("http://example-.com/", "host name"),
        ("http://a..b/", "host name"),
        ("http://" + "a" * 64 + ".com/", "host name"),
        ("http://" + ".".join(["a" * 63] * 4) + "/", "host name"),
        ("http://ex*ample.com/", "host name"),
        ("http://256.1.1.1/", "IPv4"),
        ("http://1.2.3/", "IPv4"),
        ("http://example.0x7f/", "IPv4"),
        ("http://[::1/", "malformed"),
        ("http://[127.0.0.1]/", "malformed"),
        ("http://[fe80::1%25eth0]/", "IPv6"),
        ("http://[v1.fe]/", "IPv6"),
        ("http://example.com:99999/", "malformed"),
        ("http://example.com:x/", "malformed"),
        ("http://example.com:0/", "port 0"),
        ("https://example.com/" + "x" * MAX_URL_LENGTH, "longer than"),
    ],
)
def test_invalid_urls_are_refused_with_a_reason(url: str, word: str) -> None:
    problem = url_problem(url)
    assert problem is not None
    assert word in problem


labels = st.from_regex(r"[a-z0-9]([a-z0-9_-]{0,20}[a-z0-9])?", fullmatch=True)
names = (
    st.lists(labels, min_size=1, max_size=4)
    .map(".".join)
    .filter(lambda name: not name.rsplit(".", 1)[-1].isdigit())
)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(lambda address: f"[{address}]")
paths = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="#?"),
                max_size=40)  # fmt: skip
valid_urls = st.builds(
    lambda scheme, host, port, path: f"{scheme}://{host}{port}/{path}",
    st.sampled_from(["http", "https"]),
    names | ipv4 | ipv6,
    st.none().map(lambda _: "") | st.integers(1, 65535).map(lambda port: f":{port}"),
    paths,
)


@given(valid_urls)
def test_generated_valid_urls_are_forwarded(url: str) -> None:
    assert url_problem(url) is None


# Whitespace and control characters, ASCII and not: none is ever part of a forwarded URL.
unprintable = st.characters(categories=["Cc", "Cf", "Zs", "Zl", "Zp"])


@given(valid_urls, unprintable, st.integers(0, 10_000))
def test_a_control_or_space_character_anywhere_refuses_the_url(
    url: str, char: str, where: int
) -> None:
    at = where % (len(url) + 1)
    problem = url_problem(url[:at] + char + url[at:])
    assert problem is not None


@given(st.text(max_size=300))
def test_any_text_is_a_url_or_a_reason(text: str) -> None:
    problem = url_problem(text)
    assert problem is None or problem


@given(st.ip_addresses())
def test_every_ip_address_is_a_host(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    host = f"[{address}]" if address.version == 6 else str(address)
    assert url_problem(f"http://{host}/x") is None
