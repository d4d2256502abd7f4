"""TF Serving REST API against a real servekit process on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import random

import httpx
import numpy as np
import pytest

from conftest import DEMO, ServerProcess, digits_rows, direct_predict


def close(got: object, want: np.ndarray) -> None:
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), want, rtol=1e-5, atol=1e-6)


def test_dense_row_format_equals_direct_interpreter(client: httpx.Client) -> None:
    x = digits_rows(4)
    r = client.post("/v1/models/digits:predict", json={"instances": x.tolist()})
    assert r.status_code == 200, r.text
    close(r.json()["predictions"], direct_predict("digits", {"pixels": x})["probabilities"])


def test_columnar_format_and_explicit_version(client: httpx.Client) -> None:
    x = digits_rows(3, 10)
    r = client.post("/v1/models/digits/versions/1:predict", json={"inputs": {"pixels": x.tolist()}})
    assert r.status_code == 200, r.text
    close(r.json()["outputs"], direct_predict("digits", {"pixels": x})["probabilities"])


def test_conv_model(client: httpx.Client) -> None:
    x = digits_rows(5).reshape(5, 8, 8, 1)
    r = client.post("/v1/models/digits_cnn:predict", json={"instances": x.tolist()})
    assert r.status_code == 200, r.text
    close(r.json()["predictions"], direct_predict("digits_cnn", {"image": x})["probabilities"])


def test_multi_input_multi_output_row_and_columnar(client: httpx.Client) -> None:
    x = digits_rows(3)
    bias = np.arange(30, dtype=np.int32).reshape(3, 10) % 3
    want = direct_predict("multi", {"features": x, "bias": bias})
    rows = [{"features": x[i].tolist(), "bias": bias[i].tolist()} for i in range(3)]
    r = client.post("/v1/models/multi:predict", json={"instances": rows})
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert [p["label"] for p in preds] == want["label"].tolist()
    close([p["logits"] for p in preds], want["logits"])
    r = client.post(
        "/v1/models/multi:predict",
        json={"inputs": {"features": x.tolist(), "bias": bias.tolist()}},
    )
    assert r.status_code == 200, r.text
    out = r.json()["outputs"]
    assert out["label"] == want["label"].tolist()
    close(out["logits"], want["logits"])


def test_fixed_batch_model_served_unbatched(client: httpx.Client) -> None:
    meta = client.get("/v1/models/fixed/metadata").json()
    assert meta["servekit"]["batching"]["dynamic"] is False
    x = digits_rows(3)
    r = client.post("/v1/models/fixed:predict", json={"instances": x.tolist()})
    assert r.status_code == 200, r.text
    want = np.concatenate(
        [direct_predict("fixed", {"pixels": x[i : i + 1]})["probabilities"] for i in range(3)]
    )
    close(r.json()["predictions"], want)


def test_int8_model_takes_integers(client: httpx.Client) -> None:
    q = np.clip(np.round(digits_rows(2) * 255 - 128), -128, 127).astype(np.int8)
    r = client.post("/v1/models/digits_int8:predict", json={"instances": q.tolist()})
    assert r.status_code == 200, r.text
    want = direct_predict("digits_int8", {"pixels": q})["probabilities"]
    assert r.json()["predictions"] == want.tolist()


def test_status_metadata_and_listing(client: httpx.Client) -> None:
    status = client.get("/v1/models/digits").json()
    assert status["model_version_status"][0]["state"] == "AVAILABLE"
    assert client.get("/v1/models/digits/versions/1").status_code == 200
    meta = client.get("/v1/models/multi/metadata").json()
    sig = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sig["inputs"]["bias"]["dtype"] == "DT_INT32"
    assert sig["inputs"]["features"]["tensor_shape"]["dim"] == [
        {"size": "-1", "name": ""},
        {"size": "64", "name": ""},
    ]
    assert sig["outputs"]["label"]["dtype"] == "DT_INT64"
    q = client.get("/v1/models/digits_int8/metadata").json()
    (qin,) = q["servekit"]["inputs"]
    assert qin["name"] == "pixels" and qin["quantization"]["scale"] > 0
    listed = {m["name"] for m in client.get("/v1/models").json()}
    assert {"digits", "digits_cnn", "multi", "fixed", "digits_int8", "nosig"} <= listed


def test_health(client: httpx.Client) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}


async def test_200_concurrent_mixed_batches_get_their_own_rows(repo_server: ServerProcess) -> None:
    rng = random.Random(7)
    sizes = [rng.choice([1, 1, 2, 3, 5, 8]) for _ in range(200)]
    offsets = [rng.randrange(0, 256 - 8) for _ in range(200)]
    async with httpx.AsyncClient(base_url=repo_server.url) as c:
        metrics_before = (await c.get("/metrics")).text

    async with httpx.AsyncClient(
        base_url=repo_server.url, timeout=60, limits=httpx.Limits(max_connections=200)
    ) as c:

        async def one(n: int, o: int) -> list[list[float]]:
            r = await c.post(
                "/v1/models/digits_cnn:predict",
                json={"instances": digits_rows(n, o).reshape(n, 8, 8, 1).tolist()},
            )
            assert r.status_code == 200, r.text
            return r.json()["predictions"]  # type: ignore[no-any-return]

        results = await asyncio.gather(*(one(n, o) for n, o in zip(sizes, offsets, strict=True)))
    everything = digits_rows(256).reshape(256, 8, 8, 1)
    want_all = direct_predict("digits_cnn", {"image": everything})["probabilities"]
    for n, o, got in zip(sizes, offsets, results, strict=True):
        close(got, want_all[o : o + n])

    def counter(text: str, name: str) -> float:
        for line in text.splitlines():
            if line.startswith(name + "{") and 'model="digits_cnn"' in line:
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    async with httpx.AsyncClient(base_url=repo_server.url) as c:
        after = (await c.get("/metrics")).text
    inferences = counter(after, "servekit_inferences_total") - counter(
        metrics_before, "servekit_inferences_total"
    )
    executions = counter(after, "servekit_executions_total") - counter(
        metrics_before, "servekit_executions_total"
    )
    assert inferences == sum(sizes)
    assert executions < 200, "no batch held more than one request"
    assert inferences / executions > 1


def test_demo_server_serves_bundled_model_and_sample(demo_server: ServerProcess) -> None:
    sample = json.loads((DEMO / "sample_request.json").read_text())
    labels = json.loads((DEMO / "sample_labels.json").read_text())
    r = httpx.post(f"{demo_server.url}/v1/models/digits:predict", json=sample)
    assert r.status_code == 200, r.text
    assert [int(np.argmax(p)) for p in r.json()["predictions"]] == labels
    schema = httpx.get(f"{demo_server.url}/openapi.json").json()
    body = schema["paths"]["/v1/models/{model_name}:predict"]["post"]["requestBody"]
    assert body["content"]["application/json"]["examples"]["digits"]["value"] == sample
    docs = httpx.get(f"{demo_server.url}/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


@pytest.mark.parametrize("path", ["/v1/models/digits", "/v1/models/digits/metadata"])
def test_get_endpoints_are_json(client: httpx.Client, path: str) -> None:
    r = client.get(path)
    assert r.headers["content-type"] == "application/json"
