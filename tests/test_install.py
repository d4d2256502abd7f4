"""Installs from the lock: scripts/install.sh, what it leaves in a venv, and uv.lock itself.

Two installs started at the same moment (`make serve` and `make test` on a fresh clone)
into one fresh venv, with one fresh tools folder: both succeed, and the venv holds exactly
the locked versions. uv's cache makes this take seconds once `make test` has installed.
The installs take turns on the repository's .install.lock, so they also wait for any
other install running in this work tree.

The lock must match pyproject.toml: `uv lock --check` passes here, and fails on a copy
whose pyproject.toml was changed without re-locking.

`locked_versions` and `INSPECT` also serve tests/test_deploy.py (the image's packages).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from packaging.markers import Marker
from packaging.utils import canonicalize_name
from packaging.version import Version

from conftest import ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest's own dependency on Python 3.10
    import tomli as tomllib

INSTALL = ROOT / "scripts" / "install.sh"
LOCK = ROOT / "uv.lock"

# Run by a venv's python (`python -I -c INSPECT`, in a container too): its marker
# environment (PEP 508) and every distribution installed in it (in its site-packages, not
# the egg-info an editable install's source folder has), as JSON.
INSPECT = """
import importlib.metadata, json, os, platform, sys, sysconfig
v = sys.implementation.version
environment = {
    "implementation_name": sys.implementation.name,
    "implementation_version": f"{v.major}.{v.minor}.{v.micro}",
    "os_name": os.name,
    "platform_machine": platform.machine(),
    "platform_python_implementation": platform.python_implementation(),
    "platform_release": platform.release(),
    "platform_system": platform.system(),
    "platform_version": platform.version(),
    "python_full_version": platform.python_version(),
    "python_version": ".".join(platform.python_version_tuple()[:2]),
    "sys_platform": sys.platform,
}
site = sorted({sysconfig.get_path("purelib"), sysconfig.get_path("platlib")})
found = importlib.metadata.distributions(path=site)
installed = [(d.metadata["Name"], d.version) for d in found]
print(json.dumps({"environment": environment, "installed": installed}))
"""


def uv_version() -> str:
    """The uv scripts/install.sh pins."""
    found = re.search(r"^UV_VERSION=(\S+)$", INSTALL.read_text(), re.MULTILINE)
    assert found, "no UV_VERSION= line in scripts/install.sh"
    return found[1]


def locked_versions(extras: Iterable[str], environment: dict[str, str]) -> dict[str, Version]:
    """What uv.lock installs for servekit[extras] on the given marker environment: servekit
    and every dependency, each at its locked version (the lock forks some by Python)."""
    lock = tomllib.loads(LOCK.read_text())
    packages: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)
    for package in lock["package"]:
        packages[package["name"]].append(package)
    versions: dict[str, Version] = {}
    done: set[tuple[str, str]] = set()  # (package, "" for its dependencies, or an extra)
    todo: list[tuple[str, str | None, tuple[str, ...]]] = [("servekit", None, ("", *extras))]
    while todo:
        name, version, parts = todo.pop()
        (package,) = [p for p in packages[name] if version in (None, p["version"])]
        versions[name] = Version(package["version"])
        for part in parts:
            if (name, part) in done:
                continue
            done.add((name, part))
            if part:
                deps = package.get("optional-dependencies", {})[part]
            else:
                deps = package.get("dependencies", [])
            for dep in deps:
                if "marker" not in dep or Marker(dep["marker"]).evaluate(environment):
                    todo.append((dep["name"], dep.get("version"), ("", *dep.get("extra", []))))
    return versions


def installed_versions(inspected: dict[str, Any]) -> dict[str, Version]:
    """INSPECT's distributions by normalised name; two copies of one is a broken venv."""
    names = [canonicalize_name(name) for name, _ in inspected["installed"]]
    twice = [name for name, n in Counter(names).items() if n > 1]
    assert not twice, f"installed more than once: {twice}"
    return {canonicalize_name(name): Version(v) for name, v in inspected["installed"]}


# -- two installs at once ---------------------------------------------------------------


@dataclass
class Installs:
    venv: Path
    tools: Path
    results: dict[str, tuple[int, str]]  # command -> (exit code, output)


