#!/usr/bin/env bash
# The benchmark (issue 7): installs what it needs (the test extras, redis-server, wrk, taskset,
# nginx) and prints one table of the gateway beside its naive and ceiling baselines and nginx as
# a caching proxy. It starts every server itself on loopback, stops them at the end and gives
# up after --budget seconds (720).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_lib.sh
case " $* " in
  *" -h "*|*" --help "*) [ -x .venv/bin/python ] && exec .venv/bin/python -m tests.bench --help
    exec python3 -m tests.bench --help ;;  # the options, before anything is installed
esac
install_for_tests
exec .venv/bin/python -m tests.bench "$@"
