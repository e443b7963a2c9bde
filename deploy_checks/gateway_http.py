"""The gateway driven over HTTP, as a client and its operator would: the standard library's
urllib, never through a proxy (everything it talks to is on this machine)."""

from __future__ import annotations

import json
import secrets
import urllib.error
import urllib.request
from typing import Any

from deploy_checks.running import Failed
from fake_nomic import png

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http(
    method: str,
    url: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30,
) -> tuple[int, dict[str, str], bytes]:
    """The status, headers and body of the answer, whatever its status."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def get_json(url: str) -> Any:
    status, _, body = http("GET", url, timeout=10)
    if status != 200:
        raise Failed(f"GET {url}: {status}")
    return json.loads(body)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def image_form(images: list[bytes]) -> tuple[bytes, str]:
    """A multipart body of ``images`` parts, and its boundary."""
    boundary = secrets.token_hex(12)
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="i.png"\r\n'
        f"Content-Type: image/png\r\n\r\n".encode()
        + data
        + b"\r\n"
        for data in images
    ]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), boundary


def embed(base: str, key: str, images: list[bytes], timeout: float = 60) -> tuple[int, str, str]:
    """The status, X-Cache and the start of the body of an image embedding request."""
    body, boundary = image_form(images)
    headers = {**bearer(key), "Content-Type": f"multipart/form-data; boundary={boundary}"}
    status, answer, text = http("POST", f"{base}/v1/embedding/image", body, headers, timeout)
    return status, answer.get("X-Cache", ""), text[:200].decode(errors="replace")


def make_team_key(base: str, admin_token: str, team: str) -> str:
    """A new team and a key of it, through the admin API."""
    headers = {**bearer(admin_token), "Content-Type": "application/json"}
    body = json.dumps({"id": team, "name": "Deploy check"}).encode()
    status, _, text = http("POST", f"{base}/admin/teams", body, headers)
    if status != 201:
        raise Failed(f"POST /admin/teams: {status} {text[:200]!r}")
    status, _, text = http("POST", f"{base}/admin/teams/{team}/keys", b"", headers)
    if status != 201:
        raise Failed(f"POST /admin/teams/{team}/keys: {status} {text[:200]!r}")
    key: str = json.loads(text)["key"]
    return key


def miss_then_hit(base: str, admin_token: str, seed: int) -> None:
    """A team and its key through the admin API; one image twice: MISS, then HIT."""
    key = make_team_key(base, admin_token, f"check-{seed}")
    for expected in ("MISS", "HIT"):
        status, cache, text = embed(base, key, [png(seed)])
        if status != 200 or cache != expected:
            raise Failed(f"expected 200 {expected}, got {status} X-Cache={cache!r} {text!r}")