@pytest.fixture(scope="module")
def installs(tmp_path_factory: pytest.TempPathFactory) -> Installs:
    """`make serve`'s and `make test`'s installs, started together into one fresh venv
    with one fresh tools folder (so both also race to bootstrap uv)."""
    tmp = tmp_path_factory.mktemp("install")
    venv, tools = tmp / "venv", tmp / "tools"
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV" and not k.startswith("UV_")}
    env.update(VENV=str(venv), TOOLS=str(tools))
    commands = ([str(INSTALL)], [str(INSTALL), "dev", "optimize"])
    started = time.monotonic()
    procs = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for cmd in commands
    ]
    results = {}
    for cmd, proc in zip(commands, procs, strict=True):
        out, _ = proc.communicate(timeout=600)
        results[" ".join(cmd)] = (proc.returncode, out)
    print(f"\ntwo installs at once into a fresh venv: {time.monotonic() - started:.1f} s")
    return Installs(venv, tools, results)


@pytest.mark.timeout(900)
def test_two_installs_at_once_leave_exactly_the_locked_versions(installs: Installs) -> None:
    for cmd, (code, out) in installs.results.items():
        assert code == 0, f"{cmd} exited {code}:\n{out}"
    uv = installs.tools / "bin" / "uv"
    done = subprocess.run([uv, "--version"], capture_output=True, text=True, check=True)
    assert done.stdout.split()[:2] == ["uv", uv_version()], done.stdout  # "uv X (target)"

    python = installs.venv / "bin" / "python"
    inspected = json.loads(
        subprocess.run(
            [python, "-I", "-c", INSPECT], capture_output=True, text=True, check=True
        ).stdout
    )
    installed = installed_versions(inspected)
    # The serve install keeps what the test install added (both are "inexact").
    locked = locked_versions(["dev", "optimize"], inspected["environment"])
    assert installed == locked, {
        "not locked": sorted(installed.keys() - locked.keys()),
        "missing": sorted(locked.keys() - installed.keys()),
        "other version": {
            n: (str(v), str(locked[n])) for n, v in installed.items() if locked.get(n) not in (v,)
        },
    }

    # It works: servekit imports, FastAPI is the locked one (by its own __version__).
    done = subprocess.run(
        [python, "-c", "import fastapi, servekit.cli; print(fastapi.__version__)"],
        capture_output=True,
        text=True,
        cwd=installs.venv,
    )
    assert done.returncode == 0, done.stderr
    assert Version(done.stdout.strip()) == locked["fastapi"]
    done = subprocess.run(
        [installs.venv / "bin" / "servekit", "--version"], capture_output=True, text=True
    )
    assert done.stdout.strip() == f"servekit {locked['servekit']}", done.stdout + done.stderr
    done = subprocess.run([uv, "pip", "check", "--python", python], capture_output=True, text=True)
    # The one requirement pyproject's [tool.uv] overrides: tensorflow-cpu provides the
    # `tensorflow` module that tensorflow-serving-api's dependency on `tensorflow` is for.
    overridden = "`tensorflow-serving-api` requires `tensorflow>=2.21.0,<3`"
    problems = [
        line
        for line in done.stdout.splitlines()
        if line.startswith("The package") and overridden not in line
    ]
    assert problems == [], done.stdout + done.stderr


# -- the lock matches pyproject.toml ------------------------------------------------------


def lock_check(uv: Path, project: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("UV_")}
    env["UV_PYTHON_DOWNLOADS"] = "never"
    return subprocess.run(
        [uv, "lock", "--check"], cwd=project, env=env, capture_output=True, text=True, timeout=300
    )


def test_the_lock_matches_pyproject_and_a_changed_pyproject_is_caught(
    installs: Installs, tmp_path: Path
) -> None:
    uv = installs.tools / "bin" / "uv"
    done = lock_check(uv, ROOT)
    assert done.returncode == 0, f"uv.lock is stale: run `make lock`\n{done.stderr}"

    # A copy of the project, with a dependency's range changed and no re-lock.
    for name in ("pyproject.toml", "uv.lock"):
        shutil.copy(ROOT / name, tmp_path / name)
    assert lock_check(uv, tmp_path).returncode == 0  # the copy alone is fine
    pyproject = tmp_path / "pyproject.toml"
    text = pyproject.read_text()
    edited = re.sub(r'"fastapi>=([\d.]+)"', r'"fastapi>=\1,<0.116"', text)
    assert edited != text
    pyproject.write_text(edited)
    done = lock_check(uv, tmp_path)
    assert done.returncode != 0, done.stderr
    assert "needs to be updated" in done.stderr, done.stderr
    assert (tmp_path / "uv.lock").read_bytes() == LOCK.read_bytes()  # --check writes nothing
