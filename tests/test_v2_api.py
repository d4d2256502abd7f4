"""Open Inference Protocol v2 against a real servekit process: tritonclient and httpx."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from conftest import ServerProcess, digits_rows, direct_predict

SCALE, ZERO_POINT = 0.003921568859368563, -128  # digits_int8's input quantization


def close(got: object, want: np.ndarray) -> None:
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), want, rtol=1e-5, atol=1e-6)


def int8_rows(n: int, offset: int = 0) -> np.ndarray:
    q = np.round(digits_rows(n, offset) / SCALE) + ZERO_POINT
    return np.clip(q, -128, 127).astype(np.int8)


def multi_inputs(n: int) -> dict[str, np.ndarray]:
    bias = (np.arange(n * 10, dtype=np.int32).reshape(n, 10) % 3).astype(np.int32)
    return {"features": digits_rows(n, 20), "bias": bias}


# (model, inputs, outputs) for every model kind the issue names.
CASES: dict[str, dict[str, np.ndarray]] = {
    "digits": {"pixels": digits_rows(5)},
    "digits_int8": {"pixels": int8_rows(4)},
    "multi": multi_inputs(3),
}


def check_outputs(model: str, got: dict[str, np.ndarray], inputs: dict[str, np.ndarray]) -> None:
    want = direct_predict(model, inputs)
    assert set(got) == set(want)
    for name, w in want.items():
        g = got[name]
        assert g.shape == w.shape, name
        if w.dtype.kind == "f":
            assert g.dtype == w.dtype
            close(g, w)
        else:  # ints (quantized outputs, labels) are exact
            assert g.dtype == w.dtype, name
            np.testing.assert_array_equal(g, w)


@pytest.fixture(scope="module")
def tc(repo_server: ServerProcess) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(repo_server.url.removeprefix("http://"))
    yield client
    client.close()


# -- tritonclient: health and metadata ---------------------------------------------------


def test_tritonclient_health_and_server_metadata(tc: triton.InferenceServerClient) -> None:
    assert tc.is_server_live()
    assert tc.is_server_ready()
    meta = tc.get_server_metadata()
    assert meta["name"] == "servekit"
    assert meta["version"]
    assert meta["extensions"] == [
        "binary_tensor_data",
        "schedule_policy",
        "model_repository",
        "model_configuration",
        "statistics",
    ]


@pytest.mark.parametrize("version", ["", "1"])
def test_tritonclient_model_metadata_and_ready(
    tc: triton.InferenceServerClient, version: str
) -> None:
    assert tc.is_model_ready("multi", version)
    meta = tc.get_model_metadata("multi", version)
    batching = meta.pop("parameters")["batching"]
    assert batching["batch_safety"]["check"] == "verified"
    assert meta == {
        "name": "multi",
        "versions": ["1"],
        "platform": "tensorflow_lite",
        "inputs": [
            {"name": "bias", "datatype": "INT32", "shape": [-1, 10]},
            {"name": "features", "datatype": "FP32", "shape": [-1, 64]},
        ],
        "outputs": [
            {"name": "label", "datatype": "INT64", "shape": [-1]},
            {"name": "logits", "datatype": "FP32", "shape": [-1, 10]},
        ],
    }
    meta = tc.get_model_metadata("digits_int8", version)
    assert meta["inputs"] == [{"name": "pixels", "datatype": "INT8", "shape": [-1, 64]}]
    assert meta["outputs"] == [{"name": "probabilities", "datatype": "INT8", "shape": [-1, 10]}]


def test_tritonclient_unknown_model(tc: triton.InferenceServerClient) -> None:
    assert not tc.is_model_ready("nope")
    assert not tc.is_model_ready("digits", "9")
    with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
        tc.get_model_metadata("nope")


# -- tritonclient: infer -----------------------------------------------------------------


@pytest.mark.parametrize("version", ["", "1"])
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("model", list(CASES))
def test_tritonclient_infer_equals_direct_interpreter(
    tc: triton.InferenceServerClient, model: str, binary: bool, version: str
) -> None:
    inputs = CASES[model]
    infer_inputs = []
    for name, arr in inputs.items():
        datatype = {"float32": "FP32", "int8": "INT8", "int32": "INT32"}[arr.dtype.name]
        i = triton.InferInput(name, list(arr.shape), datatype)
        i.set_data_from_numpy(arr, binary_data=binary)
        infer_inputs.append(i)
    names = [o["name"] for o in tc.get_model_metadata(model)["outputs"]]
    outputs = [triton.InferRequestedOutput(n, binary_data=binary) for n in names]
    result = tc.infer(
        model, infer_inputs, model_version=version, outputs=outputs, request_id="req-7"
    )
    response = result.get_response()
    assert response["model_name"] == model
    assert response["model_version"] == "1"
    assert response["id"] == "req-7"
    for out in response["outputs"]:
        assert ("parameters" in out) == binary and ("data" in out) == (not binary)
    check_outputs(model, {n: result.as_numpy(n) for n in names}, inputs)


def test_tritonclient_default_outputs_are_binary(tc: triton.InferenceServerClient) -> None:
    # No outputs named: tritonclient asks binary_data_output for all of them.
    x = CASES["multi"]
    inputs = []
    for name, dt in (("features", "FP32"), ("bias", "INT32")):
        i = triton.InferInput(name, list(x[name].shape), dt)
        i.set_data_from_numpy(x[name])
        inputs.append(i)
    result = tc.infer("multi", inputs)
    assert all("binary_data_size" in o["parameters"] for o in result.get_response()["outputs"])
    check_outputs("multi", {n: result.as_numpy(n) for n in ("label", "logits")}, x)


def test_tritonclient_schedule_policy_and_compression(tc: triton.InferenceServerClient) -> None:
    x = digits_rows(2, 30)
    i = triton.InferInput("pixels", [2, 64], "FP32")
    i.set_data_from_numpy(x)
    for kwargs in (
        {"priority": 1, "timeout": 5_000_000},
        {"priority": 3},
        {"request_compression_algorithm": "gzip"},
        {"request_compression_algorithm": "deflate", "response_compression_algorithm": "gzip"},
    ):
        result = tc.infer("digits", [i], **kwargs)
        close(
            result.as_numpy("probabilities"),
            direct_predict("digits", {"pixels": x})["probabilities"],
        )


def test_tritonclient_errors_name_the_input(tc: triton.InferenceServerClient) -> None:
    x = digits_rows(1).astype(np.float64)
    i = triton.InferInput("pixels", [1, 64], "FP64")
    i.set_data_from_numpy(x)
    with pytest.raises(
        InferenceServerException, match="'pixels': expected datatype FP32, got FP64"
    ):
        tc.infer("digits", [i])
    assert tc.is_server_ready()


# -- plain HTTP: the JSON path -----------------------------------------------------------


def v2_input(name: str, arr: np.ndarray, datatype: str, nested: bool = False) -> dict[str, Any]:
    data = arr.tolist() if nested else arr.reshape(-1).tolist()
    return {"name": name, "shape": list(arr.shape), "datatype": datatype, "data": data}


@pytest.mark.parametrize("nested", [False, True], ids=["flat", "nested"])
def test_json_flat_and_nested_data(client: httpx.Client, nested: bool) -> None:
    x = digits_rows(3, 40)
    r = client.post(
        "/v2/models/digits/infer", json={"inputs": [v2_input("pixels", x, "FP32", nested)]}
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["model_name"] == "digits" and body["model_version"] == "1"
    assert "id" not in body
    [out] = body["outputs"]
    assert out["name"] == "probabilities" and out["datatype"] == "FP32" and out["shape"] == [3, 10]
    close(
        np.reshape(out["data"], (3, 10)), direct_predict("digits", {"pixels": x})["probabilities"]
    )


def test_json_outputs_filter_and_id_echo(client: httpx.Client) -> None:
    x = multi_inputs(2)
    request = {
        "id": "my-request-42",
        "inputs": [
            v2_input("features", x["features"], "FP32", nested=True),
            v2_input("bias", x["bias"], "INT32"),
        ],
        "outputs": [{"name": "label"}],
    }
    r = client.post("/v2/models/multi/versions/1/infer", json=request)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == "my-request-42"
    assert [o["name"] for o in body["outputs"]] == ["label"]
    want = direct_predict("multi", x)
    assert body["outputs"][0] == {
        "name": "label",
        "datatype": "INT64",
        "shape": [2],
        "data": want["label"].tolist(),
    }
    # Both, asked in the other order: the response follows the request's order.
    request["outputs"] = [{"name": "logits"}, {"name": "label"}]
    body = client.post("/v2/models/multi/infer", json=request).json()
    assert [o["name"] for o in body["outputs"]] == ["logits", "label"]
    close(np.reshape(body["outputs"][0]["data"], (2, 10)), want["logits"])


def split_binary_response(r: httpx.Response) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Parse a binary V2 response by hand (the reference for our own encoder)."""
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    n = int(r.headers["inference-header-content-length"])
    header = orjson.loads(r.content[:n])
    arrays, offset = {}, n
    for out in header["outputs"]:
        size = out["parameters"]["binary_data_size"]
        dtype = {"FP32": "<f4", "INT64": "<i8", "INT8": "i1"}[out["datatype"]]
        raw = r.content[offset : offset + size]
        arrays[out["name"]] = np.frombuffer(raw, dtype=dtype).reshape(out["shape"])
        offset += size
    assert offset == len(r.content)
    return header, arrays


