#!/usr/bin/env bash
# Install the gateway into .venv (the locked releases) and serve it on the embedded store.
# Needs NOMIC_API_KEY; every other setting has a default (docs/configuration.md). With no
# GATEWAY_ADMIN_TOKEN set, the admin API takes a token made on the first run and kept in
# .admin-token, readable by its owner alone (the CLI reads GATEWAY_ADMIN_TOKEN).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_lib.sh
ensure_venv
if [ -z "${GATEWAY_ADMIN_TOKEN:-}" ]; then
  if [ ! -s .admin-token ]; then
    (umask 077 && .venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(32))' > .admin-token)
  fi
  GATEWAY_ADMIN_TOKEN=$(cat .admin-token)
  export GATEWAY_ADMIN_TOKEN
  echo "run.sh: the admin API is on; its token is in .admin-token (for the CLI: export GATEWAY_ADMIN_TOKEN=\$(cat .admin-token))" >&2
fi
exec .venv/bin/nomic-gateway serve "$@"
