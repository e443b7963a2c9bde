"""The parts of scripts/deploy_check.py that need no container engine."""

from __future__ import annotations

from tests.helpers import load_script

deploy_check = load_script("deploy_check")

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
    message = deploy_check.dockerd_failure(IPTABLES_DENIED)
    assert "Permission denied (you must be root)" in message
    assert "exit status 4" not in message
    assert "Starting up" not in message
    assert message.startswith("dockerd would not start (")
    assert message.endswith(f"; {deploy_check.DOCKERD_LOG})")


def test_the_last_two_lines_naming_an_error_are_quoted_in_their_order() -> None:
    log = (
        'level=warning msg="Running modprobe bridge br_netfilter failed: exit status 1"\n'
        'level=error msg="failed to mount overlay: operation not permitted"\n'
        "level=info msg=cleaning up\n"
        "failed to start daemon: error initializing graphdriver: driver not supported\n"
        "level=info msg=stopped\n"
    )
    said = deploy_check.dockerd_failure(log)
    assert "modprobe" not in said  # an earlier one
    assert said.index("operation not permitted") < said.index("driver not supported")
    assert "level=info" not in said


def test_without_a_line_naming_an_error_the_last_line_is_quoted() -> None:
    log = 'level=info msg="Starting up"\nlevel=info msg="Daemon shutdown complete"\n\n'
    said = deploy_check.dockerd_failure(log)
    assert "Daemon shutdown complete" in said
    assert "Starting up" not in said
    assert "(no output;" in deploy_check.dockerd_failure("")


def test_a_long_line_is_cut_to_its_end_where_the_cause_is() -> None:
    said = deploy_check.dockerd_failure("failed to start daemon: " + "x" * 500 + " not permitted")
    assert "not permitted" in said
    assert "failed to start daemon" not in said
