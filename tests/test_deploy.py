"""The deployment files say what the gateway expects (no Docker engine runs these tests)."""

from __future__ import annotations

from pathlib import Path

import yaml

from gateway.config import Settings

ROOT = Path(__file__).resolve().parent.parent


def test_compose_runs_the_gateway_on_a_persistent_redis() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    gateway, redis = compose["services"]["gateway"], compose["services"]["redis"]
    assert (ROOT / gateway["build"]["dockerfile"]).is_file()
    assert gateway["environment"]["GATEWAY_REDIS_URL"] == "redis://redis:6379/0"
    assert "NOMIC_API_KEY" in gateway["environment"]
    assert gateway["ports"] == ["8080:8080"]
    assert "--appendonly" in redis["command"]
    assert redis["volumes"][0].endswith(":/data")
    assert "GATEWAY_METRICS_TOKEN" in gateway["environment"]  # Prometheus scrapes with it
    secrets = {
        "NOMIC_API_KEY": "nk-x",
        "GATEWAY_ADMIN_TOKEN": "a" * 32,
        "GATEWAY_METRICS_TOKEN": "m" * 32,
    }
    Settings.from_sources({}, {**gateway["environment"], **secrets})  # all valid


def test_image_listens_where_its_health_check_looks() -> None:
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert "GATEWAY_HOST=0.0.0.0" in dockerfile
    assert "GATEWAY_PORT=8080" in dockerfile
    assert "127.0.0.1:8080/healthz" in dockerfile
    assert "USER gateway" in dockerfile


def test_readme_documents_every_setting() -> None:
    import dataclasses

    readme = (ROOT / "README.md").read_text()
    for field in dataclasses.fields(Settings):
        assert f"`{field.metadata['env']}`" in readme, field.metadata["env"]
