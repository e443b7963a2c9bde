"""The deployment check: the image built from deploy/Dockerfile, run as Docker, Kubernetes and
Compose run it, against the fake Nomic, on this machine (the stages: deploy_checks/).

scripts/test.sh runs it beside pytest. Alone, as root, from the project's virtualenv (the test
extras: the fake Nomic's Pillow, PyYAML, packaging):

    .venv/bin/python scripts/deploy_check.py

It installs what it lacks from Debian's archive (docker.io, docker-compose, debootstrap) and
starts dockerd when no engine answers (stopped again at the end; DEPLOY_CHECK_KEEP_ENGINE=1
keeps it). Base images are pulled where they can be; where they cannot, a stand-in is built
from Debian's archive (debootstrap bookworm, python3) and kept, tagged as the image it stands
for, so that later runs reuse it. One line per step, "ok" or "FAIL"; everything it starts
(containers, networks, the Compose project and its volumes, the fakes) is removed at the end,
also on failure. Exit status 1 if a check failed; 0 if all passed, or if no container engine
can run on this machine at all (one line says so).

    .venv/bin/python scripts/deploy_check.py leftovers

lists what a test run left running (scripts/test.sh calls it last): processes that carry the
run's NG_TEST_RUN marker in their environment (or match the suite's programs and were orphaned
during the run), the check's containers, and multiprocess-metrics folders nobody uses.
"""

import sys
from pathlib import Path

# The checkout's deploy_checks and fake_nomic, whether or not this virtualenv installed them
# (scripts/, which holds this file and locks.py, is on the path already).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deploy_checks.leftovers import leftovers
from deploy_checks.main import main

if __name__ == "__main__":
    sys.exit(leftovers() if sys.argv[1:] == ["leftovers"] else main())
