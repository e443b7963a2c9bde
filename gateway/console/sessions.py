"""Console sessions: what the cookie holds, signed with the store's shared secret. Pure.

A session cookie is ``<payload>.<mac>``, both URL-safe base64: the payload is a JSON list
(:class:`Session`), the MAC an HMAC-SHA256 of it under the secret every replica reads from
the store, so any replica accepts a session any other made. The cookie names no secret: a
team's session names its team and key id (each page load checks in the ledger that the key
is still live), the operator's holds an HMAC of the admin token it was made with (checked
against the token the process has now, so changing the token ends every such session).
CSRF tokens are HMACs of the session's nonce (or, before signing in, of the sign-in form's
nonce cookie): a page from another site can neither read nor make one. The sign-in form's
nonce cookie is itself MACed with its expiry (:func:`new_sign_in`): a nonce the client
chose, or one older than the form's lifetime, is no nonce.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from typing import Literal, NamedTuple

import orjson

COOKIE = "ng_console"
SIGN_IN_COOKIE = "ng_console_sign_in"  # the sign-in form's nonce, for its CSRF token
Role = Literal["team", "operator"]
_SIGN_IN_VALUE = re.compile(r"([A-Za-z0-9_-]{1,64})\.([0-9]{1,12})\.([A-Za-z0-9_-]{43})")


class Session(NamedTuple):
    role: Role
    team: str  # the team's id ("" for the operator)
    key_id: str  # the key signed in with ("" for the operator)
    token_mac: str  # the operator's: admin_token_mac of the token signed in with
    nonce: str  # random: the session's CSRF token is made from it
    expires: float  # seconds since the epoch


def new_nonce() -> str:
    return secrets.token_urlsafe(18)


def _mac(secret: bytes, purpose: str, data: bytes) -> bytes:
    return hmac.new(secret, purpose.encode() + b"\0" + data, hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def seal(secret: bytes, session: Session) -> str:
    """The cookie value of ``session``."""
    payload = _b64(orjson.dumps(list(session)))
    return f"{payload}.{_b64(_mac(secret, 'session', payload.encode()))}"


def unseal(secret: bytes, value: str | None, now: float) -> Session | None:
    """The session a cookie value holds, if its MAC is right and it has not expired."""
    if not value or len(value) > 1024:
        return None
    payload, _, mac = value.partition(".")
    try:
        good = hmac.compare_digest(_unb64(mac), _mac(secret, "session", payload.encode()))
        fields = orjson.loads(_unb64(payload)) if good else None
        session = Session(*fields) if isinstance(fields, list) else None
    except (ValueError, TypeError, binascii.Error):
        return None
    if session is None or session.role not in ("team", "operator"):
        return None
    if not isinstance(session.expires, (int, float)) or session.expires <= now:
        return None
    return session


def new_sign_in(secret: bytes, now: float, lifetime: float) -> tuple[str, str]:
    """A new sign-in form's nonce, and its cookie's value: ``<nonce>.<expiry>.<mac>``."""
    nonce = new_nonce()
    nonce_expiry = f"{nonce}.{int(now + lifetime)}"
    return nonce, f"{nonce_expiry}.{_b64(_mac(secret, 'sign-in', nonce_expiry.encode()))}"


def sign_in_nonce(secret: bytes, value: str | None, now: float) -> str | None:
    """The nonce of a sign-in cookie this gateway (or a replica) made and that has not
    expired; None for anything else: absent, malformed, not ASCII, forged or old."""
    found = _SIGN_IN_VALUE.fullmatch(value or "")
    if found is None or int(found.group(2)) <= now:
        return None
    nonce_expiry = f"{found.group(1)}.{found.group(2)}"
    mac = _b64(_mac(secret, "sign-in", nonce_expiry.encode()))
    return found.group(1) if hmac.compare_digest(mac, found.group(3)) else None


def csrf_token(secret: bytes, nonce: str) -> str:
    """The token forms carry for the session (or sign-in form) whose nonce is ``nonce``."""
    return _b64(_mac(secret, "csrf", nonce.encode()))


def csrf_matches(secret: bytes, nonce: str | None, given: object) -> bool:
    if not nonce or not isinstance(given, str):
        return False
    return hmac.compare_digest(given.encode(), csrf_token(secret, nonce).encode())


def admin_token_mac(secret: bytes, token: str) -> str:
    """What an operator's session keeps of the admin token: an HMAC, never the token."""
    return _b64(_mac(secret, "admin-token", token.encode()))


def operator_still(secret: bytes, session: Session, token: str | None) -> bool:
    """Whether an operator's session was made with ``token``, the admin token now."""
    if token is None or session.role != "operator":
        return False
    return hmac.compare_digest(session.token_mac.encode(), admin_token_mac(secret, token).encode())
