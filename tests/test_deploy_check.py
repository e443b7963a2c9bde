"""The parts of the deployment check (deploy_checks/) that need no container engine."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from deploy_checks.bases import base_images, build_stages, compose_images
from deploy_checks.engine import DOCKERD_LOG, dockerd_failure
from deploy_checks.kubernetes import manifests, pod_of

ROOT = Path(__file__).resolve().parent.parent

# How dockerd ended where iptables was not allowed: the cause is on the line before the last.
IPTABLES_DENIED = """\
time="2025-01-10T09:00:00.000000000Z" level=info msg="Starting up"
time="2025-01-10T09:00:00.100000000Z" level=info msg="Loading containers: start."
failed to start daemon: Error initializing network controller: error obtaining controller \
instance: failed to register "bridge" driver: failed to create NAT chain DOCKER: iptables failed: \
iptables --wait -t nat -N DOCKER: iptables v1.8.9 (nf_tables): Could not fetch rule set \
generation id: Permission denied (you must be root)
 (exit status 4)
"""


def test_a_failed_dockerd_is_quoted_by_the_line_that_says_why() -> None:
    message = dockerd_failure(IPTABLES_DENIED)
    assert "Permission denied (you must be root)" in message
    assert "exit status 4" not in message
    assert "Starting up" not in message
    assert message.startswith("dockerd would not start (")
    assert message.endswith(f"; {DOCKERD_LOG})")


def test_the_last_two_lines_naming_an_error_are_quoted_in_their_order() -> None:
    log = (
        'level=warning msg="Running modprobe bridge br_netfilter failed: exit status 1"\n'
        'level=error msg="failed to mount overlay: operation not permitted"\n'
        "level=info msg=cleaning up\n"
        "failed to start daemon: error initializing graphdriver: driver not supported\n"
        "level=info msg=stopped\n"
    )
    said = dockerd_failure(log)
    assert "modprobe" not in said  # an earlier one
    assert said.index("operation not permitted") < said.index("driver not supported")
    assert "level=info" not in said


def test_without_a_line_naming_an_error_the_last_line_is_quoted() -> None:
    log = 'level=info msg="Starting up"\nlevel=info msg="Daemon shutdown complete"\n\n'
    said = dockerd_failure(log)
    assert "Daemon shutdown complete" in said
    assert "Starting up" not in said
    assert "(no output;" in dockerd_failure("")


def test_a_long_line_is_cut_to_its_end_where_the_cause_is() -> None:
    said = dockerd_failure("failed to start daemon: " + "x" * 500 + " not permitted")
    assert "not permitted" in said
    assert "failed to start daemon" not in said


def test_the_pod_runs_as_its_manifest_says_read_only_unprivileged_and_as_its_user() -> None:
    pod = pod_of(manifests())
    assert pod.flags == [
        "--read-only",
        "--cap-drop=ALL",
        "--security-opt=no-new-privileges",
        "--user=10001:10001",
        "--tmpfs=/tmp:rw,nosuid,nodev,mode=1777",
    ]
    assert pod.user == "10001"
    assert pod.port == 8080
    assert pod.container["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_the_pod_without_a_security_context_gets_no_flags() -> None:
    bare = {
        "Deployment": {"spec": {"template": {"spec": {"containers": [{"name": "gateway"}]}}}},
        "ConfigMap": {"data": {"GATEWAY_PORT": "9000"}},
    }
    pod = pod_of(bare)
    assert (pod.flags, pod.user, pod.port) == ([], "10001", 9000)


def test_the_images_needed_are_the_dockerfiles_base_and_composes_services() -> None:
    assert build_stages() == ["build"]  # the stage built FROM the base, not pulled
    assert base_images() == ["python:3.11-slim"]
    assert set(compose_images()) == {"redis", "prometheus", "alertmanager", "grafana"}


def test_leftovers_needs_the_test_runs_marker() -> None:
    env = {"PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "scripts/deploy_check.py", "leftovers"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "NG_TEST_RUN is not set" in result.stderr
