"""The deployment files say what the gateway expects.

These run without a container engine; scripts/deploy_check.py (run by scripts/test.sh beside
the suite) builds the image and runs it under Docker, as Kubernetes would, and with Compose.
"""

from __future__ import annotations

import dataclasses
import http.server
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from gateway.config import Settings
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "deploy" / "Dockerfile").read_text()
KUBERNETES = "1.31"
SECRETS = {
    "NOMIC_API_KEY": "nk-x",
    "GATEWAY_ADMIN_TOKEN": "admin-token-for-tests-0123456789",
    "GATEWAY_METRICS_TOKEN": "metrics-token-for-tests-0123456789",
}


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def interpolated(value: str, env: dict[str, str]) -> str:
    """Compose's ${NAME:-default} and ${NAME:?error}, as it reads them with ``env``."""

    def one(match: re.Match[str]) -> str:
        name, kind, rest = match.group(1), match.group(2), match.group(3)
        if env.get(name):
            return env[name]
        if kind == ":?":
            raise AssertionError(f"{name} must be set: {rest}")
        return rest

    return re.sub(r"\$\{(\w+)(:-|:\?)([^}]*)\}", one, value)


def gateway_environment(env: dict[str, str]) -> dict[str, str]:
    """What the gateway's container gets from Compose given the shell's ``env``."""
    declared = compose()["services"]["gateway"]["environment"]
    result = {}
    for name, value in declared.items():
        if value is None:  # passed through from the shell, or left out
            if name in env:
                result[name] = env[name]
        else:
            result[name] = interpolated(str(value), env)
    return result


def test_compose_runs_the_gateway_on_a_bounded_persistent_redis() -> None:
    services = compose()["services"]
    gateway, redis = services["gateway"], services["redis"]
    assert (ROOT / gateway["build"]["dockerfile"]).is_file()
    environment = gateway_environment(SECRETS)
    assert environment["GATEWAY_REDIS_URL"] == "redis://redis:6379/0"
    Settings.from_sources({}, environment)  # all valid
    command = [interpolated(str(word), {}) for word in redis["command"]]
    assert "--appendonly" in command
    assert redis["volumes"][0].endswith(":/data")
    options = dict(zip(command[1::2], command[2::2], strict=True))
    assert options["--maxmemory-policy"] == "noeviction"  # cache and ledger share this Redis
    assert options["--maxmemory"] == "1gb"


def test_compose_passes_every_gateway_setting_through_from_the_shell() -> None:
    settings = {field.metadata["env"] for field in dataclasses.fields(Settings)}
    declared = set(compose()["services"]["gateway"]["environment"])
    # the image's listening address and port stay: the port mapping and Prometheus rely on them
    assert declared == settings - {"GATEWAY_HOST", "GATEWAY_PORT"}
    shell = {**SECRETS, "GATEWAY_UPSTREAM_URL": "http://upstream.test:9", "GATEWAY_WORKERS": "3"}
    environment = gateway_environment(shell)
    assert environment["GATEWAY_UPSTREAM_URL"] == "http://upstream.test:9"
    settings_given = Settings.from_sources({}, environment)
    assert settings_given.workers == 3
    assert "GATEWAY_MAX_ITEMS" not in environment  # unset in the shell: the gateway's default


def test_compose_publishes_ports_on_loopback_unless_told_otherwise() -> None:
    for name, service in compose()["services"].items():
        for mapping in service.get("ports", []):
            published = interpolated(mapping, {})
            assert published.startswith("127.0.0.1:"), (name, published)
            variable = re.match(r"\$\{(\w+):-", mapping)
            assert variable, f"{name}: the published address can be changed from the shell"
            assert interpolated(mapping, {variable.group(1): "0.0.0.0:8"}).startswith("0.0.0.0:8")


