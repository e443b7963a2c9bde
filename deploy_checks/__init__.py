"""The deployment check: the image built from deploy/Dockerfile, run as Docker, Kubernetes and
Compose run it, against the fake Nomic, on this machine. ``scripts/deploy_check.py`` runs it
(its docstring says how); a module per stage, in the order they run:

- engine.py      the container engine: Debian's packages, dockerd started if none answers
- bases.py       the images needed besides the gateway's, pulled or else stood in for by
                 stand_ins.py (Debian bookworm from debootstrap, set up by debian.py)
- image.py       the gateway's image built, and what it holds: context, user, releases, layers
- docker_run.py  ``docker run``: healthy, not root, MISS then HIT, /metrics, docker stop
- kubernetes.py  as deploy/k8s runs it, two workers on a Redis: probes, MISS then HIT
- compose.py     the Compose stack up and down; monitoring.py, its Prometheus and Alertmanager
- cleanup.py     everything a run started removed, and what an interrupted run left
- leftovers.py   what a test run left running (``scripts/deploy_check.py leftovers``)

Under them: state.py (one run: names, secrets, steps, what it started), running.py (programs
and waiting), containers.py, fakes.py (the fake Nomic as processes) and gateway_http.py (the
gateway driven over HTTP). main.py runs the stages and the clean-up.
"""
