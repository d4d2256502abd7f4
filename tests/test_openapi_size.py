"""/openapi.json stays small whatever the models: image models get abridged examples.

A repository of ten 224x224x3 image models (copies of tests/models/image, made by
scripts/make_models.py) next to the digits model, in-process.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from conftest import MODELS, REPO
from servekit.config import ServerSettings
from servekit.server import examples
from servekit.server.app import create_app

IMAGE = MODELS / "image" / "image"
LIMIT = 200 * 1024
PREDICT = "/v1/models/{model_name}:predict"
INFER = "/v2/models/{model_name}/infer"


@pytest.fixture()
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    repo = tmp_path / "repo"
    for i in range(10):
        shutil.copytree(IMAGE, repo / f"image{i}")
    shutil.copytree(REPO / "digits", repo / "digits")
    app = create_app(ServerSettings(model_path=repo))
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://s", timeout=60) as c,
    ):
        yield c


def stored_examples(schema: dict[str, Any]) -> dict[str, Any]:
    """Every model's example by '<model>.<api>', as the predict and infer operations
    (those without a version in the path) carry them."""
    out = {}
    for api, path in (("v1", PREDICT), ("v2", INFER)):
        content = schema["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        out |= {f"{name}.{api}": example for name, example in content["examples"].items()}
    return out


async def test_ten_image_models_keep_the_document_small(client: httpx.AsyncClient) -> None:
    r = await client.get("/openapi.json")
    assert r.status_code == 200
    assert len(r.content) < LIMIT, f"{len(r.content):,} bytes"
    stored = stored_examples(r.json())
    assert len(stored) == 22  # 11 models, v1 and v2
    # The image's example: the true shape, a few values, and where the whole one is.
    image = stored["image3.v2"]
    assert image["value"]["inputs"][0]["shape"] == [1, 224, 224, 3]
    assert len(image["value"]["inputs"][0]["data"]) == examples.ABRIDGED_VALUES
    assert "/docs/examples/image3/v2" in image["description"]
    assert "abridged" in image["summary"]
    # The small model's is whole: "Try it out" runs it as it is.
    digits = stored["digits.v1"]["value"]
    assert (await client.post("/v1/models/digits:predict", json=digits)).status_code == 200
    digits2 = stored["digits.v2"]["value"]
    assert (await client.post("/v2/models/digits/infer", json=digits2)).status_code == 200


async def test_an_abridged_example_answers_400_and_the_whole_one_200(
    client: httpx.AsyncClient,
) -> None:
    stored = stored_examples((await client.get("/openapi.json")).json())
    for api, path in (("v1", "/v1/models/image0:predict"), ("v2", "/v2/models/image0/infer")):
        r = await client.post(path, json=stored[f"image0.{api}"]["value"])
        assert r.status_code == 400 and r.json()["error"], r.text
        whole = await client.get(f"/docs/examples/image0/{api}")
        assert whole.status_code == 200
        r = await client.post(path, json=whole.json())
        assert r.status_code == 200, r.text
        out = r.json()
        probabilities = out["predictions"] if api == "v1" else out["outputs"][0]["data"]
        assert np.isclose(np.sum(probabilities), 1.0, atol=1e-4)
    for wrong in ("/docs/examples/nope/v1", "/docs/examples/image0/v3"):
        r = await client.get(wrong)
        assert r.status_code == 404 and r.json()["error"], wrong
