"""servekit on arm64 (aarch64: Raspberry Pi 4/5 class boards), run here under QEMU user
emulation, answering as on x86-64.

Two forms, both marked `arm64`:

- The smoke form runs in every `make test` (53 s from nothing at load 2, up to 2.5
  minutes at load 10 and more; 2026-12-07, 2 cores): Debian bookworm's arm64 python3, unpacked
  (not configured) into a tree kept in ~/.cache/servekit (scripts/base_image.py's
  python_tree); a venv in it with servekit and the aarch64 wheels of uv.lock's serving
  dependencies, installed by uv from the lock with their hashes; a real servekit in a
  chroot of that tree with configs/edge.yaml, serving the demo model and a conv net on
  127.0.0.1. Its answers over v1 (JSON) and V2 binary equal ai-edge-litert's on x86-64
  within float tolerance, and SIGTERM drains it.
- The image form runs with `make test-arm64` (SERVEKIT_TEST_ARM64_IMAGE=1): the arm64
  image built from deploy/docker/Dockerfile by scripts/build_arm64.sh (here the base
  about 3.5 minutes and the image about 6 the first time, 4-5 after a source change),
  run with a mounted model folder and configs/edge.yaml: the same answers, ONNX
  Runtime's too, /metrics, a poll-mode update, and `docker stop` drains it and it exits
  0 as on amd64. Its RSS is printed.

QEMU runs as a Raspberry Pi 4's CPU (scripts/base_image.py's BOARD_ENV). It (Debian's
qemu-user-static, registered with binfmt_misc) is set up when missing, as root, like the
Docker tests install their tools.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

import servekit
from conftest import DEMO, REPO, ROOT, ServerProcess, digits_rows, free_port
from test_deploy import (
    ONNX_DIGITS,
    Container,
    Docker,
    apt_install,
    assert_drained_exit,
    onnx_reference,
    reference,
)
from test_deploy import (
    docker as docker,  # the fixture: a Docker engine, started when none runs
)
from test_install import INSPECT, installed_versions, locked_versions

sys.path.insert(0, str(ROOT / "scripts"))
import base_image  # scripts/base_image.py

pytestmark = pytest.mark.arm64

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "servekit"
# Bump when python_tree() changes what it makes.
TREE = CACHE / "arm64-python-tree-bookworm-1"
UV = ROOT / ".tools" / "bin" / "uv"
CNN = REPO / "digits_cnn" / "1" / "model.tflite"
EDGE_CONFIG = ROOT / "configs" / "edge.yaml"
ELF_MACHINE_AARCH64 = 183  # e_machine in the ELF header
CHROOT = shutil.which("chroot") or "/usr/sbin/chroot"
FULL = os.environ.get("SERVEKIT_TEST_ARM64_IMAGE") == "1"
ARM64_IMAGE = os.environ.get("SERVEKIT_ARM64_IMAGE_TAG", "servekit:arm64")


def elf_machine(path: Path) -> int:
    header = path.read_bytes()[:20]
    assert header[:4] == b"\x7fELF", path
    return int.from_bytes(header[18:20], "little")


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("the arm64 tests need root (chroot, binfmt_misc, apt-get)")


@pytest.fixture(scope="session")
def arm64_tree() -> Path:
    """Debian's arm64 python3 in a folder, made once and kept (made aside, then renamed:
    two test runs at once do not see half a tree)."""
    need_root()
    base_image.ensure_emulation("arm64")
    if not (TREE / "usr" / "bin" / "python3").exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix="arm64-tree-", dir=CACHE))
        try:
            base_image.python_tree("arm64", tmp / "tree", base_image.debian_mirror())
            if not TREE.exists():
                (tmp / "tree").rename(TREE)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    assert elf_machine((TREE / "usr" / "bin" / "python3").resolve()) == ELF_MACHINE_AARCH64
    return TREE


@pytest.fixture(scope="module")
def arm64_venv(arm64_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A venv inside the tree with servekit from this checkout and uv.lock's serving
    dependencies for aarch64 (uv downloads the aarch64 wheels; the lock's hashes are
    checked). Its path as seen inside the chroot."""
    assert UV.is_file(), "no .tools/bin/uv: run scripts/install.sh (make test does)"
    inside = f"/opt/servekit-{uuid.uuid4().hex[:8]}"
    venv = arm64_tree / inside.lstrip("/")
    subprocess.run(
        [CHROOT, str(arm64_tree), "/usr/bin/python3", "-m", "venv", "--without-pip", inside],
        check=True,
        timeout=300,
    )
    requirements = tmp_path_factory.mktemp("arm64") / "requirements.txt"
    uv = [str(UV), "--directory", str(ROOT)]
    subprocess.run(
        [
            *uv,
            *("export", "--locked", "--offline", "--no-dev", "--no-emit-project", "--quiet"),
            *("--format", "requirements.txt", "--output-file", str(requirements)),
        ],
        check=True,
        timeout=120,
    )
    # The venv's site-packages as a target: uv cannot run the arm64 python it would ask
    # (its symlink points into the chroot). Bytecode compiled by this 3.11 serves that
    # 3.11 (.pyc files do not depend on the CPU).
    target = venv / "lib" / "python3.11" / "site-packages"
    install = [
        *uv,
        "pip",
        "install",
        "--quiet",
        "--target",
        str(target),
        "--python-platform",
        "aarch64-manylinux_2_36",  # Debian bookworm's glibc
        "--python-version",
        "3.11",
        "--compile-bytecode",
    ]
    subprocess.run(
        [
            *install,
            "--only-binary",
            ":all:",
            "--require-hashes",
            "--requirements",
            str(requirements),
        ],
        check=True,
        timeout=600,
    )
    subprocess.run([*install, "--no-deps", str(ROOT)], check=True, timeout=300)
    yield inside
    shutil.rmtree(venv, ignore_errors=True)


