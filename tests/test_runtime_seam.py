"""A third runtime is one module and one table entry: shown with a NumPy "runtime"
defined here (a linear model y = x @ w + b stored as model.npz), served through the
registry, the batcher and both HTTP protocols without touching servekit's code."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest

from servekit.config import ModelConfig, ServerSettings
from servekit.errors import BadInput
from servekit.runtime import BACKENDS, Backend, ModelSignature
from servekit.server.app import create_app
from servekit.tensors import Array, TensorSpec


class LinearSession:
    def __init__(self, content: bytes) -> None:
        with np.load(io.BytesIO(content)) as weights:
            self.w, self.b = weights["w"], weights["b"]
        f32 = np.dtype(np.float32)
        self.signature = ModelSignature(
            inputs=(TensorSpec("x", f32, (-1, self.w.shape[0])),),
            outputs=(TensorSpec("y", f32, (-1, self.w.shape[1])),),
            signature_key=None,
            native_batch=None,
        )

    def invoke(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        return {"y": (inputs["x"] @ self.w + self.b).astype(np.float32)}


def read(path: Path) -> bytes:
    content = path.read_bytes()
    if not content.startswith(b"PK"):
        raise BadInput(f"{path} is not an .npz file")
    return content


def load(content: bytes, config: ModelConfig) -> LinearSession:
    return LinearSession(content)


NUMPY = Backend(
    name="numpy",
    platform="numpy_linear",
    model_file="model.npz",
    read=read,
    load=load,
    runtime_name=lambda: f"numpy {np.__version__}",
)


@pytest.fixture()
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setitem(BACKENDS, NUMPY.name, NUMPY)  # the one table entry
    rng = np.random.default_rng(0)
    folder = tmp_path / "repo" / "linear" / "1"
    folder.mkdir(parents=True)
    np.savez(
        folder / "model.npz",
        w=rng.standard_normal((4, 3)).astype(np.float32),
        b=rng.standard_normal(3).astype(np.float32),
    )
    return tmp_path / "repo"


@asynccontextmanager
async def client(repo: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(ServerSettings(model_path=repo))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sk") as c,
    ):
        yield c


async def test_a_third_runtime_serves_through_every_layer(repo: Path) -> None:
    with np.load(repo / "linear" / "1" / "model.npz") as weights:
        w, b = weights["w"], weights["b"]
    x = np.arange(8, dtype=np.float32).reshape(2, 4) / 8
    async with client(repo) as c:
        meta = (await c.get("/v2/models/linear")).json()
        assert meta["platform"] == "numpy_linear"
        assert meta["parameters"]["batching"]["batch_safety"]["check"] == "verified"
        v1 = await c.post("/v1/models/linear:predict", json={"instances": x.tolist()})
        body = {
            "inputs": [
                {"name": "x", "shape": [2, 4], "datatype": "FP32", "data": x.ravel().tolist()}
            ]
        }
        v2 = await c.post("/v2/models/linear/infer", json=body)
    assert v1.status_code == 200 and v2.status_code == 200, (v1.text, v2.text)
    want = x @ w + b
    np.testing.assert_allclose(np.array(v1.json()["predictions"]), want, rtol=1e-6)
    np.testing.assert_allclose(
        np.array(v2.json()["outputs"][0]["data"]).reshape(2, 3), want, rtol=1e-6
    )
