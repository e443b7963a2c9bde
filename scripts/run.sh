#!/usr/bin/env bash
# Install the gateway into .venv and serve it on the embedded store.
# Needs NOMIC_API_KEY; every other setting has a default (see README.md, "Configuration").
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_lib.sh
ensure_venv
.venv/bin/python -m pip install -q .
exec .venv/bin/nomic-gateway serve "$@"