def chroot(tree: Path, venv: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CHROOT, str(tree), f"{venv}/bin/python", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", **base_image.BOARD_ENV},
    )


def test_inspect_names_the_runtime_its_version_and_the_machine() -> None:
    """On x86-64, in this venv: the same command says aarch64 in the arm64 tree."""
    import importlib.metadata

    done = subprocess.run(
        [sys.executable, "-m", "servekit", "inspect", str(DEMO / "digits.tflite"), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["runtime"] == f"ai-edge-litert {importlib.metadata.version('ai-edge-litert')}"
    assert info["machine"] == "x86_64"


def test_arm64_venv_holds_exactly_the_locked_versions(arm64_tree: Path, arm64_venv: str) -> None:
    """uv.lock covers aarch64: every serving dependency has an aarch64 wheel at the
    locked version, ai-edge-litert included (it publishes manylinux_2_27_aarch64 wheels
    since 2.0), and `servekit inspect` there says so."""
    done = chroot(arm64_tree, arm64_venv, "-I", "-c", INSPECT)
    assert done.returncode == 0, done.stderr
    inspected = json.loads(done.stdout)
    assert inspected["environment"]["platform_machine"] == "aarch64"
    locked = locked_versions((), inspected["environment"])
    assert installed_versions(inspected) == locked

    shutil.copy(DEMO / "digits.tflite", arm64_tree / "tmp" / "digits.tflite")
    done = chroot(
        arm64_tree, arm64_venv, "-m", "servekit", "inspect", "/tmp/digits.tflite", "--json"
    )
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["machine"] == "aarch64"
    assert info["runtime"] == f"ai-edge-litert {locked['ai-edge-litert']}"
    assert [i["name"] for i in info["inputs"]] == ["pixels"]


def model_repository(folder: Path) -> Path:
    """The demo model (dense) and the conv net, one version each, readable by anyone
    (the image runs as uid 10001)."""
    for name, model in (("digits", DEMO / "digits.tflite"), ("digits_cnn", CNN)):
        (folder / name / "1").mkdir(parents=True)
        shutil.copy(model, folder / name / "1" / "model.tflite")
    for p in [folder, *folder.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    return folder


def assert_answers_as_on_x86(url: str) -> None:
    """v1 JSON and V2 binary (Triton's HTTP client) on both models, against ai-edge-litert
    run here on x86-64."""
    import tritonclient.http as triton

    meta = httpx.get(f"{url}/v1/models/digits/metadata", timeout=30).json()
    assert meta["servekit"]["runtime"].startswith("ai-edge-litert"), meta

    x = digits_rows(16, 40)
    want = reference(DEMO / "digits.tflite", {"pixels": x})["probabilities"]
    r = httpx.post(f"{url}/v1/models/digits:predict", json={"instances": x.tolist()}, timeout=120)
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json()["predictions"], want, rtol=1e-5, atol=1e-6)

    images = x[:8].reshape(8, 8, 8, 1)
    cnn = reference(CNN, {"image": images})["probabilities"]
    r = httpx.post(
        f"{url}/v1/models/digits_cnn:predict", json={"instances": images.tolist()}, timeout=120
    )
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json()["predictions"], cnn, rtol=1e-5, atol=1e-6)

    client = triton.InferenceServerClient(url.removeprefix("http://"), network_timeout=120)
    try:
        for model, name, rows, expected in (
            ("digits", "pixels", x, want),
            ("digits_cnn", "image", images, cnn),
        ):
            inp = triton.InferInput(name, list(rows.shape), "FP32")
            inp.set_data_from_numpy(rows, binary_data=True)
            out = triton.InferRequestedOutput("probabilities", binary_data=True)
            result = client.infer(model, [inp], outputs=[out])
            np.testing.assert_allclose(
                result.as_numpy("probabilities"), expected, rtol=1e-5, atol=1e-6
            )
    finally:
        client.close()


@pytest.mark.timeout(900)
def test_arm64_servekit_answers_as_on_x86_and_drains(arm64_tree: Path, arm64_venv: str) -> None:
    repo = model_repository(arm64_tree / "tmp" / f"repo-{uuid.uuid4().hex[:8]}")
    shutil.copy(EDGE_CONFIG, repo / "edge.yaml")  # not a model: no version folder
    started = time.monotonic()
    server = ServerProcess(
        f"/{repo.relative_to(arm64_tree)}",
        "--config",
        f"/{repo.relative_to(arm64_tree)}/edge.yaml",
        name="arm64",
        env=base_image.BOARD_ENV,  # QEMU as a Raspberry Pi 4's CPU
        command=(CHROOT, str(arm64_tree), f"{arm64_venv}/bin/python", "-m", "servekit", "serve"),
    )
    try:
        server.wait_ready(timeout=300)
        ready_s = time.monotonic() - started
        assert_answers_as_on_x86(server.url)
    finally:
        code = server.stop(timeout=60)
        shutil.rmtree(repo, ignore_errors=True)
    log = server.log()
    assert code == 0, log
    assert "Application shutdown complete." in log and "Traceback" not in log, log
    print(f"\narm64 servekit under QEMU ready in {ready_s:.0f} s")


# -- the image form (make test-arm64) ---------------------------------------------------


def vm_rss_mb(docker: Docker, container: str) -> tuple[float, float]:
    """PID 1's resident memory and its peak, in MB (under QEMU: the emulator's too)."""
    status = docker("exec", container, "cat", "/proc/1/status").stdout
    fields = {line.split(":")[0]: line.split()[1] for line in status.splitlines() if "kB" in line}
    return int(fields["VmRSS"]) / 1024, int(fields["VmHWM"]) / 1024


def run_build_script(name: str, docker: Docker, **env: str) -> None:
    """``scripts/<name>`` with docker's environment and ``env``; its output if it fails."""
    done = subprocess.run(
        [str(ROOT / "scripts" / name)],
        capture_output=True,
        text=True,
        timeout=3600,
        env={**docker.env, **env},
        cwd=ROOT,
    )
    assert done.returncode == 0, f"{done.stdout[-5000:]}\n{done.stderr[-5000:]}"


@pytest.fixture(scope="module")
def arm64_image(docker: Docker) -> str:
    need_root()
    started = time.monotonic()
    run_build_script("build_arm64.sh", docker, TAG=ARM64_IMAGE)
    arch = docker("image", "inspect", "--format", "{{.Os}}/{{.Architecture}}", ARM64_IMAGE)
    assert arch.stdout.strip() == "linux/arm64"
    size = int(docker("image", "inspect", "--format", "{{.Size}}", ARM64_IMAGE).stdout)
    print(f"\n{ARM64_IMAGE}: {size / 1e6:.0f} MB, built in {time.monotonic() - started:.0f} s")
    return ARM64_IMAGE


@pytest.mark.docker
@pytest.mark.timeout(3600)
@pytest.mark.skipif(not FULL, reason="the arm64 image: make test-arm64 (about 8 minutes)")
def test_arm64_image_answers_as_on_x86_and_stops_drained(
    docker: Docker, arm64_image: str, tmp_path: Path
) -> None:
    tmp_path.chmod(0o755)
    repo = model_repository(tmp_path / "models")
    # ONNX Runtime's digits model too: the image's second runtime, on arm64.
    (repo / "digits_onnx" / "1").mkdir(parents=True)
    shutil.copy(ONNX_DIGITS, repo / "digits_onnx" / "1" / "model.onnx")
    for p in [repo / "digits_onnx", *(repo / "digits_onnx").rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(base_image.BOARD_CPUINFO)
    cpuinfo.chmod(0o644)
    # As docs/edge.md runs it, on free ports of the host network.
    c = Container(
        docker,
        arm64_image,
        "--read-only",
        "--tmpfs",
        "/tmp",
        "--volume",
        f"{repo}:/models:ro",
        "--volume",
        f"{EDGE_CONFIG}:/etc/servekit/edge.yaml:ro",
        # Under QEMU only: a Raspberry Pi 4's CPU and /proc/cpuinfo (scripts/base_image.py).
        "--volume",
        f"{cpuinfo}:/proc/cpuinfo:ro",
        env=base_image.BOARD_ENV,
        command=("--config", "/etc/servekit/edge.yaml"),
    )
    c.wait_ready(timeout=600)
    assert docker("exec", c.name, "uname", "-m").stdout.strip() == "aarch64"
    assert_answers_as_on_x86(c.url)
    x = digits_rows(8, 60)
    want = onnx_reference(ONNX_DIGITS, {"pixels": x})["probabilities"]
    r = httpx.post(
        f"{c.url}/v1/models/digits_onnx:predict", json={"instances": x.tolist()}, timeout=120
    )
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json()["predictions"], want, rtol=1e-5, atol=1e-6)
    meta = httpx.get(f"{c.url}/v1/models/digits_onnx/metadata", timeout=30).json()
    assert meta["servekit"]["runtime"].startswith("onnxruntime "), meta

    metrics = httpx.get(f"{c.url}/metrics", timeout=30)
    assert metrics.status_code == 200 and "servekit_requests_total{" in metrics.text

    # An update as on the board (poll mode): version 2 written beside the repository and
    # moved in whole; served once loaded, version 1 then retired (version_policy latest).
    staging = tmp_path / "staging"
    staging.mkdir(mode=0o755)
    shutil.copy(DEMO / "digits.tflite", staging / "model.tflite")
    (staging / "model.tflite").chmod(0o644)
    staging.rename(repo / "digits" / "2")
    deadline = time.monotonic() + 300
    while httpx.get(f"{c.url}/v2/models/digits/versions/2/ready", timeout=30).status_code != 200:
        assert time.monotonic() < deadline, c.logs()
        time.sleep(1)
    x = digits_rows(4, 90)
    r = httpx.post(
        f"{c.url}/v2/models/digits/versions/2/infer", json=v2_json("pixels", x), timeout=120
    )
    assert r.status_code == 200, r.text
    (out,) = r.json()["outputs"]
    want = reference(DEMO / "digits.tflite", {"pixels": x})["probabilities"]
    np.testing.assert_allclose(np.reshape(out["data"], out["shape"]), want, rtol=1e-5, atol=1e-6)

    rss, peak = vm_rss_mb(docker, c.name)
    print(f"\narm64 image under QEMU, demo + conv net: RSS {rss:.0f} MB (peak {peak:.0f} MB)")
    assert_drained_exit(c)


def v2_json(name: str, x: np.ndarray) -> dict[str, object]:
    return {
        "inputs": [
            {"name": name, "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
        ]
    }


@pytest.fixture()
def local_registry(tmp_path: Path) -> Iterator[str]:
    """Debian's docker-registry (the distribution registry) on a free port of 127.0.0.1,
    storing in tmp_path: host:port."""
    if not shutil.which("docker-registry"):
        apt_install("docker-registry")
    port = free_port()
    config = tmp_path / "registry.yml"
    config.write_text(
        "version: 0.1\n"
        f"storage:\n  filesystem:\n    rootdirectory: {tmp_path / 'registry'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    with (tmp_path / "registry.log").open("wb") as log:
        registry = subprocess.Popen(
            ["docker-registry", "serve", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v2/", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "registry.log").read_text()
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        registry.terminate()
        registry.wait(30)


@pytest.mark.docker
@pytest.mark.timeout(3600)
@pytest.mark.skipif(not FULL, reason="the arm64 image: make test-arm64")
def test_one_name_holds_the_amd64_and_the_arm64_image(
    docker: Docker, arm64_image: str, local_registry: str
) -> None:
    """scripts/build_multiarch.sh: both platforms from the same Dockerfile under one name;
    a pull for each platform gets that platform's image."""
    run_build_script("build_multiarch.sh", docker, REGISTRY=local_registry)
    target = f"{local_registry}/servekit:{servekit.__version__}"
    manifest = json.loads(docker("manifest", "inspect", "--insecure", target).stdout)
    platforms = {
        (m["platform"]["os"], m["platform"]["architecture"]) for m in manifest["manifests"]
    }
    assert platforms == {("linux", "amd64"), ("linux", "arm64")}
    for arch in ("arm64", "amd64"):
        docker("rmi", f"{target}-{arch}", check=False)
        docker("pull", "--quiet", "--platform", f"linux/{arch}", target, timeout=600)
        assert docker.image_id(target) == docker.image_id(f"servekit:{arch}")
    docker("rmi", target, check=False)
