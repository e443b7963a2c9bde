#!/usr/bin/env bash
# Write the locks in requirements/ from pyproject.toml: every package the gateway, its tests
# and its tools install, pinned with hashes, for every Python from 3.11 on (uv's universal
# resolution). What the locks pin is what scripts/run.sh, scripts/test.sh and deploy/Dockerfile
# install, and so what was tested.
#
#   scripts/lock.sh             keep every pin that still satisfies pyproject.toml
#   scripts/lock.sh --upgrade   the newest releases of everything (scripts/upgrade.sh)
#
#   test.lock   the test extras and tools (setuptools, uv): a developer's .venv
#   run.lock    the gateway alone, at test.lock's versions: run.sh and the image
#   build.lock  the build backend, at test.lock's version
#   installer.lock  uv, at test.lock's version: what installs the others
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_lib.sh
install_locked requirements/test.lock
compile() {  # output, then uv's arguments
  local out=$1; shift
  .venv/bin/uv pip compile --quiet --universal --python-version 3.11 --generate-hashes \
    --custom-compile-command "scripts/lock.sh" --output-file "$out" "$@"
}
compile requirements/test.lock pyproject.toml --extra test requirements/tools.in "$@"
compile requirements/run.lock pyproject.toml --constraint requirements/test.lock
compile requirements/build.lock requirements/build.in --constraint requirements/test.lock
compile requirements/installer.lock requirements/installer.in --constraint requirements/test.lock
