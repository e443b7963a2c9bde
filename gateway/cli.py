"""The command line: ``nomic-gateway serve``, and ``teams``, ``keys``, ``usage``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from aiohttp import web

from gateway import admin_cli, logs, teams_file
from gateway.app import create_app
from gateway.config import Settings, SettingsError, add_arguments


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nomic-gateway", description="A caching gateway in front of Nomic's embedding API."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the gateway")
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
    except (SettingsError, teams_file.TeamsFileError) as exc:
        print(f"nomic-gateway: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_format)
    logging.getLogger("gateway").info(
        "nomic-gateway listening on http://%s:%d, upstream %s",
        settings.host,
        settings.port,
        settings.upstream_url,
    )
    web.run_app(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        shutdown_timeout=settings.shutdown_timeout_seconds,
        print=None,
        access_log=None,
    )
    logging.getLogger("gateway").info("nomic-gateway stopped")
    return 0
