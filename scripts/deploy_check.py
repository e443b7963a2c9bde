"""The deployment check: the image built from deploy/Dockerfile, run as Docker, Kubernetes and
Compose run it, against the fake Nomic, on this machine.

scripts/test.sh runs it after pytest. Alone, as root, from the project's virtualenv (the test
extras: the fake Nomic and PyYAML):

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
# ruff: noqa: S310, S603, S607

from __future__ import annotations

import configparser
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]  # the tests' fake; locks.py beside this file

import yaml  # noqa: E402 (the project's test extras)
from locks import canonical, pins  # noqa: E402
from packaging.markers import Marker  # noqa: E402

from fake_nomic import FAKE_API_KEY, png  # noqa: E402

LABEL = "nomic-gateway.deploy-check"  # on every container and network the check makes
STAND_IN = "nomic-gateway.stand-in"  # on every stand-in image
STAND_IN_BASE = "nomic-gateway-stand-in:bookworm"
IMAGE = "nomic-gateway:deploy-check"
PREFIX = "ngcheck"  # names of containers, networks and Compose projects
PULL_TIMEOUT = 20
DOCKERD_LOG = Path("/var/log/nomic-gateway-dockerd.log")
PACKAGES = {
    "docker.io": "dockerd",
    "docker-compose": "docker-compose",
    "debootstrap": "debootstrap",
}
SLOW_FAKE_SECONDS = 4.0  # how long the fake takes to answer the request in flight at docker stop


def say(text: str) -> None:
    print(f"deploy-check: {text}", flush=True)


class Failed(Exception):
    """A check did not hold; the message says what was seen."""


class Fatal(Failed):
    """A check that cannot come true by waiting longer (a container exited, say)."""


class GroupStopped(Exception):
    """A step failed: the steps after it in its group depend on it and are not run."""


# -- running things --------------------------------------------------------------------------


def run(
    *command: str,
    timeout: float = 120,
    check: bool = True,
    stdin: str | None = None,
    env: dict[str, str] | None = None,
    cwd: Path = ROOT,
) -> subprocess.CompletedProcess[str]:
    try:
        result = subprocess.run(
            command,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=env,
            cwd=cwd,
            stdin=None if stdin is not None else subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise Failed(f"{' '.join(command[:3])}: no answer in {timeout:.0f} s") from exc
    if check and result.returncode != 0:
        raise Failed(f"{' '.join(command[:3])} exited {result.returncode}: {tail(result)}")
    return result


def tail(result: subprocess.CompletedProcess[str], lines: int = 8) -> str:
    text = (result.stderr or "") + (result.stdout or "")
    return " | ".join(text.strip().splitlines()[-lines:])


def docker(*args: str, timeout: float = 120, check: bool = True) -> str:
    return run("docker", *args, timeout=timeout, check=check).stdout.strip()


# What a line of dockerd's log says when it carries the cause of a failed start. Its last line
# often does not: "failed to start daemon: ... iptables: Permission denied" can be followed by
# a line of its own holding only " (exit status 4)".
CAUSE = re.compile(r"error|fail|denied|not permitted|cannot", re.IGNORECASE)
CAUSE_LINES = 2  # the last of them: a fatal line, and often the error it follows from


def dockerd_failure(log: str) -> str:
    """Why dockerd would not start, from its log: the last lines naming an error, else its
    last line, each cut to its last 200 characters (where the cause ends up)."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    quoted = [line for line in lines if CAUSE.search(line)][-CAUSE_LINES:] or lines[-1:]
    said = " | ".join(line[-200:] for line in quoted) or "no output"
    return f"dockerd would not start ({said}; {DOCKERD_LOG})"


def engine_answers() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        return run("docker", "info", timeout=20, check=False).returncode == 0
    except Failed:
        return False


def wait_until(what: str, probe: Callable[[], Any], timeout: float, every: float = 0.5) -> Any:
    """Call ``probe`` until it returns something true (returned) or ``timeout`` passes."""
    deadline, last = time.monotonic() + timeout, "no answer"
    while True:
        try:
            value = probe()
            if value:
                return value
        except Fatal:
            raise
        except (Failed, OSError, ValueError, KeyError) as exc:
            last = str(exc)
        if time.monotonic() > deadline:
            raise Failed(f"{what}: not within {timeout:.0f} s ({last})")
        time.sleep(every)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


# -- HTTP ------------------------------------------------------------------------------------

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # local: never a proxy


def http(
    method: str,
    url: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30,
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def get_json(url: str) -> Any:
    status, _, body = http("GET", url, timeout=10)
    if status != 200:
        raise Failed(f"GET {url}: {status}")
    return json.loads(body)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def image_form(images: list[bytes]) -> tuple[bytes, str]:
    boundary = secrets.token_hex(12)
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="i.png"\r\n'
        f"Content-Type: image/png\r\n\r\n".encode()
        + data
        + b"\r\n"
        for data in images
    ]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), boundary


def embed(base: str, key: str, images: list[bytes], timeout: float = 60) -> tuple[int, str, str]:
    body, boundary = image_form(images)
    headers = {**bearer(key), "Content-Type": f"multipart/form-data; boundary={boundary}"}
    status, answer, text = http("POST", f"{base}/v1/embedding/image", body, headers, timeout)
    return status, answer.get("X-Cache", ""), text[:200].decode(errors="replace")


def make_team_key(base: str, admin_token: str, team: str) -> str:
    headers = {**bearer(admin_token), "Content-Type": "application/json"}
    body = json.dumps({"id": team, "name": "Deploy check"}).encode()
    status, _, text = http("POST", f"{base}/admin/teams", body, headers)
    if status != 201:
        raise Failed(f"POST /admin/teams: {status} {text[:200]!r}")
    status, _, text = http("POST", f"{base}/admin/teams/{team}/keys", b"", headers)
    if status != 201:
        raise Failed(f"POST /admin/teams/{team}/keys: {status} {text[:200]!r}")
    key: str = json.loads(text)["key"]
    return key


