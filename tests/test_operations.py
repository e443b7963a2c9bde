"""What operators run: metrics, logs, the dashboard, the alert rules, the manifests.

Every metric the dashboard and the rules use must exist in the gateway's own /metrics; the
rules must pass promtool; a real Prometheus scrapes a real gateway and answers a panel's
query with what the gateway did.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import math
import re
import shutil
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp.test_utils import TestClient

from fake_nomic import FakeNomic, png
from gateway import logs
from gateway.config import Settings
from tests.conftest import GatewayFactory, admin_get, free_port, team_headers
from tests.helpers import image_form, post_images

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
Client = TestClient[Any, Any]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(
        (DEPLOY / "grafana/dashboards/nomic-gateway.json").read_text()
    )
    return loaded


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((DEPLOY / "prometheus/rules.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def expressions() -> list[str]:
    panels = [t["expr"] for p in dashboard()["panels"] for t in p["targets"]]
    return panels + [rule["expr"] for rule in rules()]


def metric_families(text: str) -> set[str]:
    return set(re.findall(r"^# TYPE (\S+)", text, re.MULTILINE))


async def test_every_metric_the_dashboard_and_rules_use_exists(gateway: Client) -> None:
    await post_images(gateway, [png(1)])
    families = metric_families(await (await gateway.get("/metrics")).text())
    used = {name for expr in expressions() for name in re.findall(r"\bgateway_[a-z_]+", expr)}
    assert used  # the regexp found them
    for name in sorted(used):
        family = re.sub(r"_(bucket|sum|count|total)$", "", name)
        assert name in families or family in families, name


def test_alert_rules_and_scrape_config_pass_promtool() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: the README's test command installs it (prometheus)"
    # The scrape job's token file exists only where Prometheus runs: syntax only for the config.
    for check, path in (("rules", "rules.yml"), ("config --syntax-only", "prometheus.yml")):
        command = [promtool, "check", *check.split(), str(DEPLOY / "prometheus" / path)]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
    alerts = {rule.get("alert") for rule in rules()}
    assert {"NomicGatewayUpstreamErrors", "NomicGatewayBreakerOpen", "NomicGatewayStoreErrors",
            "NomicGatewayTeamNearDailyBudget", "NomicGatewayHitRatioFalling"} <= alerts  # fmt: skip


def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    """promtool parses each panel's query, as a recording rule of a file of its own."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: the README's test command installs it (prometheus)"
    queries = [t["expr"] for p in dashboard()["panels"] for t in p["targets"]]
    recorded = [{"record": f"dashboard:query_{i}", "expr": q} for i, q in enumerate(queries)]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": recorded}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def k8s() -> dict[str, dict[str, Any]]:
    documents = [
        yaml.safe_load(path.read_text()) for path in sorted((DEPLOY / "k8s").glob("*.yaml"))
    ]
    return {doc["kind"]: doc for doc in documents}


