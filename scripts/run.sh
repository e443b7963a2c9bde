#!/usr/bin/env bash
# Install the gateway into .venv and serve it on the embedded store.
# Needs NOMIC_API_KEY; every other setting has a default (see README.md, "Configuration").
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_lib.sh
ensure_venv
# Installed once (editable: the code in this clone is what runs), again when pyproject.toml changes.
stamp=.venv/.nomic-gateway-installed
if [ ! -x .venv/bin/nomic-gateway ] || [ ! -e "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q -e .
  touch "$stamp"
fi
exec .venv/bin/nomic-gateway serve "$@"
