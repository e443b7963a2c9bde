"""The benchmark: the gateway side by side with its baselines, in one run, one table.

``./scripts/bench.sh`` (installs Debian's ``wrk`` if missing), or
``.venv/bin/python -m tests.bench [--seconds 3] [--rounds 4] [--only abcdef]``

It starts everything on loopback by itself: a redis-server and the fake Nomic (a fixed
latency per call) on CPU 1, each server under test on CPU 0, and wrk on CPU 1. Scenarios:

a. 1-image hits, the same image;      b. 8-image hits, the same 8 images;
c. misses: every image new (the fake's latency dominates: the gateway's added latency),
   from 1 client and from 8;
d. a company-like mix: 64 clients, 1-image requests over a Zipf-distributed set of images,
   all in Redis (fetched earlier by another gateway process), none yet in the measured
   gateway's process;                 e. (a) with ``--workers 2`` on both cores;
f. texts (``POST /v1/embedding/text``, the official client's body): 10-text hits, the same 10
   texts, and the same texts in OpenAI's shape (``POST /v1/embeddings``, float and base64)
   answered from the same entries; and misses, every request 10 new texts, from 1 client and
   from 8.

The gateway runs with every feature on: team key auth, a team with per-minute limits and
token budgets (so every request is an atomic quota decision in Redis), usage accounting,
metrics (scraped every second in d) and one JSON log line per request. Beside it, against
the same Redis: the *naive* baseline (``naive.py``: aiohttp's multipart reader or orjson for
texts, one MGET, misses passed on whole) and, for images, the *ceiling* (``ceiling.py``: the
least work a hit, or in c a miss, can take on aiohttp); in a and c, *nginx* (``nginx.py``:
Debian's nginx as a proxy_cache keyed on the body, in front of the fake, the proxy a user
would otherwise reach for; warmed in a, so that it answers hits). The servers of a scenario
run side by side; each is warmed up, then they are loaded in turns (``--rounds`` runs of
``--seconds`` each), so a slow spell of a shared machine falls on all of them.
Requests/s is over all of a server's runs, p50 and p99 the medians of its runs, CPU the
server's (all its processes) per request. Every process started is stopped at the end;
the whole run is bounded (``--budget``).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
from types import FrameType

from tests.bench import nginx  # the standard library only, as everything this module imports

SCENARIOS = "abcdef"
PACKAGES = ("tests", "gateway")  # ours: what they lack is a bug, not a missing install


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=3, help="each measured run")
    parser.add_argument("--rounds", type=int, default=4, help="measured runs of each server")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections for hits")
    parser.add_argument("--only", default=SCENARIOS, help="scenarios to run, e.g. 'ab'")
    parser.add_argument("--budget", type=int, default=720, help="seconds before it gives up")
    return parser.parse_args(argv)


def missing_install(exc: ModuleNotFoundError) -> str | None:
    """What to do when this Python lacks a module the benchmark needs; None when the module
    is one of ours (a bug, not a missing install)."""
    if exc.name is None or exc.name.partition(".")[0] in PACKAGES:
        return None
    return (f"bench: {sys.executable} has no module {exc.name!r}: the benchmark needs the "
            f"project's test extras. Run ./scripts/test.sh once (it installs them into .venv), "
            f"then .venv/bin/python -m tests.bench; ./scripts/bench.sh does both")  # fmt: skip


def _timeout(_signum: int, _frame: FrameType | None) -> None:
    raise TimeoutError("the benchmark ran past its --budget; stopping everything it started")


def main() -> None:
    args = parse_args()  # before the imports below: --help and a wrong option need none
    try:
        from tests.bench import scenarios
    except ModuleNotFoundError as exc:
        message = missing_install(exc)
        if message is None:
            raise
        sys.exit(message)
    for tool in ("wrk", "taskset", "redis-server"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is needed (Debian: apt-get install wrk util-linux redis-server)")
    if set(args.only) & set("ac") and nginx.binary() is None:
        sys.exit("nginx is needed for scenarios a and c (Debian: apt-get install nginx)")
    signal.signal(signal.SIGALRM, _timeout)
    signal.alarm(args.budget)
    try:
        scenarios.run(args)
    except TimeoutError as exc:
        sys.exit(f"bench: {exc}")


if __name__ == "__main__":
    main()
