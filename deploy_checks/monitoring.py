"""Prometheus and Alertmanager of the Compose stack, through their HTTP APIs: the gateway's
target up with its metrics token, every rule of deploy/prometheus/rules.yml loaded and
healthy, and Alertmanager found, with the receiver its configuration names."""

from __future__ import annotations

import yaml

from deploy_checks.gateway_http import get_json, http
from deploy_checks.running import ROOT, Failed, wait_until

JOB = "nomic-gateway"  # the gateway's scrape job in deploy/prometheus/prometheus.yml
RECEIVER = "operators"  # deploy/alertmanager/alertmanager.yml's


def scraped(gateway: str, prometheus: str) -> None:
    """Until the gateway's target is up (its /metrics refuses anyone without the token)."""
    status, _, _ = http("GET", f"{gateway}/metrics")
    if status != 401:
        raise Failed(f"/metrics answers {status} without the token: nothing proven")

    def target_up() -> bool:
        targets = get_json(f"{prometheus}/api/v1/targets")["data"]["activeTargets"]
        [target] = [t for t in targets if t["labels"]["job"] == JOB]
        if target["health"] == "down":
            raise Failed(f"target down: {target['lastError']}")
        return bool(target["health"] == "up")

    wait_until("the gateway's target up", target_up, 90, 1)


def rules_loaded(prometheus: str) -> None:
    """Until Prometheus has every alert and recording rule of rules.yml, none failing."""
    groups = yaml.safe_load((ROOT / "deploy/prometheus/rules.yml").read_text())["groups"]
    expected = {r.get("alert") or r.get("record") for g in groups for r in g["rules"]}

    def all_loaded() -> bool:
        loaded = get_json(f"{prometheus}/api/v1/rules")["data"]["groups"]
        names = {rule["name"] for group in loaded for rule in group["rules"]}
        broken = [r["name"] for g in loaded for r in g["rules"] if r.get("health") == "err"]
        if broken:
            raise Failed(f"rules failing: {broken}")
        return names == expected

    wait_until(f"{len(expected)} rules", all_loaded, 30, 1)


def alerts_reach_alertmanager(prometheus: str, alertmanager: str) -> None:
    def alertmanager_found() -> bool:
        data = get_json(f"{prometheus}/api/v1/alertmanagers")["data"]
        return bool(data["activeAlertmanagers"])

    wait_until("an active Alertmanager", alertmanager_found, 60, 1)
    status = wait_until(
        "Alertmanager's status", lambda: get_json(f"{alertmanager}/api/v2/status"), 30
    )
    if RECEIVER not in status["config"]["original"]:
        raise Failed(f"Alertmanager's configuration has no {RECEIVER!r} receiver")
