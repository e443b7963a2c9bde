#!/usr/bin/env bash
# The fake Nomic, for trying the gateway without a Nomic account: the test suite's test double
# (deterministic vectors, not real embeddings). Installs the test lock into .venv (it decodes
# images with Pillow), then listens on 127.0.0.1:9999 (--port N, --host H) and says
# "fake Nomic listening on http://HOST:PORT" when ready. Its key is
# nk-fake-organisation-key-0123456789.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_lib.sh
ensure_test_venv
exec .venv/bin/python -m fake_nomic "$@"
