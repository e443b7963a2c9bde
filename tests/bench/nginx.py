"""The nginx baseline: the caching proxy a user would otherwise reach for. Not shipped.

Debian's nginx in front of Nomic with ``proxy_cache`` on POST, keyed on the request body:
the same bytes get the stored answer, anything else goes upstream with the organisation's
key. No team keys (whoever reaches it spends the organisation's Nomic account), no limits,
no usage per team, no batching of misses; two bodies with the same images in another
multipart framing (another boundary, another file name) are two entries. It only marks
what a proxy with a body-keyed disk cache costs on this hardware.

Everything nginx writes stays in the directory given: its configuration, pid file, cache,
temporary files; it runs in the foreground (``daemon off``) so the process that starts it
stops it, and it needs no root.
"""

from __future__ import annotations

import os
import pwd
import shutil
from pathlib import Path

BODY_LIMIT = "64m"  # as the gateway's default body limit; see the note in config()
PROBE = "/_nginx/up"
# nginx writes the cache key into the head of each entry, read back whole on a hit, so the
# key (the body) must fit in proxy_buffer_size or the answer is not cached at all (nginx logs
# "proxy_buffer_size ... is not enough for cache key" and proxies every time). 1 MiB holds
# about 20 images of 49 KB; 64 MiB (every body accepted) cost a hit about 20 % more CPU here.
KEY_BUFFER, KEY_BUFFER_PIECES = "1m", "8 256k"  # busy buffers >= the key buffer < the pieces


def config(root: Path, port: int, upstream: str, api_key: str) -> str:
    """nginx.conf for a caching proxy on 127.0.0.1:``port`` in front of ``upstream``
    (``host:port``), its files under ``root``.

    ``$request_body`` is only set while the body is in memory; a body nginx spilled to a
    temporary file would be keyed as the empty body and collide with every other such body.
    The buffer is therefore as large as the largest body accepted, and larger ones are refused
    with 413 instead."""
    # As root, nginx's workers would become "nobody" and could not write under root/.
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};" if os.geteuid() == 0 else ""
    return f"""
{user}
worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 1024; }}
http {{
    access_log /dev/stdout;  # one line a request, as the gateway logs (both to /dev/null here)
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    proxy_cache_path {root}/cache levels=1:2 keys_zone=embeddings:16m max_size=4g inactive=1d
                     use_temp_path=off;
    upstream nomic {{
        server {upstream};
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size {BODY_LIMIT};
        client_body_buffer_size {BODY_LIMIT};
        client_body_in_single_buffer on;
        proxy_buffer_size {KEY_BUFFER};
        proxy_buffers {KEY_BUFFER_PIECES};
        proxy_busy_buffers_size {KEY_BUFFER};
        location = {PROBE} {{ return 204; }}
        location / {{
            proxy_pass http://nomic;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "Bearer {api_key}";
            proxy_cache embeddings;
            proxy_cache_methods POST;
            proxy_cache_key "$request_uri|$request_body";
            proxy_cache_valid 200 1d;
            add_header X-Cache-Status $upstream_cache_status always;
        }}
    }}
}}
"""


def binary() -> str | None:
    """Debian's nginx, found even where /usr/sbin is not on the PATH (a user who is not root)."""
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")


def command(root: Path, port: int, upstream: str, api_key: str) -> list[str]:
    """Write the configuration under ``root`` and return the command that serves it."""
    found = binary()
    if found is None:
        raise RuntimeError("nginx is needed (Debian: apt-get install nginx)")
    root.mkdir(parents=True, exist_ok=True)
    conf = root / "nginx.conf"
    conf.write_text(config(root, port, upstream, api_key))
    return [found, "-p", f"{root}/", "-c", str(conf), "-e", "stderr"]
