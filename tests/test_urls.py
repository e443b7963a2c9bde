"""The URLs the gateway forwards: syntactically valid http(s) URLs only, read alike by every
parser, and no exception for any text at all."""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import quote, urlsplit

import pytest
from hypothesis import given, settings
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
        "http://127.0.0.1:8080/x.png",
        "http://[::1]/x.png",
        "http://[2001:db8::8a2e:370:7334]:443/x.png",
        "https://example.com/caf%C3%A9/ünïcödé.png",  # an IRI's path: the fetcher escapes it
        "http://example.com/a@b/c:d/?e=f/g?h@i#j?k/l@m",  # '@', ':', '/', '?' past the host
        "http://example.com/!$&'()*+,;=~._-",
        "http://example.com:8080",
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
        ("http://exa\\mple.com/", "'\\\\' is not a URL character"),
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
        # Read differently by two parsers, or by none (found by a review: each reached Nomic).
        ("http://[::1]x/a.png", "malformed host or port"),
        ("http://[::1]:/a.png", "malformed host or port"),
        ("http://[::1]:80x/a.png", "malformed host or port"),
        ("http://example.com\\@evil.com/a.png", "'\\\\' is not a URL character"),
        ("http://example.com/a\\b.png", "'\\\\' is not a URL character"),
        ("http://u@p@example.com/a.png", "user or password"),
        ("http://user:secret@example.com/x.png", "user or password"),
        ("http://@example.com/x.png", "user or password"),
        ("http://example.com/%zz<>{}", "'<' is not a URL character"),
        ("http://example.com/%zz", "'%' not followed by two hex digits"),
        ("http://example.com/a%2", "'%' not followed by two hex digits"),
        ("http://example.com/a.png?q=%", "'%' not followed by two hex digits"),
        ("http://example.com/a.png#%g0", "'%' not followed by two hex digits"),
        ('http://example.com/"a".png', "'\"' is not a URL character"),
        ("http://example.com/a{b}.png", "'{' is not a URL character"),
        ("http://example.com/a|b.png", "'|' is not a URL character"),
        ("http://example.com/a^b.png", "'^' is not a URL character"),
        ("http://example.com/a`b.png", "'`' is not a URL character"),
        ("http://example.com/a[1].png", "'[' or ']' after the host"),
        ("http://example.com/a.png?x=]", "'[' or ']' after the host"),
        ("http://example.com/a.png#b#c", "a second '#'"),
        ("http://example.com:/a.png", "malformed host or port"),
        ("http://example.com:+80/a.png", "malformed host or port"),
        ("http://example.com:8_0/a.png", "malformed host or port"),
        ("http://example.com:\u0663/a.png", "malformed host or port"),  # an Arabic-Indic 3
        ("http://example.com:80:80/a.png", "malformed host or port"),
        ("http://exa:mple.com:80/a.png", "malformed host or port"),
        # Not ASCII: refused, the IDNA form named, rather than forwarded as a second spelling.
        ("http://example\u3002com/b.png", "send its IDNA form, example.com"),  # ideographic
        ("http://example\uff0ecom/b.png", "send its IDNA form, example.com"),  # fullwidth
        ("http://example\uff61com/b.png", "send its IDNA form, example.com"),  # halfwidth
        ("http://bücher.example/x.png", "send its IDNA form, xn--bcher-kva.example"),
        ("http://\uff45xample.com/x.png", "send its IDNA form, example.com"),  # fullwidth e
        ("http://" + "ü" * 64 + ".example/x.png", "not a valid host name"),
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
# A path's characters (RFC 3986's pchar and '/'), its escapes, and an IRI's non-ASCII letters.
path_characters = st.sampled_from(list("abcXYZ019-._~!$&'()*+,;=:@/üé中")) | st.sampled_from(
    ["%20", "%C3%A9", "%2f", "%25"]
)
paths = st.lists(path_characters, max_size=40).map("".join)
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


