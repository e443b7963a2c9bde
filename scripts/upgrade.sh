#!/usr/bin/env bash
# Upgrade on purpose: the locks refreshed to the newest releases that pyproject.toml allows,
# then the whole test suite (scripts/test.sh, arguments passed on) against exactly those. Green:
# commit requirements/ with what changed. Red: the drift is found here, by whoever upgrades,
# not by the next newcomer; fix it or `git checkout requirements/` to stay on what was tested.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/lock.sh --upgrade
echo "what the upgrade changes (- tested before, + to be tested now):"
git --no-pager diff --unified=0 -- requirements/test.lock | grep -E '^[-+][A-Za-z0-9].*==' || echo "  nothing"
exec ./scripts/test.sh "$@"