def test_json_request_with_binary_data_output(client: httpx.Client) -> None:
    x = multi_inputs(4)
    request = {
        "parameters": {"binary_data_output": True},
        "inputs": [
            v2_input("features", x["features"], "FP32"),
            v2_input("bias", x["bias"], "INT32", nested=True),
        ],
    }
    header, arrays = split_binary_response(client.post("/v2/models/multi/infer", json=request))
    assert [o["name"] for o in header["outputs"]] == ["label", "logits"]
    assert all("data" not in o for o in header["outputs"])
    check_outputs("multi", arrays, x)


def test_binary_request_mixed_with_json_input(client: httpx.Client) -> None:
    x = multi_inputs(3)
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "features",
                    "shape": [3, 64],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x["features"].nbytes},
                },
                v2_input("bias", x["bias"], "INT32"),
            ],
            "outputs": [{"name": "logits", "parameters": {"binary_data": True}}, {"name": "label"}],
        }
    )
    r = client.post(
        "/v2/models/multi/infer",
        content=header + x["features"].tobytes(),
        headers={
            "inference-header-content-length": str(len(header)),
            "content-type": "application/octet-stream",
        },
    )
    assert r.status_code == 200, r.text
    n = int(r.headers["inference-header-content-length"])
    meta = orjson.loads(r.content[:n])
    logits_meta, label = meta["outputs"]
    assert logits_meta["parameters"] == {"binary_data_size": 3 * 10 * 4}
    want = direct_predict("multi", x)
    close(np.frombuffer(r.content[n:], dtype="<f4").reshape(3, 10), want["logits"])
    assert label["data"] == want["label"].tolist()