# RFC 3986's URI (appendix A) for an http(s) URL with an authority, written out: the second
# parser, to hold each URL the gateway forwards against Python's urlsplit (what Nomic's
# fetcher, a WHATWG parser, reads is what RFC 3986 reads for a URL in its syntax).
_H16 = r"[0-9A-Fa-f]{1,4}"
_DEC_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_IPV4 = rf"{_DEC_OCTET}(?:\.{_DEC_OCTET}){{3}}"
_LS32 = rf"(?:{_H16}:{_H16}|{_IPV4})"
_IPV6 = "|".join([
    rf"(?:{_H16}:){{6}}{_LS32}",
    rf"::(?:{_H16}:){{5}}{_LS32}",
    rf"(?:{_H16})?::(?:{_H16}:){{4}}{_LS32}",
    rf"(?:(?:{_H16}:){{0,1}}{_H16})?::(?:{_H16}:){{3}}{_LS32}",
    rf"(?:(?:{_H16}:){{0,2}}{_H16})?::(?:{_H16}:){{2}}{_LS32}",
    rf"(?:(?:{_H16}:){{0,3}}{_H16})?::{_H16}:{_LS32}",
    rf"(?:(?:{_H16}:){{0,4}}{_H16})?::{_LS32}",
    rf"(?:(?:{_H16}:){{0,5}}{_H16})?::{_H16}",
    rf"(?:(?:{_H16}:){{0,6}}{_H16})?::",
])  # fmt: skip
_UNRESERVED = r"A-Za-z0-9\-._~"
_SUB_DELIMS = r"!$&'()*+,;="
_PCT = r"%[0-9A-Fa-f]{2}"
_PCHAR = rf"(?:[{_UNRESERVED}{_SUB_DELIMS}:@]|{_PCT})"
_IP_FUTURE = rf"v[0-9A-Fa-f]+\.[{_UNRESERVED}{_SUB_DELIMS}:]+"
RFC3986_HTTP_URL = re.compile(
    rf"(?P<scheme>[A-Za-z][A-Za-z0-9+\-.]*)://"
    rf"(?:(?P<userinfo>(?:[{_UNRESERVED}{_SUB_DELIMS}:]|{_PCT})*)@)?"
    rf"(?P<host>\[(?:{_IPV6}|{_IP_FUTURE})\]|{_IPV4}|(?:[{_UNRESERVED}{_SUB_DELIMS}]|{_PCT})*)"
    rf"(?::(?P<port>[0-9]*))?"
    rf"(?P<path>(?:/{_PCHAR}*)*)"
    rf"(?:\?(?P<query>(?:{_PCHAR}|[/?])*))?"
    rf"(?:#(?P<fragment>(?:{_PCHAR}|[/?])*))?"
)


def rfc3986_host(url: str) -> str | None:
    """The host RFC 3986 reads in ``url`` (an IRI mapped to its URI first, RFC 3987 3.1:
    its non-ASCII characters percent-encoded), or None if it is not a URI."""
    uri = "".join(char if char.isascii() else quote(char) for char in url)
    match = RFC3986_HTTP_URL.fullmatch(uri)
    return None if match is None else match["host"].lower().strip("[]")


# Pieces of URLs, well and badly formed, that parsers are known to read differently.
host_pieces = st.sampled_from([
    "example.com", "a", "EXAMPLE", "1.2.3.4", "0x7f", "xn--bcher-kva", "[::1]",
    "[2001:db8::1]", ".", "-", "_", ":80", ":1",
])  # fmt: skip
bad_host_pieces = st.sampled_from([
    "bücher", "[v1.x]", "\u3002", "\uff0e", "\uff61", "\uff03", "::1", "[", "]", "%", "%4",
    "%41", "%2e", "%zz", "@", "u:p@", ":", ":0", ":65536", ":+1", "\\", "é", "<", "{", "|", "^",
    "`", '"',
])  # fmt: skip
rest_pieces = st.sampled_from([
    "/", "a", "/a.png", "?", "#", "&", "=", ";", "'", "!", "*", "+", ",", "~", "@", ":", "%41",
    "é", "\u3002",
])  # fmt: skip
bad_rest_pieces = st.sampled_from(["%", "%zz", "[", "]", "\\", "<", ">", "{", "|", "^", "`", '"'])
url_like = st.builds(
    lambda scheme, host, more, rest: f"{scheme}://{host}{''.join(more)}{''.join(rest)}",
    st.sampled_from(["http", "https", "HTTP"]),
    host_pieces | bad_host_pieces,
    st.lists(host_pieces | bad_host_pieces, max_size=3),
    st.lists(rest_pieces | bad_rest_pieces, max_size=6),
)


@settings(max_examples=300)
@given(valid_urls | url_like)
def test_a_forwarded_url_has_one_host_for_urlsplit_and_for_rfc_3986(url: str) -> None:
    if url_problem(url) is not None:
        return
    assert rfc3986_host(url) == urlsplit(url).hostname


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("http://example.com/a.png", "example.com"),
        ("HTTP://Example.COM:8080/a?b#c", "example.com"),
        ("http://[2001:DB8::1]:443/", "2001:db8::1"),
        ("http://example.com\\@evil.com/a.png", None),  # urlsplit: evil.com
        ("http://[::1]x/a.png", None),  # urlsplit: ::1
        ("http://u@p@example.com/a.png", None),  # urlsplit: example.com
        ("http://example\u3002com/b.png", "example%e3%80%82com"),  # urlsplit: example。com
    ],
)
def test_the_rfc_3986_reading_of_the_tests_own(url: str, host: str | None) -> None:
    assert rfc3986_host(url) == host
