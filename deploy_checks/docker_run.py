"""The image run by ``docker run``, as its Dockerfile says: healthy on its port and on another,
not root, MISS then HIT, /metrics behind its token, and a graceful ``docker stop``."""

from __future__ import annotations

import threading
import time

from deploy_checks.containers import gateway_env, process_uids, published, start, wait_healthy
from deploy_checks.fakes import start_fake
from deploy_checks.gateway_http import bearer, embed, http, make_team_key, miss_then_hit
from deploy_checks.running import Failed, docker
from deploy_checks.state import IMAGE, Check
from fake_nomic import png

SLOW_FAKE_SECONDS = 4.0  # how long the fake takes to answer the request in flight at docker stop


def docker_run(check: Check, bridge: str) -> None:
    """The stage's steps, in order: each after the one before it held."""
    fast = start_fake(check, bridge)
    slow = start_fake(check, bridge, SLOW_FAKE_SECONDS)
    with check.step("start the image (port 8080) and one with GATEWAY_PORT=9000"):
        main = start(check, "gateway", "--publish", "127.0.0.1::8080",
                     *gateway_env(check, fast), IMAGE)  # fmt: skip
        on_9000 = start(check, "port-9000", "--publish", "127.0.0.1::9000",
                        "--env=GATEWAY_PORT=9000", *gateway_env(check, slow), IMAGE)  # fmt: skip
    with check.step("its HEALTHCHECK goes healthy, on 8080 and on GATEWAY_PORT=9000"):
        for container in (main, on_9000):
            wait_healthy(container, 60)
    with check.step("the gateway's processes run as uid 10001, not root"):
        uids = process_uids(main)
        if not uids or set(uids) != {"10001"}:
            raise Failed(f"processes run as {uids}")
    base = published(main, 8080)
    with check.step("MISS then HIT: a team and key from the admin API, the fake Nomic behind"):
        miss_then_hit(base, check.admin_token, check.next_seed())
    with check.step("/metrics answers its token only"):
        metrics_answer_their_token_only(base, check.metrics_token)
    with check.step("docker stop: exit 0, and the request in flight is answered 200"):
        stop_answers_the_request_in_flight(check, on_9000, published(on_9000, 9000))


def metrics_answer_their_token_only(base: str, token: str) -> None:
    status, _, _ = http("GET", f"{base}/metrics")
    with_token, _, text = http("GET", f"{base}/metrics", headers=bearer(token))
    if status != 401 or with_token != 200 or b"gateway_items_total" not in text:
        raise Failed(f"without the token {status}, with it {with_token}")


def stop_answers_the_request_in_flight(check: Check, container: str, base: str) -> None:
    """A request sent to the (slow) fake through ``container``, then ``docker stop``."""
    key = make_team_key(base, check.admin_token, f"stop-{check.seed}")
    answers: list[tuple[int, str, str]] = []
    image = png(check.next_seed())
    request = threading.Thread(target=lambda: answers.append(embed(base, key, [image])))
    request.start()
    time.sleep(1.5)  # the request is with the slow fake by now
    docker("stop", "--time", "25", container, timeout=60)
    request.join(30)
    code = docker("inspect", "-f", "{{.State.ExitCode}}", container)
    if not answers or answers[0][0] != 200 or code != "0":
        raise Failed(f"exit code {code}, the request in flight got {answers or 'nothing'}")
