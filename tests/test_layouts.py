"""Repository layouts users have, side by side in one folder: model files lying in the
repository (``a.tflite``, ``b.onnx``: models ``a`` and ``b``, version 1), a model file
directly in a model folder (``c/model.tflite``: version 1), and the versioned layout
(``d/1/model.tflite``). Answers are compared with the runtimes invoked directly; poll
mode sees files come, change and go.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from conftest import MODELS, REPO, ServerProcess, digits_rows, direct_predict
from servekit.config import ServerSettings
from servekit.errors import BadInput
from servekit.repository import ModelRegistry, scan
from servekit.server.app import create_app

TFLITE = REPO / "digits" / "1" / "model.tflite"
CNN = REPO / "digits_cnn" / "1" / "model.tflite"
ONNX = MODELS / "onnx" / "digits" / "1" / "model.onnx"
ROWS = digits_rows(3)


def mixed_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "models"
    repo.mkdir()
    shutil.copy(TFLITE, repo / "a.tflite")
    shutil.copy(ONNX, repo / "b.onnx")
    (repo / "c").mkdir()
    shutil.copy(TFLITE, repo / "c" / "model.tflite")
    (repo / "d" / "1").mkdir(parents=True)
    shutil.copy(TFLITE, repo / "d" / "1" / "model.tflite")
    (repo / "notes.txt").write_text("not a model")
    (repo / "lost+found").mkdir()
    return repo


@asynccontextmanager
async def serve(repo: Path, **settings: Any) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    app = create_app(ServerSettings(model_path=repo, **settings))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://sk", timeout=30
        ) as c,
    ):
        yield c, app


async def predict(c: httpx.AsyncClient, name: str, rows: np.ndarray) -> np.ndarray:
    r = await c.post(f"/v1/models/{name}:predict", json={"instances": rows.tolist()})
    assert r.status_code == 200, r.text
    return np.asarray(r.json()["predictions"], dtype=np.float32)


def onnx_direct(rows: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(ONNX), providers=["CPUExecutionProvider"])
    (name,) = [i.name for i in session.get_inputs()]
    return np.asarray(session.run(None, {name: rows})[0])


def test_scan_finds_every_layout(tmp_path: Path) -> None:
    sources = {(s.name, s.version): s.path.name for s in scan(mixed_repo(tmp_path))}
    assert sources == {
        ("a", 1): "a.tflite",
        ("b", 1): "b.onnx",
        ("c", 1): "model.tflite",
        ("d", 1): "model.tflite",
    }


def test_a_folder_wins_over_a_file_and_tflite_over_onnx(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    (repo / "a" / "2").mkdir(parents=True)
    shutil.copy(TFLITE, repo / "a" / "2" / "model.tflite")
    shutil.copy(TFLITE, repo / "a.tflite")
    shutil.copy(TFLITE, repo / "b.tflite")
    shutil.copy(ONNX, repo / "b.onnx")
    (repo / "c").mkdir()  # version folders win over a file directly in the folder
    shutil.copy(ONNX, repo / "c" / "model.onnx")
    (repo / "c" / "3").mkdir()
    shutil.copy(TFLITE, repo / "c" / "3" / "model.tflite")
    found = {(s.name, s.version): s.path.relative_to(repo) for s in scan(repo)}
    assert found == {
        ("a", 2): Path("a/2/model.tflite"),
        ("b", 1): Path("b.tflite"),
        ("c", 3): Path("c/3/model.tflite"),
    }


def test_an_empty_folder_names_every_layout(tmp_path: Path) -> None:
    (tmp_path / "lost+found").mkdir()
    (tmp_path / "readme.txt").write_text("")
    with pytest.raises(BadInput) as e:
        scan(tmp_path)
    assert "<repo>/<name>.tflite" in str(e.value) and "<repo>/<model>/<model file>" in str(e.value)


async def test_every_layout_serves_what_the_runtime_computes(tmp_path: Path) -> None:
    async with serve(mixed_repo(tmp_path)) as (c, _):
        listed = {(m["name"], m["version"], m["state"]) for m in (await c.get("/v1/models")).json()}
        assert listed == {(n, "1", "READY") for n in "abcd"}
        want = direct_predict("digits", {"pixels": ROWS})["probabilities"]
        for name in "acd":
            np.testing.assert_allclose(await predict(c, name, ROWS), want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            await predict(c, "b", ROWS), onnx_direct(ROWS), rtol=1e-5, atol=1e-6
        )
        meta = (await c.get("/v2/models/b")).json()
        assert meta["platform"] == "onnxruntime_onnx" and meta["versions"] == ["1"]


def replace(path: Path, source: Path) -> None:
    """Copy in a new file (a new inode and mtime), as a deploy would."""
    tmp = path.with_name(f".{path.name}.incoming")
    shutil.copy(source, tmp)
    before = path.stat().st_mtime_ns if path.exists() else 0
    os.utime(tmp, ns=(before + 2_000_000_000, before + 2_000_000_000))
    tmp.replace(path)


async def test_poll_mode_sees_files_come_change_and_go(tmp_path: Path) -> None:
    repo = mixed_repo(tmp_path)
    async with serve(repo, model_control_mode="poll", poll_interval_s=3600) as (c, app):
        registry: ModelRegistry = app.state.registry
        shutil.copy(TFLITE, repo / "e.tflite")  # a new flat file
        replace(repo / "a.tflite", CNN)  # a flat file changed
        replace(repo / "c" / "model.tflite", CNN)  # a file directly in a model folder
        (repo / "b.onnx").unlink()  # a flat file gone
        await registry.poll_once()

        listed = {(m["name"], m["version"], m["state"]) for m in (await c.get("/v1/models")).json()}
        assert listed == {(n, "1", "READY") for n in "acde"}
        assert (await c.post("/v1/models/b:predict", json={"instances": []})).status_code == 404
        want = direct_predict("digits", {"pixels": ROWS})["probabilities"]
        np.testing.assert_allclose(await predict(c, "e", ROWS), want, rtol=1e-5, atol=1e-6)
        for name in "ac":  # now the CNN, which takes 8x8x1 images
            meta = (await c.get(f"/v2/models/{name}")).json()
            assert meta["inputs"][0]["shape"] == [-1, 8, 8, 1], meta
            images = ROWS.reshape(-1, 8, 8, 1)
            np.testing.assert_allclose(
                await predict(c, name, images),
                direct_predict("digits_cnn", {"image": images})["probabilities"],
                rtol=1e-5,
                atol=1e-6,
            )


def test_servekit_serve_on_a_flat_folder(tmp_path: Path) -> None:
    """`servekit serve models/` on a folder of model files, as a user types it."""
    repo = tmp_path / "models"
    repo.mkdir()
    shutil.copy(TFLITE, repo / "handwriting.tflite")
    shutil.copy(ONNX, repo / "digits-onnx.onnx")
    server = ServerProcess(str(repo), name="flat").wait_ready()
    try:
        listed = httpx.get(f"{server.url}/v1/models").json()
        assert {(m["name"], m["version"], m["state"]) for m in listed} == {
            ("handwriting", "1", "READY"),
            ("digits-onnx", "1", "READY"),
        }
        r = httpx.post(
            f"{server.url}/v1/models/digits-onnx:predict", json={"instances": ROWS.tolist()}
        )
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(r.json()["predictions"], onnx_direct(ROWS), rtol=1e-5, atol=1e-6)
    finally:
        assert server.stop() == 0, server.log()
