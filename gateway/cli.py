"""The command line: ``nomic-gateway serve``, and ``teams``, ``keys``, ``usage``."""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway import admin_cli, connections, logs, server, teams_file, workers
from gateway.config import Settings, SettingsError, add_arguments
from gateway.store import data_dir
from gateway.store.data_dir import DataDirError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nomic-gateway", description="A caching gateway in front of Nomic's embedding API."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="run the gateway",
        description="Run the gateway. Every setting is a flag or a GATEWAY_* variable (the "
        "default follows the variable's name). Secrets come from the environment only: "
        "NOMIC_API_KEY (required: the organisation's Nomic key), GATEWAY_ADMIN_TOKEN (turns "
        "the admin API on) and GATEWAY_METRICS_TOKEN (guards /metrics).",
    )
    add_arguments(serve)
    admin_cli.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return serve(vars(args))
    return admin_cli.run(args)


def serve(flags: dict[str, str | None]) -> int:
    try:
        settings = Settings.from_sources(flags, os.environ)
        if settings.teams_file is not None:
            teams_file.load(settings.teams_file)  # refused here in one line, not at start-up
        if settings.workers > 1 and settings.redis_url is None:
            raise SettingsError(
                "GATEWAY_WORKERS > 1 needs GATEWAY_REDIS_URL: the embedded store is one "
                "process's own"
            )
        if settings.redis_url is None and settings.data_dir is not None:
            data_dir.check(Path(settings.data_dir))
        server.check_bindable(settings.host, settings.port, reuse_port=settings.workers > 1)
    except (SettingsError, teams_file.TeamsFileError, server.CannotListen, DataDirError) as exc:
        print(f"nomic-gateway: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_format)
    logging.captureWarnings(True)  # a library's warning is a log line too, not loose stderr
    log = logging.getLogger("gateway")
    descriptors = connections.budget(settings, connections.raise_descriptor_limit())
    log.info("connections: %s", descriptors.describe())
    if descriptors.overcommitted:
        log.warning(
            "GATEWAY_MAX_CONNECTIONS=%d leaves fewer than %d descriptors for Redis, Nomic and "
            "files: at the bound, calls to them may fail",
            descriptors.bound, descriptors.reserve,
        )  # fmt: skip
    if settings.workers > 1:
        log.info(
            "nomic-gateway starting %d workers on port %d, upstream %s",
            settings.workers, settings.port, settings.upstream_url,
        )  # fmt: skip
        try:
            code = workers.supervise(
                settings.workers, functools.partial(run_worker, settings), settings.metrics_dir
            )
        except workers.NoMetricsDir as exc:
            print(f"nomic-gateway: {exc}", file=sys.stderr)
            return 2
    else:
        try:
            run_worker(settings)
        except DataDirError as exc:  # taken by another process since the check
            print(f"nomic-gateway: {exc}", file=sys.stderr)
            return 2
        code = 0
    log.info("nomic-gateway stopped")
    return code


def run_worker(settings: Settings) -> None:
    """One gateway process: serve until SIGTERM or SIGINT, then finish in-flight requests."""
    logs.configure(settings.log_level, settings.log_format)
    logging.captureWarnings(True)  # a library's warning is a log line too, not loose stderr
    # Computed again: a spawned worker is given only the settings (raising is idempotent).
    descriptors = connections.budget(settings, connections.raise_descriptor_limit())
    server.run(settings, descriptors.bound, functools.partial(_listening, settings))
    logs.flush_suppressed()


def _listening(settings: Settings) -> None:
    log = logging.getLogger("gateway")
    if settings.workers == 1:
        log.info(
            "nomic-gateway listening on http://%s:%d with 1 worker(s), upstream %s",
            settings.host, settings.port, settings.upstream_url,
        )  # fmt: skip
    else:
        log.info(
            "nomic-gateway worker %d listening on http://%s:%d",
            os.getpid(), settings.host, settings.port,
        )  # fmt: skip
