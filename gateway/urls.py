"""Which URLs the gateway forwards for Nomic to fetch: syntactically valid http(s) URLs. Pure.

A URL Nomic cannot fetch still costs a call and may be billed, and one that two parsers read
differently is not one URL, so the gateway refuses, before anything is looked up or reserved,
every URL that is not, in RFC 3986's syntax: an ``http`` or ``https`` scheme; a host that is
an ASCII DNS name (letters, digits, hyphens and underscores, in labels of 1 to 63 characters,
253 in all; an international name in its IDNA form, ``xn--...``), a dotted-quad IPv4 address,
or a bracketed IPv6 address; a port from 1 to 65535 if one is given, and nothing else after
the host; no user or password (``user@``: Nomic fetches public images, and a credential would
go to Nomic); ``%`` only as the start of an escape of two hex digits; none of the characters
RFC 3986 excludes (``<>"{}|^`` ``\\`` and a backquote), ``[`` or ``]`` only around an IPv6
address, ``#`` only once; no whitespace, control or invisible formatting character anywhere;
at most :data:`MAX_URL_LENGTH` characters. Non-ASCII characters are taken in the path, query
and fragment (an IRI's, which a fetcher percent-encodes) but never in the host: its IDNA form
would make a second spelling of one URL, so the client sends that form itself.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import SplitResult, urlsplit

MAX_URL_LENGTH = 2048
MAX_HOST_LENGTH = 253
_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")
_NUMERIC = re.compile(r"[0-9]+|0x[0-9a-f]*")  # a label that makes a host an IPv4 address
_EXCLUDED = frozenset('<>"{}|^`\\')  # a WHATWG parser (a browser's, a fetcher's) reads \ as /
_BROKEN_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_AUTHORITY = re.compile(r"(?P<host>\[[^\]]*\]|[^\[\]:]*)(?::(?P<port>[0-9]{1,5}))?")


def url_problem(value: str) -> str | None:
    """Why ``value`` is not a URL the gateway forwards; None if it is one."""
    if len(value) > MAX_URL_LENGTH:
        return f"URL longer than {MAX_URL_LENGTH} characters"
    if not value.isprintable() or " " in value:
        return "not a valid http(s) URL: it holds whitespace or a control character"
    if excluded := sorted(_EXCLUDED.intersection(value)):
        return f"not a valid http(s) URL: {excluded[0]!r} is not a URL character (escape it)"
    if _BROKEN_ESCAPE.search(value):
        return "not a valid http(s) URL: a '%' not followed by two hex digits"
    try:
        parts = urlsplit(value)
    except ValueError:
        return "not a valid http(s) URL: malformed host or port"
    if parts.scheme not in ("http", "https"):
        return "not an http(s) URL"
    return _authority_problem(parts.netloc) or _after_authority_problem(parts)


def _authority_problem(netloc: str) -> str | None:
    if "@" in netloc:
        return "not a valid http(s) URL: a user or password (user@) is never forwarded"
    authority = _AUTHORITY.fullmatch(netloc)
    if authority is None:
        return "not a valid http(s) URL: malformed host or port"
    port = authority["port"]
    if port is not None and int(port) > 65535:
        return "not a valid http(s) URL: malformed host or port"
    if port is not None and int(port) == 0:
        return "not a valid http(s) URL: port 0"
    return _host_problem(authority["host"])


def _host_problem(host: str) -> str | None:
    if not host:
        return "not a valid http(s) URL: no host"
    if host.startswith("["):
        return None if _is_ipv6(host[1:-1]) else "not a valid http(s) URL: not an IPv6 address"
    if not host.isascii():
        return _not_ascii(host)
    host = host.lower()
    if _is_ipv4(host):
        return None
    name = host.removesuffix(".")  # a fully qualified name's root
    labels = name.split(".")
    if _NUMERIC.fullmatch(labels[-1]):
        return "not a valid http(s) URL: not a valid IPv4 address"
    if len(name) > MAX_HOST_LENGTH or not all(map(_LABEL.fullmatch, labels)):
        return "not a valid http(s) URL: not a valid host name"
    return None


def _not_ascii(host: str) -> str:
    try:
        idna = host.encode("idna").decode("ascii")
    except UnicodeError:
        return "not a valid http(s) URL: not a valid host name"
    return f"not a valid http(s) URL: the host is not ASCII; send its IDNA form, {idna}"


def _after_authority_problem(parts: SplitResult) -> str | None:
    rest = parts.path + parts.query + parts.fragment
    if "[" in rest or "]" in rest:
        return "not a valid http(s) URL: '[' or ']' after the host (escape it)"
    if "#" in parts.fragment:
        return "not a valid http(s) URL: a second '#' (escape it)"
    return None


def _is_ipv4(host: str) -> bool:
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True


def _is_ipv6(host: str) -> bool:
    if "%" in host:  # a zone (fe80::1%eth0) names an interface of the sender's, not a host
        return False
    try:
        ipaddress.IPv6Address(host)
    except ValueError:  # also an IPvFuture literal (v1.x)
        return False
    return True