@pytest.mark.parametrize(
    "headers",
    [
        {"inference-header-content-length": "0"},
        {"inference-header-content-length": "0", "content-type": "application/octet-stream"},
        {"content-type": "application/octet-stream"},
    ],
    ids=["header-0", "header-0-octet-stream", "octet-stream-no-header"],
)
def test_raw_body_single_input(client: httpx.Client, headers: dict[str, str]) -> None:
    x = digits_rows(6, 50)
    r = client.post("/v2/models/digits/infer", content=x.tobytes(), headers=headers)
    header, arrays = split_binary_response(r)
    assert header["outputs"][0]["shape"] == [6, 10]
    close(arrays["probabilities"], direct_predict("digits", {"pixels": x})["probabilities"])


def test_raw_body_derives_rows_for_inner_dims(client: httpx.Client) -> None:
    x = digits_rows(3, 60).reshape(3, 8, 8, 1)
    r = client.post(
        "/v2/models/digits_cnn/versions/1/infer",
        content=x.tobytes(),
        headers={"inference-header-content-length": "0"},
    )
    _, arrays = split_binary_response(r)
    close(arrays["probabilities"], direct_predict("digits_cnn", {"image": x})["probabilities"])
    # int8: one byte per element.
    q = int8_rows(2)
    r = client.post(
        "/v2/models/digits_int8/infer",
        content=q.tobytes(),
        headers={"inference-header-content-length": "0"},
    )
    _, arrays = split_binary_response(r)
    np.testing.assert_array_equal(
        arrays["probabilities"], direct_predict("digits_int8", {"pixels": q})["probabilities"]
    )