def miss_then_hit(base: str, admin_token: str, seed: int) -> None:
    """A team and its key through the admin API; one image twice: MISS, then HIT."""
    key = make_team_key(base, admin_token, f"check-{seed}")
    for expected in ("MISS", "HIT"):
        status, cache, text = embed(base, key, [png(seed)])
        if status != 200 or cache != expected:
            raise Failed(f"expected 200 {expected}, got {status} X-Cache={cache!r} {text!r}")


# -- the run ---------------------------------------------------------------------------------


class Check:
    def __init__(self) -> None:
        self.run_id = f"{os.getpid()}{secrets.token_hex(2)}"
        self.failed: list[str] = []
        self.dockerd: subprocess.Popen[bytes] | None = None
        self.installed: list[str] = []
        self.fakes: list[subprocess.Popen[bytes]] = []
        self.projects: list[tuple[str, dict[str, str]]] = []
        self.temporary_images: list[str] = []
        self.work = Path(tempfile.mkdtemp(prefix="nomic-gateway-deploy-check-"))
        self.admin_token = secrets.token_hex(32)
        self.metrics_token = secrets.token_hex(32)
        self.seed = int(time.time()) % 100_000 * 100

    def name(self, what: str) -> str:
        return f"{PREFIX}-{self.run_id}-{what}"

    def next_seed(self) -> int:
        self.seed += 1
        return self.seed

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[list[str]]:
        """One step: its line says ok (with any notes the step adds) or FAIL and why."""
        start, notes = time.monotonic(), list[str]()
        try:
            yield notes
        except Exception as exc:
            say(f"FAIL {name} ({time.monotonic() - start:.1f} s): {exc}")
            self.failed.append(name)
            raise GroupStopped from exc
        note = f": {'; '.join(notes)}" if notes else ""
        say(f"ok   {name} ({time.monotonic() - start:.1f} s){note}")

    def group(self, name: str, body: Callable[[], None]) -> bool:
        """Steps that depend on each other: after a failure, the rest of them are not run."""
        try:
            body()
        except GroupStopped:
            if name:
                say(f"     (the rest of {name} is not run)")
            return False
        return True

    # -- the engine ----------------------------------------------------------------------

    def prepare_engine(self) -> str | None:
        """Install and start what is missing; None when an engine answers, else why not."""
        answers = engine_answers()
        missing = [package for package, program in PACKAGES.items() if not shutil.which(program)]
        if answers and "docker.io" in missing:
            missing.remove("docker.io")  # an engine of another make runs: leave it be
        if missing and os.geteuid() == 0:
            with contextlib.suppress(Failed):  # what is still missing fails its own step
                apt_install(missing, quiet=True)
                self.installed = missing
        if answers or engine_answers():
            return None
        if os.geteuid() != 0:
            return "no container engine answers, and starting dockerd needs root"
        if not shutil.which("dockerd"):
            return "dockerd is not installed and Debian's docker.io could not be installed"
        environment = {k: v for k, v in os.environ.items() if k != "NG_TEST_RUN"}
        with DOCKERD_LOG.open("wb") as log:
            self.dockerd = subprocess.Popen(
                ["dockerd"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=environment,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.dockerd.poll() is not None:
                break
            if engine_answers():
                return None
            time.sleep(0.5)
        self.stop_dockerd()
        return dockerd_failure(DOCKERD_LOG.read_text(errors="replace"))

    def stop_dockerd(self) -> None:
        if self.dockerd is None:
            return
        if self.dockerd.poll() is None:
            self.dockerd.terminate()
            try:
                self.dockerd.wait(60)
            except subprocess.TimeoutExpired:
                self.dockerd.kill()
                self.dockerd.wait()
        self.dockerd = None

    # -- images --------------------------------------------------------------------------

    def images(self) -> dict[str, str]:
        """Every image the check needs, by role; stand-ins built where they cannot be pulled."""
        compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
        froms = re.findall(r"^FROM\s+(?:--\S+\s+)*(\S+)", dockerfile(), re.MULTILINE)
        stages = re.findall(r"^FROM\s+.*\s+AS\s+(\S+)", dockerfile(), re.MULTILINE | re.IGNORECASE)
        wanted = {"base": sorted(set(froms) - set(stages))}
        roles: dict[str, str] = {}
        for base in wanted["base"]:
            with self.step(f"image {base} (the Dockerfile's base)") as notes:
                notes.append(self.ensure_image(base, self.build_python_stand_in))
            roles.setdefault("base", base)
        for service in ("redis", "prometheus", "alertmanager"):
            image = compose[service]["image"]
            with self.step(f"image {image} (Compose's {service})") as notes:
                notes.append(self.ensure_image(image, self.service_stand_in(service)))
            roles[service] = image
        grafana = compose["grafana"]["image"]
        if self.pull(grafana):
            roles["grafana"] = grafana
            say(f"ok   image {grafana} (Compose's grafana, pulled)")
        else:
            say(
                f"skip image {grafana}: it cannot be pulled here and Debian does not package "
                "Grafana; Compose runs without it"
            )
        return roles

    def pull(self, image: str) -> bool:
        try:
            pulled = run("docker", "pull", "-q", image, timeout=PULL_TIMEOUT, check=False)
        except Failed:
            return False
        return pulled.returncode == 0

    def ensure_image(self, image: str, build: Callable[[str], None]) -> str:
        """The real image where it is here or can be pulled, else a stand-in; which it is."""
        labels = image_labels(image)
        if labels is not None and STAND_IN not in labels:
            return "the real one, already here"
        if self.pull(image):
            return "pulled"
        if labels is not None:
            return f"cannot be pulled: the stand-in of an earlier run ({labels[STAND_IN]})"
        build(image)
        labels = image_labels(image) or {}
        return f"cannot be pulled: stand-in built ({labels.get(STAND_IN)})"

    def build_python_stand_in(self, image: str) -> None:
        if image_labels(STAND_IN_BASE) is None:
            if not shutil.which("debootstrap"):
                apt_install(["debootstrap"])
            rootfs = self.work / "rootfs"
            mirror = debian_mirror()
            run(
                "debootstrap",
                "--variant=minbase",
                "--include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates",
                "bookworm",
                str(rootfs),
                mirror,
                timeout=1200,
            )
            configure_stand_in(rootfs)
            tar = subprocess.Popen(
                ["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE
            )
            changes = [
                "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "ENV LANG=C.UTF-8",
                'CMD ["python3"]',
                f'LABEL {STAND_IN}="debootstrap bookworm, python3 from Debian ({mirror})"',
            ]
            command = ["docker", "import", *(f"--change={c}" for c in changes), "-", STAND_IN_BASE]
            imported = subprocess.run(
                command,
                stdin=tar.stdout,
                capture_output=True,
                text=True,
                check=False,
                timeout=600,
            )
            if tar.stdout is not None:
                tar.stdout.close()
            tar.wait()
            shutil.rmtree(rootfs, ignore_errors=True)
            if imported.returncode != 0 or tar.returncode != 0:
                raise Failed(f"docker import: {tail(imported)}")
        docker("tag", STAND_IN_BASE, image)

    def service_stand_in(self, service: str) -> Callable[[str], None]:
        return lambda image: self.build_service_stand_in(service, image)

    def build_service_stand_in(self, service: str, image: str) -> None:
        if image_labels(STAND_IN_BASE) is None:
            self.build_python_stand_in(STAND_IN_BASE)
        context = self.work / f"stand-in-{service}"
        context.mkdir()
        recipe = STAND_IN_RECIPES[service]
        for name, text in recipe.get("files", {}).items():
            (context / name).write_text(text)
            (context / name).chmod(0o755)
        (context / "Dockerfile").write_text(f"FROM {STAND_IN_BASE}\n" + recipe["dockerfile"])
        label = f"{STAND_IN}=Debian's {recipe['package']} on {STAND_IN_BASE}"
        run("docker", "build", "-q", "--label", label, "-t", image, str(context), timeout=900)

    # -- the image -----------------------------------------------------------------------

    def build(self, roles: dict[str, str]) -> None:
        with self.step("build the image from deploy/Dockerfile"):
            # Each earlier stage tagged too: kept as the next run's build cache.
            for stage in re.findall(r"^FROM\s+.*\s+AS\s+(\S+)", dockerfile(), re.M | re.I):
                run("docker", "build", "-q", "-f", "deploy/Dockerfile", "--target", stage,
                    "-t", f"{IMAGE}-{stage}", ".", timeout=900)  # fmt: skip
            run("docker", "build", "-q", "-f", "deploy/Dockerfile", "-t", IMAGE, ".", timeout=900)

    def check_context(self, roles: dict[str, str]) -> None:
        with self.step("the build context is only pyproject.toml, README.md, two locks, gateway/"):
            probe = self.name("context")
            self.temporary_images.append(probe)
            run(
                "docker",
                "build",
                "-q",
                "-f",
                "-",
                "-t",
                probe,
                ".",
                stdin=f"FROM {roles['base']}\nCOPY . /context\n",
                timeout=300,
            )
            listing = self.once(probe, "find", "/context", "-mindepth", "1", "-maxdepth", "1")
            top = {Path(line).name for line in listing.splitlines()}
            caches = self.once(probe, "find", "/context", "-name", "__pycache__")
            locks = self.once(probe, "find", "/context/requirements", "-type", "f")
            locks_sent = {Path(line).name for line in locks.splitlines()}
            if top != {"pyproject.toml", "README.md", "requirements", "gateway"} or caches:
                raise Failed(f"the context holds {sorted(top)} {caches.split()[:3]}")
            if locks_sent != {"run.lock", "build.lock"}:
                raise Failed(f"the context holds requirements/{sorted(locks_sent)}")

    def check_image(self, roles: dict[str, str]) -> None:
        with self.step("the image's USER is a number, not root's"):
            user = docker("image", "inspect", "-f", "{{.Config.User}}", IMAGE)
            if not re.fullmatch(r"[0-9]+(:[0-9]+)?", user) or int(user.split(":")[0]) == 0:
                raise Failed(f"USER is {user!r}: Kubernetes' runAsNonRoot needs a number, not 0")

    def check_locked(self) -> None:
        with self.step("the image holds exactly the releases of requirements/run.lock"):
            seen = json.loads(self.once(IMAGE, "python", "-c", INSTALLED))
            environment = seen["environment"]
            locked = pins("run.lock", lambda marker: Marker(marker).evaluate(environment))
            want = {name: version for name, (version, _) in locked.items()}
            have = {canonical(name): version for name, version in seen["installed"]}
            have.pop("nomic-gateway", None)
            if have != want:
                extra = sorted(f"{n}=={v}" for n, v in have.items() if want.get(n) != v)
                missing = sorted(f"{n}=={v}" for n, v in want.items() if have.get(n) != v)
                raise Failed(f"installed but not locked: {extra}; locked, not installed: {missing}")

    def check_layers(self, roles: dict[str, str]) -> None:
        with self.step("the image's layers hold no dead weight (files a later layer removed)"):
            sizes = {
                image: int(docker("image", "inspect", "-f", "{{.Size}}", image))
                for image in (IMAGE, roles["base"])
            }
            layers = sizes[IMAGE] - sizes[roles["base"]]
            files = self.exported_bytes(IMAGE) - self.exported_bytes(roles["base"])
            # The tar stream counts headers too: files look bigger than they are, never smaller.
            # (The wheels a later RUN deleted weighed 4.8 MB here: they fail this.)
            if layers > files * 1.02 + 500_000:
                raise Failed(f"its layers add {layers} bytes to the base for {files} of files")

    def exported_bytes(self, image: str) -> int:
        """The size of the image's flattened filesystem (as a tar stream)."""
        container = docker("create", "--label", f"{LABEL}={self.run_id}", image)
        try:
            export = subprocess.Popen(["docker", "export", container], stdout=subprocess.PIPE)
            total = 0
            assert export.stdout is not None
            while chunk := export.stdout.read(1 << 20):
                total += len(chunk)
            if export.wait(60) != 0:
                raise Failed(f"docker export {image} failed")
            return total
        finally:
            docker("rm", container, check=False)

    # -- containers ----------------------------------------------------------------------

    def once(self, image: str, program: str, *args: str) -> str:
        """What ``program`` prints in a new container of ``image``, removed after."""
        label = f"{LABEL}={self.run_id}"
        return docker("run", "--rm", "--label", label, "--entrypoint", program, image, *args)

    def start_fake(self, host: str, latency: float = 0.0) -> str:
        port = free_port(host)
        command = [sys.executable, "-m", "fake_nomic", "--host", host, "--port", str(port)]
        if latency:
            command += ["--latency", str(latency)]
        log = (self.work / f"fake-{port}.log").open("wb")
        self.fakes.append(
            subprocess.Popen(command, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        )
        url = f"http://{host}:{port}"
        wait_until(f"the fake Nomic on {url}", lambda: http("GET", url, timeout=2), 30, 0.2)
        return url

    def gateway_env(self, upstream: str) -> list[str]:
        env = {
            "NOMIC_API_KEY": FAKE_API_KEY,
            "GATEWAY_UPSTREAM_URL": upstream,
            "GATEWAY_ADMIN_TOKEN": self.admin_token,
            "GATEWAY_METRICS_TOKEN": self.metrics_token,
        }
        return [f"--env={k}={v}" for k, v in env.items()]

    def start(self, what: str, *args: str) -> str:
        name = self.name(what)
        docker("run", "--detach", "--name", name, "--label", f"{LABEL}={self.run_id}", *args)
        return name

    def published(self, container: str, port: int) -> str:
        address = docker("port", container, f"{port}/tcp").splitlines()[0]
        return f"http://{address}"

    def images_run(self, bridge_ip: str) -> None:
        fast = self.start_fake(bridge_ip)
        slow = self.start_fake(bridge_ip, SLOW_FAKE_SECONDS)
        with self.step("start the image (port 8080) and one with GATEWAY_PORT=9000"):
            main = self.start(
                "gateway", "--publish", "127.0.0.1::8080", *self.gateway_env(fast), IMAGE
            )
            on_9000 = self.start(
                "port-9000",
                "--publish",
                "127.0.0.1::9000",
                "--env=GATEWAY_PORT=9000",
                *self.gateway_env(slow),
                IMAGE,
            )
        with self.step("its HEALTHCHECK goes healthy, on 8080 and on GATEWAY_PORT=9000"):
            for container in (main, on_9000):
                wait_healthy(container, 60)
        with self.step("the gateway's processes run as uid 10001, not root"):
            uids = process_uids(main)
            if not uids or set(uids) != {"10001"}:
                raise Failed(f"processes run as {uids}")
        base = self.published(main, 8080)
        with self.step("MISS then HIT: a team and key from the admin API, the fake Nomic behind"):
            miss_then_hit(base, self.admin_token, self.next_seed())
        with self.step("/metrics answers its token only"):
            status, _, _ = http("GET", f"{base}/metrics")
            with_token, _, text = http("GET", f"{base}/metrics", headers=bearer(self.metrics_token))
            if status != 401 or with_token != 200 or b"gateway_items_total" not in text:
                raise Failed(f"without the token {status}, with it {with_token}")
        with self.step("docker stop: exit 0, and the request in flight is answered 200"):
            slow_base = self.published(on_9000, 9000)
            key = make_team_key(slow_base, self.admin_token, f"stop-{self.seed}")
            answers: list[tuple[int, str, str]] = []
            request = threading.Thread(
                target=lambda: answers.append(embed(slow_base, key, [png(self.next_seed())]))
            )
            request.start()
            time.sleep(1.5)  # the request is with the (slow) fake by now
            docker("stop", "--time", "25", on_9000, timeout=60)
            request.join(30)
            code = docker("inspect", "-f", "{{.State.ExitCode}}", on_9000)
            if not answers or answers[0][0] != 200 or code != "0":
                raise Failed(f"exit code {code}, the request in flight got {answers or 'nothing'}")

    def kubernetes_run(self, roles: dict[str, str], bridge_ip: str) -> None:
        """The image as deploy/k8s/deployment.yaml runs it, with GATEWAY_WORKERS=2 on a Redis."""
        manifests = {
            doc["kind"]: doc
            for path in sorted((ROOT / "deploy" / "k8s").glob("*.yaml"))
            for doc in yaml.safe_load_all(path.read_text())
            if doc
        }
        pod = manifests["Deployment"]["spec"]["template"]["spec"]
        [container] = pod["containers"]
        context = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        flags = []
        if context.get("readOnlyRootFilesystem"):
            flags.append("--read-only")
        flags += [f"--cap-drop={cap}" for cap in context.get("capabilities", {}).get("drop", [])]
        if context.get("allowPrivilegeEscalation") is False:
            flags.append("--security-opt=no-new-privileges")
        if "runAsUser" in context:
            flags.append(f"--user={context['runAsUser']}:{context.get('runAsGroup', 0)}")
        for mount in container.get("volumeMounts", []):
            if "emptyDir" in volumes[mount["name"]]:
                flags.append(f"--tmpfs={mount['mountPath']}:rw,nosuid,nodev,mode=1777")
        config = dict(manifests["ConfigMap"]["data"])
        port = int(config["GATEWAY_PORT"])
        fast = self.start_fake(bridge_ip)
        with self.step("Redis for the Kubernetes-style run"):
            network = self.name("net")
            docker("network", "create", "--label", f"{LABEL}={self.run_id}", network)
            redis = self.start(
                "redis",
                "--network",
                network,
                roles["redis"],
                "redis-server",
                "--save",
                "",
                "--appendonly",
                "no",
            )
            wait_until(
                "redis-cli ping",
                lambda: docker("exec", redis, "redis-cli", "ping", check=False) == "PONG",
                30,
            )
        with self.step(f"run as Kubernetes does ({' '.join(flags)}), GATEWAY_WORKERS=2: healthy"):
            config.update(GATEWAY_WORKERS="2", GATEWAY_REDIS_URL=f"redis://{redis}:6379/0")
            pod_env = [f"--env={k}={v}" for k, v in config.items()]
            k8s = self.start(
                "k8s",
                "--network",
                network,
                "--publish",
                f"127.0.0.1::{port}",
                *flags,
                *pod_env,
                *self.gateway_env(fast),
                IMAGE,
            )
            wait_healthy(k8s, 60)
            uids = process_uids(k8s)
            if len(uids) < 3 or set(uids) != {str(context.get("runAsUser", "10001"))}:
                raise Failed(f"expected a supervisor and 2 workers as the pod's user: {uids}")
        base = self.published(k8s, port)
        with self.step("its probes answer (readiness, liveness) and MISS then HIT over Redis"):
            for probe in ("readinessProbe", "livenessProbe"):
                path = container[probe]["httpGet"]["path"]
                status, _, text = http("GET", base + path)
                if status != 200:
                    raise Failed(f"{probe} {path}: {status} {text[:200]!r}")
            miss_then_hit(base, self.admin_token, self.next_seed())

    def compose_run(self, roles: dict[str, str], bridge_ip: str) -> None:
        fast = self.start_fake(bridge_ip)
        project = f"{PREFIX}{self.run_id}"
        ports = {name: free_port() for name in ("gateway", "prometheus", "alertmanager", "grafana")}
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "NOMIC_"))}
        env.update(
            NOMIC_API_KEY=FAKE_API_KEY,
            GATEWAY_ADMIN_TOKEN=self.admin_token,
            GATEWAY_METRICS_TOKEN=self.metrics_token,
            GATEWAY_UPSTREAM_URL=fast,  # passed through by the compose file
            REDIS_MAXMEMORY="256mb",
            COMPOSE_PROJECT_NAME=project,
            **{f"PUBLISH_{name.upper()}": f"127.0.0.1:{port}" for name, port in ports.items()},
        )
        services = ["gateway", "redis", "prometheus", "alertmanager"]
        if "grafana" in roles:
            services.append("grafana")

        def compose(*args: str, timeout: float = 300) -> str:
            return run("docker-compose", *args, env=env, timeout=timeout).stdout.strip()

        with self.step(f"docker-compose up -d {' '.join(services)}"):
            if not shutil.which("docker-compose"):
                raise Failed("docker-compose is not installed (Debian's docker-compose)")
            self.projects.append((project, env))
            compose("up", "--detach", "--build", *services, timeout=900)
        base = f"http://127.0.0.1:{ports['gateway']}"
        with self.step("Compose's gateway answers MISS then HIT on 127.0.0.1, upstream passed in"):
            for service, port in (("gateway", 8080), ("prometheus", 9090)):
                address = compose("port", service, str(port))
                if not address.startswith("127.0.0.1:"):
                    raise Failed(f"{service} is published on {address}, not on 127.0.0.1 only")
            wait_until("the gateway's /readyz", lambda: http("GET", f"{base}/readyz")[0] == 200, 90)
            miss_then_hit(base, self.admin_token, self.next_seed())
        with self.step("Compose's Redis: maxmemory set, policy noeviction"):
            policy, memory = (
                compose("exec", "-T", "redis", "redis-cli", "config", "get", name)
                for name in ("maxmemory-policy", "maxmemory")
            )
            if policy.split()[-1] != "noeviction" or memory.split()[-1] != str(256 * 2**20):
                raise Failed(f"maxmemory-policy {policy.split()}, maxmemory {memory.split()}")
        prometheus = f"http://127.0.0.1:{ports['prometheus']}"
        with self.step("Prometheus scrapes the gateway with its metrics token: target up"):
            status, _, _ = http("GET", f"{base}/metrics")
            if status != 401:
                raise Failed(f"/metrics answers {status} without the token: nothing proven")

            def target_up() -> bool:
                targets = get_json(f"{prometheus}/api/v1/targets")["data"]["activeTargets"]
                [target] = [t for t in targets if t["labels"]["job"] == "nomic-gateway"]
                if target["health"] == "down":
                    raise Failed(f"target down: {target['lastError']}")
                return bool(target["health"] == "up")

            wait_until("the gateway's target up", target_up, 90, 1)
        with self.step("Prometheus loaded every alert and recording rule of rules.yml"):
            groups = yaml.safe_load((ROOT / "deploy/prometheus/rules.yml").read_text())["groups"]
            expected = {r.get("alert") or r.get("record") for g in groups for r in g["rules"]}

            def rules_loaded() -> bool:
                loaded = get_json(f"{prometheus}/api/v1/rules")["data"]["groups"]
                names = {rule["name"] for group in loaded for rule in group["rules"]}
                broken = [r["name"] for g in loaded for r in g["rules"] if r.get("health") == "err"]
                if broken:
                    raise Failed(f"rules failing: {broken}")
                return names == expected

            wait_until(f"{len(expected)} rules", rules_loaded, 30, 1)
        with self.step("Prometheus sends alerts to Alertmanager, which loaded its receiver"):

            def alertmanager_found() -> bool:
                data = get_json(f"{prometheus}/api/v1/alertmanagers")["data"]
                return bool(data["activeAlertmanagers"])

            wait_until("an active Alertmanager", alertmanager_found, 60, 1)
            alertmanager = f"http://127.0.0.1:{ports['alertmanager']}"
            status = wait_until(
                "Alertmanager's status", lambda: get_json(f"{alertmanager}/api/v2/status"), 30
            )
            if "operators" not in status["config"]["original"]:
                raise Failed("Alertmanager's configuration has no 'operators' receiver")
        with self.step("docker-compose down -v"):
            self.compose_down(project, env)
            left = docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={project}")
            volumes = docker("volume", "ls", "-q", "--filter", f"name={project}_")
            if left or volumes:
                raise Failed(f"left behind: containers {left.split()}, volumes {volumes.split()}")

    def compose_down(self, project: str, env: dict[str, str]) -> None:
        run(
            "docker-compose",
            "down",
            "--volumes",
            "--rmi",
            "local",
            "--remove-orphans",
            env=env,
            timeout=300,
        )
        self.projects = [(p, e) for p, e in self.projects if p != project]

    # -- the end -------------------------------------------------------------------------

    def clean_up(self) -> list[str]:
        """Remove everything this run made (but the images kept as a cache); what remains."""
        problems: list[str] = []
        for project, env in list(self.projects):
            try:
                self.compose_down(project, env)
            except Failed as exc:
                problems.append(f"compose project {project}: {exc}")
        if engine_answers():
            mine = f"label={LABEL}={self.run_id}"
            containers = docker("ps", "-aq", "--filter", mine, check=False).split()
            if containers:
                docker("rm", "--force", "--volumes", *containers, check=False, timeout=120)
            networks = docker("network", "ls", "-q", "--filter", mine, check=False).split()
            if networks:
                docker("network", "rm", *networks, check=False)
            for image in self.temporary_images:
                docker("rmi", "--force", image, check=False)
            docker("image", "prune", "--force", "--filter", "dangling=true", check=False)
            for kind, listing in (
                ("container", docker("ps", "-aq", "--filter", mine, check=False)),
                ("network", docker("network", "ls", "-q", "--filter", mine, check=False)),
                (
                    "compose container",
                    docker("ps", "-aq", "--filter", f"name={PREFIX}{self.run_id}", check=False),
                ),
            ):
                problems += [f"{kind} {item}" for item in listing.split()]
        for fake in self.fakes:
            fake.terminate()
            try:
                fake.wait(10)
            except subprocess.TimeoutExpired:
                fake.kill()
                fake.wait()
        self.fakes.clear()
        if os.environ.get("DEPLOY_CHECK_KEEP_ENGINE") != "1":
            self.stop_dockerd()
        shutil.rmtree(self.work, ignore_errors=True)
        return problems


STAND_IN_RECIPES: dict[str, dict[str, Any]] = {
    "redis": {
        "package": "redis-server",
        "files": {
            # The official image's redis-server starts without protected mode (its build
            # patches the default); Debian's refuses other containers without it.
            "docker-entrypoint.sh": (
                "#!/bin/sh\n"
                'if [ "${1#-}" != "$1" ]; then set -- redis-server "$@"; fi\n'
                'if [ "$1" = redis-server ]; then\n'
                '  shift; set -- redis-server --protected-mode no "$@"\n'
                "fi\n"
                'exec "$@"\n'
            ),
        },
        "dockerfile": (
            "RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
            "--no-install-recommends redis-server redis-tools >/dev/null "
            "&& rm -rf /var/lib/apt/lists/* && mkdir -p /data && chown redis:redis /data\n"
            "COPY docker-entrypoint.sh /usr/local/bin/\n"
            "WORKDIR /data\nUSER redis\nEXPOSE 6379\n"
            'ENTRYPOINT ["docker-entrypoint.sh"]\nCMD ["redis-server"]\n'
        ),
    },
    "prometheus": {
        "package": "prometheus",
        "dockerfile": (
            "RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
            "--no-install-recommends prometheus >/dev/null && rm -rf /var/lib/apt/lists/* "
            "&& mkdir -p /prometheus && chown nobody:nogroup /prometheus\n"
            "USER nobody\nWORKDIR /prometheus\nEXPOSE 9090\n"
            'ENTRYPOINT ["/bin/prometheus"]\n'
            'CMD ["--config.file=/etc/prometheus/prometheus.yml", '
            '"--storage.tsdb.path=/prometheus"]\n'
        ),
    },
    "alertmanager": {
        "package": "prometheus-alertmanager",
        "dockerfile": (
            "RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
            "--no-install-recommends prometheus-alertmanager >/dev/null "
            "&& rm -rf /var/lib/apt/lists/* && ln -s /usr/bin/prometheus-alertmanager "
            "/usr/local/bin/alertmanager && mkdir -p /alertmanager "
            "&& chown nobody:nogroup /alertmanager\n"
            "USER nobody\nWORKDIR /alertmanager\nEXPOSE 9093\n"
            'ENTRYPOINT ["/usr/local/bin/alertmanager"]\n'
            'CMD ["--config.file=/etc/alertmanager/alertmanager.yml", '
            '"--storage.path=/alertmanager"]\n'
        ),
    },
}


# Run by the image's Python: every distribution installed, and what a lock's markers ask of it.
INSTALLED = """
import importlib.metadata, json, os, platform, sys
print(json.dumps({
    "installed": [[d.metadata["Name"], d.version] for d in importlib.metadata.distributions()],
    "environment": {
        "python_full_version": platform.python_version(),
        "python_version": ".".join(platform.python_version_tuple()[:2]),
        "implementation_name": sys.implementation.name,
        "platform_python_implementation": platform.python_implementation(),
        "platform_machine": platform.machine(), "platform_system": platform.system(),
        "sys_platform": sys.platform, "os_name": os.name,
    },
}))
"""


def dockerfile() -> str:
    return (ROOT / "deploy" / "Dockerfile").read_text()


def image_labels(image: str) -> dict[str, str] | None:
    """The image's labels; None when it is not here."""
    result = run("docker", "image", "inspect", "-f", "{{json .Config.Labels}}", image, check=False)
    if result.returncode != 0:
        return None
    return json.loads(result.stdout) or {}


def wait_healthy(container: str, timeout: float) -> None:
    def healthy() -> bool:
        state = json.loads(docker("inspect", "-f", "{{json .State}}", container))
        if not state["Running"]:
            logs = run("docker", "logs", "--tail", "5", container, check=False)
            raise Fatal(f"{container} exited {state['ExitCode']}: {tail(logs, 5)}")
        health = state.get("Health") or {}
        if health.get("Status") == "unhealthy":
            output = str(health.get("Log", [{}])[-1].get("Output")).strip().splitlines()[-1:]
            raise Fatal(f"{container} unhealthy: {output}")
        return bool(health.get("Status") == "healthy")

    try:
        wait_until(f"{container} healthy", healthy, timeout, 0.5)
    except Fatal:
        raise
    except Failed as exc:
        logs = run("docker", "logs", "--tail", "5", container, check=False)
        raise Failed(f"{exc}; its log: {tail(logs, 5)}") from None


def process_uids(container: str) -> list[str]:
    lines = docker("top", container, "-o", "pid,uid").splitlines()[1:]
    return [line.split()[1] for line in lines if line.strip()]


def apt_install(packages: list[str], quiet: bool = False) -> None:
    if not quiet:
        say(f"installing {' '.join(packages)} from Debian's packages")
    # without the test run's marker: a service a package starts is the machine's, not ours
    env = {k: v for k, v in os.environ.items() if k != "NG_TEST_RUN"}
    env["DEBIAN_FRONTEND"] = "noninteractive"
    run("apt-get", "update", "-qq", env=env, timeout=600)
    run(
        "apt-get",
        "install",
        "-y",
        "-qq",
        "--no-install-recommends",
        *packages,
        env=env,
        timeout=1200,
    )


def debian_mirror() -> str:
    """The Debian archive this machine's apt uses (deb.debian.org if none is named)."""
    texts = [p.read_text() for p in apt_source_files()]
    for text in texts:
        for uri in re.findall(r"^\s*(?:deb\s+(?:\[[^]]*\]\s+)?|URIs:\s*)(\S+)", text, re.M):
            if re.search(r"/debian/?$", uri):
                return str(uri)
    return "http://deb.debian.org/debian"


def apt_source_files() -> list[Path]:
    paths = [Path("/etc/apt/sources.list")]
    paths += sorted(Path("/etc/apt/sources.list.d").glob("*.list"))
    paths += sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    return [p for p in paths if p.is_file()]


def configure_stand_in(rootfs: Path) -> None:
    """Make the debootstrapped tree behave like python:3.11-slim, on this machine's network:
    its apt sources, CA certificates and pip settings; pip allowed outside a virtualenv."""
    apt = rootfs / "etc/apt"
    if apt_source_files():
        (apt / "sources.list").unlink(missing_ok=True)  # the machine's say where, instead
    for source in apt_source_files():
        text = source.read_text()
        keyrings = re.findall(r"(?:Signed-By:\s*|signed-by=)(/\S+?)(?:\]|\s|$)", text)
        if all((rootfs / keyring.lstrip("/")).exists() for keyring in keyrings):
            shutil.copy(source, apt / source.relative_to("/etc/apt"))
    for conf in Path("/etc/apt/apt.conf.d").glob("*"):
        if conf.is_file() and re.search(r"Acquire::", conf.read_text(errors="replace")):
            shutil.copy(conf, apt / "apt.conf.d" / conf.name)
    bundle = Path(ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt")
    if bundle.is_file():
        shutil.copy(bundle, rootfs / "etc/ssl/certs/ca-certificates.crt")
    local_cas = Path("/usr/local/share/ca-certificates")
    if local_cas.is_dir():
        shutil.copytree(local_cas, rootfs / local_cas.relative_to("/"), dirs_exist_ok=True)
    if Path("/etc/xdg/pip").is_dir():
        shutil.copytree("/etc/xdg/pip", rootfs / "etc/xdg/pip", dirs_exist_ok=True)
    pip = configparser.RawConfigParser()
    pip.read(["/etc/pip.conf"])
    if not pip.has_section("global"):
        pip.add_section("global")
    for name, value in os.environ.items():
        if not name.startswith("PIP_"):
            continue
        key = name[4:].lower().replace("_", "-")
        paths = [v for v in value.split() if v.startswith(("/", "file://"))]
        if all((rootfs / v.removeprefix("file://").lstrip("/")).exists() for v in paths):
            pip.set("global", key, value)  # host paths that exist in the tree too, or none
    with (rootfs / "etc/pip.conf").open("w") as out:
        pip.write(out)
    for marker in rootfs.glob("usr/lib/python3*/EXTERNALLY-MANAGED"):
        marker.unlink()
    for waste in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man"):
        for path in (rootfs / waste).glob("*"):
            if (path.is_symlink() or path.is_file()) and path.name != "lock":
                path.unlink()
            elif path.is_dir() and path.name != "partial":
                shutil.rmtree(path)


def remove_stale() -> list[str]:
    """Containers, networks and volumes of an earlier run that was killed before its clean-up
    (every run removes its own): what was removed."""
    removed = []
    project = '{{.Label "com.docker.compose.project"}}'
    for kind, listing, remove in (
        ("container", ["ps", "-a", "--format", f"{{{{.ID}}}} {project}"], ["rm", "-f", "-v"]),
        ("network", ["network", "ls", "--format", f"{{{{.ID}}}} {project}"], ["network", "rm"]),
        ("volume", ["volume", "ls", "--format", f"{{{{.Name}}}} {project}"], ["volume", "rm"]),
    ):
        ours = docker(*listing[:-2], "--filter", f"label={LABEL}", "-q", check=False).split()
        for line in docker(*listing, check=False).splitlines():
            name, _, owner = line.partition(" ")
            if owner.startswith(PREFIX):
                ours.append(name)
        for item in dict.fromkeys(ours):
            docker(*remove, item, check=False)
            removed.append(f"{kind} {item[:12]}")
    return removed


def bridge_address() -> str:
    """The host's address on Docker's default bridge: containers reach the fakes there. The
    network's IPAM gateway when the engine reports one (some versions leave it empty for the
    default bridge), else the IPv4 address of the bridge's own interface (docker0)."""
    address = docker("network", "inspect", "bridge", "-f", "{{(index .IPAM.Config 0).Gateway}}")
    if re.fullmatch(r"[0-9.]+", address):
        return address
    name = docker("network", "inspect", "bridge", "-f",
                  '{{index .Options "com.docker.network.bridge.name"}}') or "docker0"  # fmt: skip
    shown = run("ip", "-4", "-o", "addr", "show", "dev", name, check=False).stdout
    found = re.search(r"inet ([0-9.]+)/", shown)
    if found is None:
        raise Failed(f"no IPv4 gateway on Docker's bridge network ({address!r}, {name}: {shown!r})")
    return found[1]


def main() -> int:
    check = Check()

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    start, skipped = time.monotonic(), False
    try:
        reason = check.prepare_engine()
        if reason is not None:
            say(f"skipped: no container engine can run on this machine: {reason}")
            skipped = True
            return 0
        installed = f"installed {' '.join(check.installed)}; " if check.installed else ""
        started = "dockerd started" if check.dockerd else "already running"
        say(f"ok   container engine ({installed}{started}, {time.monotonic() - start:.1f} s)")
        stale = remove_stale()
        if stale:
            say(f"ok   removed what an interrupted earlier run left: {', '.join(stale)}")
        roles: dict[str, str] = {}
        bridge = ""

        def prepare() -> None:
            nonlocal bridge
            roles.update(check.images())
            check.build(roles)
            with check.step("Docker's bridge address, for the fake Nomic"):
                bridge = bridge_address()

        if check.group("the images", prepare):
            check.group("", lambda: check.check_context(roles))
            check.group("", lambda: check.check_image(roles))
            check.group("", check.check_locked)
            check.group("", lambda: check.check_layers(roles))
            check.group("docker run", lambda: check.images_run(bridge))
            check.group("the Kubernetes-style run", lambda: check.kubernetes_run(roles, bridge))
            check.group("Compose", lambda: check.compose_run(roles, bridge))
    finally:
        if skipped:
            check.clean_up()
        else:
            with contextlib.suppress(GroupStopped), check.step("remove all the check started"):
                left = check.clean_up()
                if left:
                    raise Failed(f"still there: {', '.join(left)}")
    total = time.monotonic() - start
    if check.failed:
        say(f"FAILED ({len(check.failed)} of its steps) in {total:.0f} s")
        return 1
    say(f"passed in {total:.0f} s")
    return 0


# -- leftovers -------------------------------------------------------------------------------

SUITE_PROGRAMS = re.compile(
    r"nomic-gateway|gateway serve|-m gateway|fake_nomic|redis-server|prometheus|"
    r"alertmanager|(^|/)wrk\b"
)


def leftovers() -> int:
    marker = os.environ.get("NG_TEST_RUN", "")
    if not marker:
        print("leftovers: NG_TEST_RUN is not set (scripts/test.sh sets it)", file=sys.stderr)
        return 2
    started = float(marker.rsplit("-", 1)[-1])
    mine = {os.getpid()}
    pid = os.getpid()
    while pid > 1:  # this process and those it runs under (scripts/test.sh)
        pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        mine.add(pid)
    boot = time.time() - float(Path("/proc/uptime").read_text().split()[0])
    ticks = os.sysconf("SC_CLK_TCK")
    found: list[str] = []
    environments: dict[int, bytes] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        try:
            environ = (entry / "environ").read_bytes()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        environments[int(entry.name)] = environ
        if not command:
            continue  # a kernel thread, or a zombie
        carries = f"NG_TEST_RUN={marker}".encode() in environ.split(b"\0")
        orphaned_during_run = (
            stat[1] == "1"
            and boot + int(stat[19]) / ticks >= started
            and SUITE_PROGRAMS.search(command) is not None
        )
        if carries or orphaned_during_run:
            found.append(f"process {entry.name}: {command[:160]}")
    if engine_answers():
        listing = docker(
            "ps",
            "-a",
            "--format",
            "{{.Names}} {{.Image}} {{.Status}}",
            "--filter",
            f"label={LABEL}",
            check=False,
        )
        found += [f"container {line}" for line in listing.splitlines()]
        projects = docker(
            "ps",
            "-a",
            "--format",
            '{{.Label "com.docker.compose.project"}} {{.Names}}',
            check=False,
        )
        found += [
            f"compose container {line}" for line in projects.splitlines() if line.startswith(PREFIX)
        ]
    in_use = b"\0".join(environments.values())
    for folder in Path(tempfile.gettempdir()).glob("nomic-gateway-metrics-*"):
        with contextlib.suppress(OSError):
            if folder.stat().st_ctime >= started and str(folder).encode() not in in_use:
                found.append(f"metrics folder {folder}")
    for line in found:
        print(f"left running after the tests: {line}")
    if not found:
        print("leftovers: none (processes, containers, metrics folders)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(leftovers() if sys.argv[1:] == ["leftovers"] else main())