def test_kubernetes_manifests_agree_with_each_other_and_the_gateway() -> None:
    """What Kubernetes' schemas cannot say (tests/test_deploy.py validates against them)."""
    manifests = k8s()
    deployment, service = manifests["Deployment"], manifests["Service"]
    config, secret = manifests["ConfigMap"], manifests["Secret"]
    pod = deployment["spec"]["template"]
    [container] = pod["spec"]["containers"]
    port = {p["name"]: p["containerPort"] for p in container["ports"]}["http"]
    assert str(port) == config["data"]["GATEWAY_PORT"]
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(port)
    assert container["resources"]["requests"]
    assert container["resources"]["limits"]
    shutdown = float(config["data"]["GATEWAY_SHUTDOWN_TIMEOUT_SECONDS"])
    assert pod["spec"]["terminationGracePeriodSeconds"] > shutdown
    secret_refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
    assert set(secret_refs) == {"NOMIC_API_KEY", "GATEWAY_ADMIN_TOKEN", "GATEWAY_METRICS_TOKEN"}
    for ref in secret_refs.values():
        assert ref["name"] == secret["metadata"]["name"]
        assert ref["key"] in secret["stringData"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    for kind in ("Service", "PodDisruptionBudget"):
        spec = manifests[kind]["spec"]
        assert spec.get("selector", {}).get("matchLabels", spec.get("selector")) == selector
    target = manifests["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    env = {
        **config["data"],
        "NOMIC_API_KEY": "nk-x",
        "GATEWAY_ADMIN_TOKEN": "admin-token-for-tests-0123456789",
        "GATEWAY_METRICS_TOKEN": "metrics-token-for-tests-0123456789",
    }
    Settings.from_sources({}, env)  # every variable the manifests set is one the gateway takes


def test_kubernetes_runs_the_image_read_only_with_a_writable_tmp_and_as_its_user() -> None:
    pod = k8s()["Deployment"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    # --workers keeps its metrics files in the temporary directory: without a writable /tmp
    # the gateway cannot start more than one process (scripts/deploy_check.py runs it so)
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    [tmp] = [mount for mount in container["volumeMounts"] if mount["mountPath"] == "/tmp"]
    assert "emptyDir" in volumes[tmp["name"]]
    assert not tmp.get("readOnly", False)
    # runAsNonRoot holds on the image's own numeric USER; runAsUser names the same one
    [user] = re.findall(r"^USER\s+(\d+)", (DEPLOY / "Dockerfile").read_text(), re.MULTILINE)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert str(pod["securityContext"]["runAsUser"]) == user


def test_compose_wires_prometheus_alertmanager_and_grafana_to_the_gateway() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    for name in ("prometheus", "alertmanager", "grafana"):
        for volume in services[name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), source
    scrape = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    [target] = scrape["scrape_configs"][0]["static_configs"][0]["targets"]
    assert target == f"gateway:{services['gateway']['ports'][0].rsplit(':', 1)[1]}"
    [alertmanagers] = scrape["alerting"]["alertmanagers"]
    [alertmanager] = alertmanagers["static_configs"][0]["targets"]
    assert alertmanager == f"alertmanager:{services['alertmanager']['ports'][0].rsplit(':', 1)[1]}"
    routes = yaml.safe_load((DEPLOY / "alertmanager/alertmanager.yml").read_text())
    receivers = {receiver["name"] for receiver in routes["receivers"]}
    assert routes["route"]["receiver"] in receivers
    assert {route["receiver"] for route in routes["route"].get("routes", [])} <= receivers
    datasource = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    panels_uid = {t["datasource"]["uid"] for p in dashboard()["panels"] for t in p["targets"]}
    assert panels_uid == {datasource["datasources"][0]["uid"]}


def samples(text: str, name: str, labels: dict[str, str]) -> Iterator[float]:
    """The values of the samples of ``name`` in the Prometheus text format that have
    ``labels`` (and any others)."""
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
            if all(found.get(k) == v for k, v in labels.items()):
                yield float(line.rsplit(" ", 1)[1])


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample (the first that matches; 0 if none)."""
    return next(samples(text, name, labels), 0.0)


def total(text: str, name: str, **labels: str) -> float:
    """The sum of every sample that matches (of every model, say)."""
    return sum(samples(text, name, labels))


async def test_metrics_per_team_equal_the_usage_api(gateway: Client, fake_nomic: FakeNomic) -> None:
    team = f"ops{time.time_ns()}"  # metrics live as long as the test process: a fresh team
    headers = await team_headers(gateway, team, limits={"texts_per_minute": 40})
    for images in ([png(1), png(2)], [png(1), png(3), png(3)], [png(2)]):
        response = await gateway.post(
            "/v1/embedding/image", data=image_form(images), headers=headers
        )
        assert response.status == 200
    for texts in (["one text", "two texts here"], ["one text", "a third", "a third"]):
        response = await gateway.post("/v1/embedding/text", json={"texts": texts}, headers=headers)
        assert response.status == 200
    [usage] = (await admin_get(gateway, f"/admin/usage?team={team}"))["usage"]
    text = await (await gateway.get("/metrics")).text()
    for kind, inputs in (("image", "images"), ("text", "texts")):
        assert total(text, "gateway_team_items_total", team=team, kind=kind) == usage[inputs]
    for outcome, field in (("hit", "hits"), ("miss", "misses")):
        assert total(text, "gateway_team_items_total", team=team, outcome=outcome) == usage[field]
    billed = total(text, "gateway_billed_tokens_total", team=team)
    saved = total(text, "gateway_saved_tokens_total", team=team)
    assert (billed, saved) == (usage["billed_tokens"], usage["saved_tokens"])
    assert total(text, "gateway_billed_tokens_total", team=team, model="nomic-embed-text-v1") > 0
    assert (usage["hits"], usage["misses"], usage["images"], usage["texts"]) == (5, 6, 6, 5)
    assert sample(text, "gateway_team_limit", team=team, limit="texts_per_minute") == 40
    assert sample(text, "gateway_team_limit", team=team, limit="images_per_minute") == math.inf


async def test_one_json_log_line_per_request_without_secrets(
    gateway: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    response = await post_images(gateway, [png(1), png(1)])
    assert response.status == 200
    [record] = [r for r in caplog.records if r.name == "gateway.access"]
    line = json.loads(logs.JsonFormatter().format(record))
    fields = ("team", "model", "items", "hits", "misses", "status", "route")
    assert {k: line[k] for k in fields} == {
        "team": "test", "model": "nomic-embed-vision-v1.5", "items": 2, "hits": 1, "misses": 1,
        "status": 200, "route": "/v1/embedding/image"}  # fmt: skip
    assert line["request_id"] == response.headers["X-Request-Id"]
    assert line["billed_tokens"] == 10
    assert line["duration_ms"] >= line["upstream_ms"] >= 0
    assert gateway.team_key not in json.dumps(line)  # type: ignore[attr-defined]


@pytest.fixture
def logging_restored() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logs.configure_fast_path(None)


def test_json_request_lines_skip_logging_but_keep_its_shape_and_order(
    logging_restored: None,
) -> None:
    written = io.BytesIO()
    logs.configure("INFO", "json", io.TextIOWrapper(written, line_buffering=True))
    logging.getLogger("gateway.test").warning("before")
    fields = {"request_id": "r1", "method": "POST", "route": "/v1/embedding/image",
              "status": 200, "duration_ms": 1.25, "team": "a"}  # fmt: skip
    logs.request_line(dict(fields))
    logs.request_line(dict(fields), logging.DEBUG)  # below the level: nothing
    logging.getLogger("gateway.test").warning("after")
    lines = [json.loads(line) for line in written.getvalue().splitlines()]
    assert [line["message"] for line in lines] == ["before", "POST /v1/embedding/image 200 1.2ms",
                                                   "after"]  # fmt: skip
    record = logging.LogRecord("gateway.access", logging.INFO, "", 0, logs.REQUEST_MESSAGE,
                               ("POST", "/v1/embedding/image", 200, 1.25), None)  # fmt: skip
    record.__dict__.update(fields)
    formatted = json.loads(logs.JsonFormatter().format(record))
    assert set(lines[1]) == set(formatted)
    assert {k: v for k, v in lines[1].items() if k != "time"} == {
        k: v for k, v in formatted.items() if k != "time"
    }


def test_a_broken_log_stream_never_fails_a_request(logging_restored: None) -> None:
    stream = io.TextIOWrapper(io.BytesIO(), line_buffering=True)
    logs.configure("INFO", "json", stream)
    stream.buffer.close()
    logs.request_line({"method": "POST", "route": "/v1/embedding/image", "status": 200})
    logs.request_line({"method": "POST", "route": "/v1/embedding/image", "status": 200})


async def test_a_real_prometheus_scrape_answers_the_hit_ratio_panel(
    make_gateway: GatewayFactory, store_url: str | None
) -> None:
    binary = shutil.which("prometheus")
    assert binary, "prometheus is missing: the README's test command installs it"
    token = "metrics-token-for-prometheus-0123"
    gateway = await make_gateway(metrics_token=token)
    for images in ([png(50)], [png(50)], [png(51), png(51)]):  # every series exists before
        assert (await post_images(gateway, images)).status == 200  # the first scrape
    target = f"127.0.0.1:{gateway.port}"
    port = free_port()
    with tempfile.TemporaryDirectory() as workdir:
        config, token_file = Path(workdir) / "prometheus.yml", Path(workdir) / "token"
        token_file.write_text(token)
        job = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())["scrape_configs"][
            0
        ]
        job["authorization"]["credentials_file"] = str(token_file)  # as deploy/ says, elsewhere
        job["static_configs"] = [{"targets": [target]}]
        config.write_text(yaml.safe_dump({"global": {"scrape_interval": "1s"},
                                          "scrape_configs": [job]}))  # fmt: skip
        process = await asyncio.create_subprocess_exec(
            binary, f"--config.file={config}", f"--storage.tsdb.path={workdir}/data",
            f"--web.listen-address=127.0.0.1:{port}",
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            await query_until_answered(port, 'up{job="nomic-gateway"} == 1', deadline)
            # a ratio that only this workload gives: 3 hits of 4 inputs
            for images in ([png(1)], [png(1)], [png(1), png(1)]):
                assert (await post_images(gateway, images)).status == 200
            await asyncio.sleep(2.5)  # two scrapes (1 s apart) after the whole workload
            [hit_ratio] = [p for p in dashboard()["panels"] if p["title"] == "Cache hit ratio"]
            expr = hit_ratio["targets"][0]["expr"].replace("[5m]", "[1m]")
            value = await query_until_answered(
                port, f"({expr}) > 0", deadline=time.monotonic() + 30
            )
            # rate() over a window extrapolates, but the ratio of two rates is exact
            assert value == pytest.approx(0.75, abs=0.01)
        finally:
            process.terminate()
            await process.wait()


async def query_until_answered(port: int, expr: str, deadline: float) -> float:
    url = f"http://127.0.0.1:{port}/api/v1/query?query={urllib.parse.quote(expr)}"
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(url) as response:
                    result = (await response.json())["data"]["result"]
                    if result:
                        return float(result[0]["value"][1])
            except (aiohttp.ClientError, KeyError):
                pass
            await asyncio.sleep(0.5)
    raise AssertionError(f"Prometheus did not answer {expr}")
