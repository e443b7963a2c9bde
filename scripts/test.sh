#!/usr/bin/env bash
# Install everything the tests need (the test lock, redis-server, Prometheus, wrk and nginx too,
# if missing), run every quality gate: ruff, mypy --strict on gateway/ and on the deployment
# check, and the whole pytest suite with warnings as errors (in two phases, the slowest tests
# printed after each); beside the first, the deployment check (scripts/deploy_check.py: the
# image built and run under a real container engine, as Kubernetes runs it, and the Compose
# stack; SKIP_DEPLOY_CHECK=1 leaves it out); and last, that nothing the suite or the check
# started is still running.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_lib.sh
install_for_tests  # wrk: one short run of the benchmark; nginx: its caching-proxy row
command -v promtool >/dev/null || apt_install prometheus  # promtool checks the alert rules
# The suite starts its own redis-server on free ports; a system service is not needed.
# Every process started from here on inherits this marker: one that still carries it at the
# end was left behind (scripts/deploy_check.py leftovers).
export NG_TEST_RUN="$$-$(date +%s)"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy --strict gateway deploy_checks scripts/deploy_check.py
status=0
# Most of the suite waits (on servers, clients, timers), so it runs on several workers, each
# with its own redis-server and Redis Cluster. The tests marked serial measure a process's
# memory or recovery time under load and run alone afterwards. Exit 5 is "no test selected":
# arguments may pick tests of one phase only, but not of neither.
empty=0
pytest_phase() {
  local code=0
  .venv/bin/python -m pytest -W error "$@" || code=$?
  if [ "$code" = 5 ]; then empty=$((empty + 1)); code=0; fi
  [ "$code" = 0 ] || status=$((status ? status : code))
}
# The deployment check mostly waits on the container engine: it runs beside the parallel
# phase (its lines printed once it is done), and is over before the serial phase starts.
deploy_pid=""
if [ "${SKIP_DEPLOY_CHECK:-0}" != 1 ]; then
  deploy_log=$(mktemp)
  .venv/bin/python scripts/deploy_check.py > "$deploy_log" 2>&1 &
  deploy_pid=$!
fi
pytest_phase -n "${TEST_WORKERS:-4}" -m "not serial" --durations=20 "$@"
if [ -n "$deploy_pid" ]; then
  deploy_status=0
  wait "$deploy_pid" || deploy_status=$?
  cat "$deploy_log"
  rm -f "$deploy_log"
  [ "$deploy_status" = 0 ] || status=$((status ? status : 1))
fi
pytest_phase -m serial --durations=8 "$@"
[ "$empty" -lt 2 ] || status=$((status ? status : 5))
.venv/bin/python scripts/deploy_check.py leftovers || status=$((status ? status : 1))
exit "$status"
