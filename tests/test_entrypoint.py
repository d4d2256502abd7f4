"""The image's entrypoint (deploy/docker/entrypoint.sh), run by a POSIX sh (dash, as
Debian's /bin/sh) on temporary folders, with a stand-in ``servekit`` that prints the
command it was given: what it serves with nothing mounted at /models, with a repository
there, and with a mounted volume that is empty (an error, not the demo model). The mount
table is the real one (a tmpfs mounted in a private mount namespace) where the machine
allows it, and a written one otherwise. tests/test_deploy.py runs the image itself.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import REPO, ROOT

ENTRYPOINT = ROOT / "deploy" / "docker" / "entrypoint.sh"
SH = shutil.which("dash") or "/bin/sh"


@pytest.fixture()
def fake_bin(tmp_path: Path) -> Path:
    """A ``servekit`` that prints its arguments instead of serving."""
    folder = tmp_path / "bin"
    folder.mkdir()
    fake = folder / "servekit"
    fake.write_text('#!/bin/sh\necho "servekit $*"\n')
    fake.chmod(0o755)
    return folder


def environment(
    fake_bin: Path, models: Path, mountinfo: Path | None = None, **extra: str
) -> dict[str, str]:
    return {
        "PATH": f"{fake_bin}:/usr/bin:/bin",
        "MODELS_DIR": str(models),
        **({"MOUNTINFO": str(mountinfo)} if mountinfo else {}),
        **extra,
    }


def run(
    fake_bin: Path,
    models: Path,
    *args: str,
    mountinfo: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SH, str(ENTRYPOINT), *args],
        env=environment(fake_bin, models, mountinfo, **(env or {})),
        capture_output=True,
        text=True,
        timeout=30,
    )


def mountinfo_with(tmp_path: Path, *points: Path) -> Path:
    """A mount table (proc(5)'s mountinfo format) with the root and ``points``."""
    lines = ["22 1 0:21 / / rw,relatime - overlay overlay rw"]
    lines += [
        f"{30 + i} 22 8:1 /vol{i} {p} rw,relatime - ext4 /dev/sda1 rw" for i, p in enumerate(points)
    ]
    path = tmp_path / "mountinfo"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_nothing_mounted_and_empty_serves_the_demo(fake_bin: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "lost+found").mkdir()
    (models / ".hidden").write_text("")
    done = run(fake_bin, models, mountinfo=mountinfo_with(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "servekit serve"
    assert "serving the bundled demo model" in done.stderr


def test_an_empty_mounted_volume_is_an_error(fake_bin: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "lost+found").mkdir()  # a fresh ext4 volume
    done = run(fake_bin, models, "--workers", "2", mountinfo=mountinfo_with(tmp_path, models))
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stdout == ""  # servekit never ran: no demo model standing in
    assert f"the volume mounted at {models} is empty" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "layout",
    [
        {"digits/1/model.tflite": REPO / "digits" / "1" / "model.tflite"},
        {"digits/model.tflite": REPO / "digits" / "1" / "model.tflite"},
        {"handwriting.tflite": REPO / "digits" / "1" / "model.tflite"},
        {"notes.txt": None},  # not a model: servekit says what it expected
    ],
    ids=["versioned", "direct", "flat", "no-model"],
)
@pytest.mark.parametrize("mounted", [True, False], ids=["mounted", "in-image"])
def test_a_repository_is_handed_to_servekit(
    fake_bin: Path, tmp_path: Path, layout: dict[str, Path | None], mounted: bool
) -> None:
    models = tmp_path / "models"
    for rel, source in layout.items():
        (models / rel).parent.mkdir(parents=True, exist_ok=True)
        if source is None:
            (models / rel).write_text("")
        else:
            shutil.copy(source, models / rel)
    table = mountinfo_with(tmp_path, *([models] if mounted else []))
    done = run(fake_bin, models, "--port", "9000", mountinfo=table)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"servekit serve {models} --port 9000"


def test_a_file_mounted_inside_the_folder_counts_as_mounted(fake_bin: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(REPO / "digits" / "1" / "model.tflite", models / "handwriting.tflite")
    table = mountinfo_with(tmp_path, models / "handwriting.tflite")
    assert run(fake_bin, models, mountinfo=table).stdout.strip() == f"servekit serve {models}"


def test_a_model_path_wins(fake_bin: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    table = mountinfo_with(tmp_path, models)  # empty and mounted, but not what is served
    done = run(fake_bin, models, mountinfo=table, env={"SERVEKIT_MODEL_PATH": "/mnt/models"})
    assert done.stdout.strip() == "servekit serve"
    done = run(fake_bin, models, "serve", "/elsewhere", "--workers", "2", mountinfo=table)
    assert done.stdout.strip() == "servekit serve /elsewhere --workers 2"


def test_without_a_mount_table_the_device_decides(fake_bin: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    missing = tmp_path / "no-mountinfo"
    same_device = os.stat(models).st_dev == os.stat("/").st_dev
    done = run(fake_bin, models, mountinfo=missing)
    assert done.returncode == (0 if same_device else 2), done.stderr


def test_a_real_mount(fake_bin: Path, tmp_path: Path) -> None:
    """A tmpfs mounted on the folder in a private mount namespace, read from the real
    /proc/self/mountinfo: empty is an error, with a model it is served."""
    models = tmp_path / "models"
    models.mkdir()
    unshare = shutil.which("unshare") or "unshare"
    wrap = [unshare, "--mount", "--map-root-user"] if os.getuid() else [unshare, "--mount"]
    if subprocess.run(["sh", "-c", " ".join([*wrap, "true"])], capture_output=True).returncode:
        pytest.skip("no private mount namespace here (unshare)")
    script = (
        f'mount -t tmpfs none "{models}" && mkdir "{models}/lost+found" && '
        f'{SH} "{ENTRYPOINT}"; echo "exit=$?"; '
        f'cp "{REPO / "digits" / "1" / "model.tflite"}" "{models}/m.tflite" && {SH} "{ENTRYPOINT}"'
    )
    done = subprocess.run(
        [*wrap, SH, "-c", script],
        env=environment(fake_bin, models),
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = done.stdout.strip().splitlines()
    assert lines == ["exit=2", f"servekit serve {models}"], (done.stdout, done.stderr)
    assert "is empty" in done.stderr
