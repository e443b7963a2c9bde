"""``serve --workers N``: N gateway processes sharing one port, supervised by this one.

Each worker binds the port with SO_REUSEPORT, so the kernel spreads connections over them.
Their Prometheus metrics are kept in files under one directory (prometheus-client's
multiprocess mode) and every worker's /metrics answers for all of them. A worker that dies
is started again; SIGTERM or SIGINT reaches every worker, which finishes its requests and
writes its usage before it exits.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from types import FrameType

log = logging.getLogger("gateway")
RESTART_PAUSE_SECONDS = 1.0


class NoMetricsDir(Exception):
    """No writable place for the workers' metrics files; the message says what to set."""


def supervise(count: int, run_worker: Callable[[], None], metrics_parent: str | None) -> int:
    """Run ``count`` workers until SIGTERM or SIGINT; their metrics files go in a new folder
    in ``metrics_parent`` (None: the system's temporary directory)."""
    try:
        metrics_dir = tempfile.mkdtemp(prefix="nomic-gateway-metrics-", dir=metrics_parent)
    except OSError as exc:  # a read-only root filesystem without a writable /tmp, say
        raise NoMetricsDir(
            f"--workers needs a writable directory for its metrics files ({exc.strerror or exc}"
            "): set GATEWAY_METRICS_DIR to one (in Kubernetes, an emptyDir volume)"
        ) from None
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # before any worker imports metrics
    context = multiprocessing.get_context("spawn")
    workers: list[BaseProcess] = [_start(context, run_worker) for _ in range(count)]
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for worker in workers:
            if worker.pid is not None and worker.is_alive():
                os.kill(worker.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        while not stopping:
            time.sleep(0.2)
            for index, worker in enumerate(workers):
                if not worker.is_alive() and not stopping:
                    log.warning(
                        "worker %s exited (%s); starting another", worker.pid, worker.exitcode
                    )
                    _mark_dead(worker.pid)
                    time.sleep(RESTART_PAUSE_SECONDS)
                    workers[index] = _start(context, run_worker)
        for worker in workers:
            worker.join()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def _start(
    context: multiprocessing.context.SpawnContext, run_worker: Callable[[], None]
) -> BaseProcess:
    worker = context.Process(target=run_worker, daemon=False)
    worker.start()
    return worker


def _mark_dead(pid: int | None) -> None:
    if pid is not None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
