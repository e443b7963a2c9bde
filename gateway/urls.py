"""Which URLs the gateway forwards for Nomic to fetch: syntactically valid http(s) URLs. Pure.

A URL Nomic cannot fetch still costs a call and may be billed, and one with a space or a
control byte in it is not a URL at all, so the gateway refuses, before anything is looked up
or reserved, every URL that is not: an ``http`` or ``https`` scheme; a host that is a DNS
name (letters, digits, hyphens and underscores, in labels of 1 to 63 characters, 253 in all;
a Unicode name as its IDNA form), a dotted-quad IPv4 address, or a bracketed IPv6 address; a
port from 1 to 65535 if one is given; no whitespace, control or invisible formatting
character anywhere; at most :data:`MAX_URL_LENGTH` characters.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import SplitResult, urlsplit

MAX_URL_LENGTH = 2048
MAX_HOST_LENGTH = 253
_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")
_NUMERIC = re.compile(r"[0-9]+|0x[0-9a-f]*")  # a label that makes a host an IPv4 address


def url_problem(value: str) -> str | None:
    """Why ``value`` is not a URL the gateway forwards; None if it is one."""
    if len(value) > MAX_URL_LENGTH:
        return f"URL longer than {MAX_URL_LENGTH} characters"
    if not value.isprintable() or " " in value:
        return "not a valid http(s) URL: it holds whitespace or a control character"
    try:
        parts = urlsplit(value)
        port = parts.port  # raises ValueError on a malformed port or IPv6 literal
    except ValueError:
        return "not a valid http(s) URL: malformed host or port"
    if parts.scheme not in ("http", "https"):
        return "not an http(s) URL"
    if port == 0:
        return "not a valid http(s) URL: port 0"
    return _host_problem(parts)


def _host_problem(parts: SplitResult) -> str | None:
    host = parts.hostname
    if not host:
        return "not a valid http(s) URL: no host"
    if "[" in parts.netloc:
        return None if _is_ipv6(host) else "not a valid http(s) URL: not a bracketed IPv6 address"
    if _is_ipv4(host):
        return None
    name = host.removesuffix(".")  # a fully qualified name's root
    labels = name.split(".")
    if _NUMERIC.fullmatch(labels[-1]):
        return "not a valid http(s) URL: not a valid IPv4 address"
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            return "not a valid http(s) URL: not a valid international domain name"
        labels = name.split(".")
    if len(name) > MAX_HOST_LENGTH or not all(map(_LABEL.fullmatch, labels)):
        return "not a valid http(s) URL: not a valid host name"
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
