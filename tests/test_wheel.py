"""The wheel and the sdist: built from this work tree, installed into a clean venv, served.

servekit is not on a package index: users install it from this repository (``pip install
'.[onnx]'``) or from a wheel built here. ``uv build`` (the uv that scripts/install.sh pins)
builds the sdist, then the wheel from the unpacked sdist, so a file the sdist leaves out
is missing from the wheel too. The wheel must carry every file of the package (the
Swagger UI and ReDoc assets, the demo model, the gRPC stubs), and a venv that has
nothing but the wheel and its dependencies (the versions uv.lock pins, from PyPI or uv's
cache) must serve: a real server process, one inference, and /docs with its assets.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import ROOT, ServerProcess

UV = ROOT / ".tools" / "bin" / "uv"
VERSION = "0.1.0"
PACKAGE = ROOT / "src" / "servekit"
# Built, then installed from uv's cache: seconds once `make test` has installed.
pytestmark = pytest.mark.timeout(180)


def uv(*args: str, cwd: Path) -> str:
    done = subprocess.run(
        [str(UV), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=170,
        env={
            **{
                k: v
                for k, v in os.environ.items()
                if k not in ("VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT")
            },
            "UV_PYTHON_DOWNLOADS": "never",
        },
    )
    assert done.returncode == 0, f"uv {' '.join(args)}:\n{done.stdout}{done.stderr}"
    return done.stdout


# The sources of the committed TF Serving stubs (scripts/make_grpc_stubs.py): not needed
# to serve, so not shipped.
NOT_SHIPPED = {"servekit/grpc/tfs/tfserving.proto", "servekit/grpc/tfs/README.md"}


def package_files() -> set[str]:
    """Every file of the package in this work tree, as the wheel names it."""
    return {
        str(p.relative_to(PACKAGE.parent))
        for p in PACKAGE.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    } - NOT_SHIPPED


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sdist and wheel of a copy of this work tree (a build writes egg-info and build/
    next to the sources: not into the repository)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    shutil.copytree(
        ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    out = tmp / "dist"
    uv("build", "--out-dir", str(out), cwd=source)
    return out


def test_the_sdist_and_the_wheel_hold_every_file_of_the_package(dist: Path) -> None:
    wheel = dist / f"servekit-{VERSION}-py3-none-any.whl"
    sdist = dist / f"servekit-{VERSION}.tar.gz"
    assert sorted(p.name for p in dist.glob("servekit-*")) == [wheel.name, sdist.name]
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        entry_points = z.read(f"servekit-{VERSION}.dist-info/entry_points.txt").decode()
    with tarfile.open(sdist) as t:
        in_sdist = {n.removeprefix(f"servekit-{VERSION}/src/") for n in t.getnames()}
    files = package_files()
    assert files - names == set(), "in the work tree, not in the wheel"
    assert files - in_sdist == set(), "in the work tree, not in the sdist"
    for must in (
        "servekit/server/static/swagger-ui/swagger-ui-bundle.js",
        "servekit/server/static/swagger-ui/swagger-ui.css",
        "servekit/server/static/redoc/redoc.standalone.js",
        "servekit/server/static/SOURCES.json",
        "servekit/demo/digits.tflite",
        "servekit/demo/sample_request.json",
        "servekit/grpc/tfs/__init__.py",
    ):
        assert must in names, must
    assert "servekit = servekit.cli:main" in entry_points
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "deploy/"))]


@pytest.fixture(scope="module")
def venv(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh venv with the wheel and the dependencies uv.lock pins, nothing else."""
    tmp = tmp_path_factory.mktemp("venv")
    requirements = tmp / "requirements.txt"  # as the README says
    uv("export", "--frozen", "--no-emit-project", "--quiet", "-o", str(requirements), cwd=ROOT)
    env = tmp / "venv"
    python = ROOT / ".venv" / "bin" / "python"
    uv("venv", "--quiet", "--python", str(python), str(env), cwd=tmp)
    wheel = dist / f"servekit-{VERSION}-py3-none-any.whl"
    uv(
        "pip", "install", "--quiet", "--python", str(env / "bin" / "python"),
        "-r", str(requirements), str(wheel), cwd=tmp,
    )  # fmt: skip
    yield env


def test_the_wheel_installs_and_serves_in_a_clean_venv(venv: Path, tmp_path: Path) -> None:
    # The package comes from the venv, not from this repository's src/.
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-I", "-c", "import servekit; print(servekit.__file__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert where.startswith(str(venv)), where
    frozen = subprocess.run(
        [str(UV), "pip", "freeze", "--python", str(venv / "bin" / "python")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    installed = {line.split("==")[0].split(" @ ")[0] for line in frozen.splitlines()}
    assert "servekit" in installed and "ai-edge-litert" in installed, frozen
    assert not installed & {"pytest", "tensorflow-cpu", "onnxruntime"}  # no extra

    server = ServerProcess(name="wheel", command=[str(venv / "bin" / "servekit"), "serve"])
    try:
        server.wait_ready()
        sample = (PACKAGE / "demo" / "sample_request.json").read_bytes()
        r = httpx.post(f"{server.url}/v1/models/digits:predict", content=sample, timeout=10)
        assert r.status_code == 200, r.text
        rows = r.json()["predictions"]
        assert [max(range(10), key=row.__getitem__) for row in rows] == [7, 6]
        docs = httpx.get(f"{server.url}/docs", timeout=10)
        assert docs.status_code == 200
        for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
            assert asset in docs.text
            url = next(
                part.split('"')[0] for part in docs.text.split('"/') if asset in part.split('"')[0]
            )
            got = httpx.get(f"{server.url}/{url}", timeout=10)
            assert got.status_code == 200 and len(got.content) > 10_000, url
    finally:
        assert server.stop() == 0, server.log()