def test_image_runs_as_a_numeric_user_from_one_virtualenv_layer() -> None:
    [user] = re.findall(r"^USER\s+(\S+)", DOCKERFILE, re.MULTILINE)
    assert re.fullmatch(r"10001(:10001)?", user)  # runAsNonRoot can only verify a number
    assert "GATEWAY_HOST=0.0.0.0" in DOCKERFILE
    assert "GATEWAY_PORT=8080" in DOCKERFILE
    assert "rm -rf" not in DOCKERFILE  # whatever a later layer deletes stays in the image
    assert re.search(r"^COPY --from=build /opt/nomic-gateway /opt/nomic-gateway$", DOCKERFILE, re.M)


def healthcheck_command() -> list[str]:
    joined = re.sub(r"\\\n", "", DOCKERFILE)
    [command] = re.findall(r"^HEALTHCHECK .*?CMD (\[.*\])$", joined, re.MULTILINE)
    words: list[str] = json.loads(command)
    return words


class _Healthz(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.parametrize("listening", [True, False])
def test_health_check_probes_the_port_the_gateway_listens_on(listening: bool) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Healthz)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        program, *args = healthcheck_command()
        assert program == "python"
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        # GATEWAY_PORT names the server's port, or one nothing listens on: never 8080 blindly
        env["GATEWAY_PORT"] = str(server.server_address[1] if listening else free_port())
        result = subprocess.run(
            [sys.executable, *args], env=env, capture_output=True, timeout=30, check=False
        )
        assert (result.returncode == 0) == listening, result.stderr
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def dockerignore_excludes(path: str) -> bool:
    """Docker's rule (moby's patternmatcher): each pattern in turn is matched against the path
    and each of its parent folders; the last one that matches decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        regex = "".join(
            {"**/": "(.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(token, re.escape(token))
            if not token.startswith("[")
            else token
            for token in re.findall(
                r"\*\*/|\*\*|\*|\?|\[[^]]*\]|[^*?[]", pattern.lstrip("!").rstrip("/")
            )
        )
        if any(re.fullmatch(regex, candidate) for candidate in candidates):
            excluded = not negated
    return excluded


def test_dockerignore_sends_only_what_the_dockerfile_copies() -> None:
    copied = re.findall(r"^COPY (?!--from)(.+) \S+$", DOCKERFILE, re.MULTILINE)
    sources = [source for line in copied for source in line.split()]
    assert sorted(sources) == ["README.md", "gateway", "pyproject.toml",
                               "requirements/build.lock", "requirements/run.lock"]  # fmt: skip
    for source in sources:
        assert not dockerignore_excludes(source), source
    assert not dockerignore_excludes("gateway/store/lua/admit.lua")
    for path in (".git", ".venv/bin/python", "tests/test_deploy.py", "scripts/test.sh",
                 "gateway/__pycache__/app.cpython-311.pyc", ".mypy_cache/x", "deploy/Dockerfile",
                 "gateway/store/__pycache__", "nomic_gateway.egg-info/PKG-INFO",
                 "requirements/test.lock", "requirements/tools.in"):  # fmt: skip
        assert dockerignore_excludes(path), path


def test_the_image_installs_the_locked_releases_and_nothing_else() -> None:
    """What runs is what was tested: hashes required, nothing resolved in the build."""
    joined = re.sub(r"\\\n\s*", "", DOCKERFILE)
    [install] = re.findall(r"^RUN .*--require-hashes.*$", joined, re.MULTILINE)
    assert "--no-deps" in install
    assert re.findall(r"--requirement (\S+)", install) == [
        "requirements/run.lock", "requirements/build.lock"]  # fmt: skip
    [gateway] = re.findall(r"^RUN .*pip install --no-deps --no-build-isolation \.", joined, re.M)
    assert gateway


def test_kubernetes_manifests_are_valid_for_kubernetes_1_31() -> None:
    for path in sorted((ROOT / "deploy" / "k8s").glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            try:
                kubernetes_validate.validate(document, KUBERNETES, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{path.name}: {exc.message}")


def test_configuration_page_documents_every_setting() -> None:
    page = (ROOT / "docs" / "configuration.md").read_text()
    for field in dataclasses.fields(Settings):
        assert f"`{field.metadata['env']}`" in page, field.metadata["env"]
