#!/usr/bin/env bash
# Install everything the tests need (redis-server, Prometheus and wrk too, if missing), run every
# quality gate:
# ruff, mypy --strict on gateway/, and the whole pytest suite with warnings as errors.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_lib.sh
install_for_tests  # wrk: one short run of the benchmark
command -v promtool >/dev/null || apt_install prometheus  # promtool checks the alert rules
# The suite starts its own redis-server on free ports; a system service is not needed.
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy --strict gateway
.venv/bin/python -m pytest -W error "$@"