def test_gzip_request_body(client: httpx.Client) -> None:
    x = digits_rows(2)
    body = orjson.dumps({"inputs": [v2_input("pixels", x, "FP32")]})
    r = client.post(
        "/v2/models/digits/infer",
        content=gzip.compress(body),
        headers={"content-encoding": "gzip", "content-type": "application/json"},
    )
    assert r.status_code == 200, r.text
    close(
        np.reshape(r.json()["outputs"][0]["data"], (2, 10)),
        direct_predict("digits", {"pixels": x})["probabilities"],
    )


def test_timeout_parameter_shortens_the_deadline(client: httpx.Client) -> None:
    x = digits_rows(1)
    # 1 microsecond: the deadline passes before the batch can run.
    request = {"parameters": {"timeout": 1}, "inputs": [v2_input("pixels", x, "FP32")]}
    r = client.post("/v2/models/digits/infer", json=request)
    assert r.status_code == 504, r.text
    assert "deadline" in r.json()["error"]
    # A timeout past the model's own is allowed, and capped by it.
    request["parameters"] = {"timeout": 10**15, "priority": 2}
    assert client.post("/v2/models/digits/infer", json=request).status_code == 200
    assert client.get("/v2/health/ready").status_code == 200


def test_model_ready_endpoint_shape(client: httpx.Client) -> None:
    r = client.get("/v2/models/digits_cnn/ready")
    assert r.status_code == 200 and r.json() == {"name": "digits_cnn", "ready": True}
    r = client.get("/v2/models/digits_cnn/versions/1/ready")
    assert r.status_code == 200 and r.json() == {"name": "digits_cnn", "ready": True}
    r = client.get("/v2/models/nope/ready")
    assert r.status_code == 404 and "unknown model 'nope'" in r.json()["error"]


def test_openapi_documents_v2(client: httpx.Client) -> None:
    doc = client.get("/openapi.json").json()
    infer = doc["paths"]["/v2/models/{model_name}/infer"]["post"]
    content = infer["requestBody"]["content"]
    assert set(content) == {"application/json", "application/octet-stream"}
    assert "inputs" in content["application/json"]["schema"]["properties"]
    assert "$defs" not in str(content)  # every schema is inlined or in components
    # The injected examples are valid requests.
    for name, example in content["application/json"]["examples"].items():
        r = client.post(f"/v2/models/{name}/infer", json=example["value"])
        assert r.status_code == 200, (name, r.text)
    for path in ("/v2", "/v2/models/{model_name}", "/v2/models/{model_name}/versions/{version}"):
        assert "get" in doc["paths"][path]


async def test_both_protocols_share_the_batcher(repo_server: ServerProcess) -> None:
    """Concurrent V1 and V2 (JSON and binary) requests: each gets its own rows back."""
    rows = digits_rows(64)
    want = direct_predict("digits", {"pixels": rows})["probabilities"]

    async def v1(c: httpx.AsyncClient, i: int) -> np.ndarray:
        r = await c.post("/v1/models/digits:predict", json={"instances": [rows[i].tolist()]})
        assert r.status_code == 200, r.text
        return np.asarray(r.json()["predictions"][0])

    async def v2_json(c: httpx.AsyncClient, i: int) -> np.ndarray:
        r = await c.post(
            "/v2/models/digits/infer",
            json={"inputs": [v2_input("pixels", rows[i : i + 1], "FP32")]},
        )
        assert r.status_code == 200, r.text
        return np.asarray(r.json()["outputs"][0]["data"])

    async def v2_raw(c: httpx.AsyncClient, i: int) -> np.ndarray:
        r = await c.post(
            "/v2/models/digits/infer",
            content=rows[i].tobytes(),
            headers={"inference-header-content-length": "0"},
        )
        return np.asarray(split_binary_response(r)[1]["probabilities"][0])

    kinds = [v1, v2_json, v2_raw]
    async with httpx.AsyncClient(base_url=repo_server.url, timeout=30) as c:
        got = await asyncio.gather(*(kinds[i % 3](c, i) for i in range(len(rows))))
    for i, g in enumerate(got):
        close(g, want[i])
