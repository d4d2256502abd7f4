"""Every malformed V2 request gets a clear {"error": ...} naming what was wrong, and the
server stays healthy. Plus model readiness for a model that failed to load."""

from __future__ import annotations

import gzip
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from conftest import ServerProcess, digits_rows, model_path

ROW = digits_rows(1)
ROW_BYTES = ROW.tobytes()  # 256 bytes: [1, 64] FP32
ROW_JSON = ROW.reshape(-1).tolist()
PIXELS: dict[str, Any] = {"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": ROW_JSON}


def binary(header: dict[str, Any], tail: bytes = b"", length: int | None = None) -> dict[str, Any]:
    head = orjson.dumps(header)
    return {
        "content": head + tail,
        "headers": {
            "inference-header-content-length": str(len(head) if length is None else length),
            "content-type": "application/octet-stream",
        },
    }


def json_body(body: Any) -> dict[str, Any]:
    return {"content": orjson.dumps(body), "headers": {"content-type": "application/json"}}


def bin_pixels(size: int, shape: list[int] | None = None, datatype: str = "FP32") -> dict[str, Any]:
    return {
        "name": "pixels",
        "shape": shape or [1, 64],
        "datatype": datatype,
        "parameters": {"binary_data_size": size},
    }


def with_params(params: dict[str, Any]) -> dict[str, Any]:
    return json_body({"parameters": params, "inputs": [PIXELS]})


DIGITS = "/v2/models/digits/infer"
MULTI = "/v2/models/multi/infer"

CASES: list[tuple[str, str, dict[str, Any], int, list[str]]] = [
    # (id, path, request (content + headers), status, words the message must contain)
    # -- the binary framing
    (
        "header-length-past-body-end",
        DIGITS,
        binary({"inputs": [bin_pixels(256)]}, ROW_BYTES, length=100_000),
        400,
        ["Inference-Header-Content-Length 100000", "past the end of the body"],
    ),
    (
        "header-length-not-a-number",
        DIGITS,
        binary({"inputs": [bin_pixels(256)]}, ROW_BYTES, length=-5),
        400,
        ["Inference-Header-Content-Length", "non-negative integer", "'-5'"],
    ),
    (
        "binary-size-vs-shape-and-dtype",
        DIGITS,
        binary({"inputs": [bin_pixels(200)]}, ROW_BYTES[:200]),
        400,
        ["'pixels'", "binary_data_size is 200 bytes", "[1, 64] of FP32", "64 x 4 = 256 bytes"],
    ),
    (
        "shape-times-dtype-size-mismatch",
        DIGITS,
        binary({"inputs": [bin_pixels(256, shape=[2, 64])]}, ROW_BYTES),
        400,
        ["'pixels'", "binary_data_size is 256 bytes", "[2, 64] of FP32", "128 x 4 = 512 bytes"],
    ),
    (
        "binary-size-past-body-end",
        DIGITS,
        binary({"inputs": [bin_pixels(256)]}, ROW_BYTES[:100]),
        400,
        ["'pixels'", "binary_data_size 256 runs past the end", "only 100 byte(s)"],
    ),
    (
        "binary-bytes-left-over",
        DIGITS,
        binary({"inputs": [bin_pixels(256)]}, ROW_BYTES + b"\x00" * 8),
        400,
        ["8 byte(s) of binary data", "not used"],
    ),
    (
        "binary-size-not-an-integer",
        DIGITS,
        binary({"inputs": [bin_pixels("256")]}, ROW_BYTES),  # type: ignore[arg-type]
        400,
        ["'pixels'", "binary_data_size must be a non-negative integer", "'256'"],
    ),
    (
        "data-and-binary-both",
        DIGITS,
        binary({"inputs": [{**bin_pixels(256), "data": ROW_JSON}]}, ROW_BYTES),
        400,
        ["'pixels'", "either 'data' or binary_data_size"],
    ),
    (
        "raw-body-not-whole-rows",
        DIGITS,
        {"content": ROW_BYTES[:100], "headers": {"inference-header-content-length": "0"}},
        400,
        ["'pixels'", "whole number of rows", "64 FP32 (256 bytes each)", "got 100 bytes"],
    ),
    (
        "raw-body-multi-input",
        MULTI,
        {"content": ROW_BYTES, "headers": {"inference-header-content-length": "0"}},
        400,
        ["single-input model", "['bias', 'features']"],
    ),
    (
        "raw-body-empty",
        DIGITS,
        {"content": b"", "headers": {"inference-header-content-length": "0"}},
        400,
        ["'pixels'", "raw request body is empty"],
    ),
    (
        "non-json-header",
        DIGITS,
        {
            "content": b"\x00\x01garbage" + ROW_BYTES,
            "headers": {"inference-header-content-length": "9"},
        },
        400,
        ["malformed JSON"],
    ),
    (
        "malformed-json",
        DIGITS,
        {"content": b'{"inputs": [', "headers": {}},
        400,
        ["malformed JSON"],
    ),
    ("empty-body", DIGITS, {"content": b"", "headers": {}}, 400, ["empty request body"]),
    ("not-an-object", DIGITS, json_body([PIXELS]), 400, ["must be a JSON object", "array"]),
    (
        "unsupported-content-encoding",
        DIGITS,
        {**json_body({"inputs": [PIXELS]}), "headers": {"content-encoding": "br"}},
        400,
        ["Content-Encoding 'br' is not supported"],
    ),
    (
        "bad-gzip",
        DIGITS,
        {**json_body({"inputs": [PIXELS]}), "headers": {"content-encoding": "gzip"}},
        400,
        ["not valid gzip data"],
    ),
    # -- tensors
    (
        "unknown-datatype",
        DIGITS,
        json_body({"inputs": [{**PIXELS, "datatype": "FLOAT32"}]}),
        400,
        ["'pixels'", "unknown datatype 'FLOAT32'", "FP32", "BYTES"],
    ),
    (
        "datatype-mismatch",
        DIGITS,
        json_body({"inputs": [{**PIXELS, "datatype": "FP64"}]}),
        400,
        ["'pixels'", "expected datatype FP32, got FP64"],
    ),
    (
        "datatype-mismatch-int8",
        "/v2/models/digits_int8/infer",
        json_body({"inputs": [{**PIXELS, "datatype": "INT32", "data": [0] * 64}]}),
        400,
        ["'pixels'", "expected datatype INT8, got INT32"],
    ),
    (
        "datatype-mismatch-binary",
        DIGITS,
        binary({"inputs": [bin_pixels(512, datatype="FP64")]}, ROW.astype(np.float64).tobytes()),
        400,
        ["'pixels'", "expected datatype FP32, got FP64"],
    ),
    (
        "data-count-not-shape-product",
        DIGITS,
        json_body({"inputs": [{**PIXELS, "shape": [2, 64]}]}),
        400,
        ["'pixels'", "shape [2, 64] needs 128 value(s), got 64"],
    ),
    (
        "negative-dims",
        DIGITS,
        json_body({"inputs": [{**PIXELS, "shape": [-1, 64]}]}),
        400,
        ["'pixels'", "'shape' must be an array of non-negative integers", "[-1, 64]"],
    ),
    (
        "shape-not-a-list",
        DIGITS,
        json_body({"inputs": [{**PIXELS, "shape": "1,64"}]}),
        400,
        ["'pixels'", "'shape' must be an array of non-negative integers"],
    ),
    (
        "wrong-shape-for-model",
        DIGITS,
        json_body({"inputs": [{**PIXELS, "shape": [2, 32]}]}),
        400,
        ["'pixels'", "expected shape [-1, 64], got [2, 32]"],
    ),
    (
        "int8-out-of-range",
        "/v2/models/digits_int8/infer",
        json_body({"inputs": [{**PIXELS, "datatype": "INT8", "data": [300] * 64}]}),
        400,
        ["'pixels'", "[-128, 127]", "300"],
    ),
    (
        "fraction-for-int",
        MULTI,
        json_body(
            {
                "inputs": [
                    {**PIXELS, "name": "features"},
                    {"name": "bias", "shape": [1, 10], "datatype": "INT32", "data": [0.5] * 10},
                ]
            }
        ),
        400,
        ["'bias'", "int32", "fractional"],
    ),
    (
        "strings-for-numbers",
        DIGITS,
        json_body({"inputs": [{**PIXELS, "data": ["a"] * 64}]}),
        400,
        ["'pixels'", "non-numeric"],
    ),
    (
        "data-not-a-list",
        DIGITS,
        json_body({"inputs": [{**PIXELS, "data": 3.0}]}),
        400,
        ["'pixels'", "'data' must be an array, got number"],
    ),
    (
        "no-data",
        DIGITS,
        json_body({"inputs": [{k: v for k, v in PIXELS.items() if k != "data"}]}),
        400,
        ["'pixels'", "no 'data' and no binary_data_size"],
    ),
    ("missing-inputs-field", DIGITS, json_body({"id": "x"}), 400, ["missing 'inputs'", "pixels"]),
    (
        "inputs-not-a-list",
        DIGITS,
        json_body({"inputs": PIXELS}),
        400,
        ["'inputs' must be an array", "object"],
    ),
    (
        "missing-input",
        MULTI,
        json_body({"inputs": [{**PIXELS, "name": "features"}]}),
        400,
        ["missing input(s) ['bias']", "the model takes ['bias', 'features']"],
    ),
    (
        "unknown-input",
        DIGITS,
        json_body({"inputs": [PIXELS, {**PIXELS, "name": "extra"}]}),
        400,
        ["unknown input(s)", "extra", "pixels"],
    ),
    (
        "duplicate-input",
        DIGITS,
        json_body({"inputs": [PIXELS, PIXELS]}),
        400,
        ["input 'pixels' is given twice"],
    ),
    (
        "empty-batch",
        DIGITS,
        json_body({"inputs": [{**PIXELS, "shape": [0, 64], "data": []}]}),
        400,
        ["empty batch"],
    ),
    (
        "over-max-batch",
        DIGITS,
        json_body({"inputs": [{**PIXELS, "shape": [4097, 64], "data": ROW_JSON * 4097}]}),
        400,
        ["4097 rows", "max_request_rows 4096"],
    ),
    # -- outputs
    (
        "unknown-output",
        DIGITS,
        json_body({"inputs": [PIXELS], "outputs": [{"name": "nope"}]}),
        400,
        ["unknown output 'nope'", "['probabilities']"],
    ),
    (
        "output-binary-not-bool",
        DIGITS,
        json_body(
            {
                "inputs": [PIXELS],
                "outputs": [{"name": "probabilities", "parameters": {"binary_data": "yes"}}],
            }
        ),
        400,
        ["output 'probabilities'", "'binary_data' must be true or false", "'yes'"],
    ),
    (
        "classification-unsupported",
        DIGITS,
        json_body(
            {
                "inputs": [PIXELS],
                "outputs": [{"name": "probabilities", "parameters": {"classification": 3}}],
            }
        ),
        400,
        ["output 'probabilities'", "'classification' is not supported"],
    ),
    # -- request parameters
    ("timeout-negative", DIGITS, with_params({"timeout": -5}), 400, ["'timeout'", "-5"]),
    ("timeout-string", DIGITS, with_params({"timeout": "10"}), 400, ["'timeout'", "'10'"]),
    ("timeout-fraction", DIGITS, with_params({"timeout": 1.5}), 400, ["'timeout'", "1.5"]),
    ("timeout-bool", DIGITS, with_params({"timeout": True}), 400, ["'timeout'", "True"]),
    ("priority-negative", DIGITS, with_params({"priority": -1}), 400, ["'priority'", "-1"]),
    ("priority-string", DIGITS, with_params({"priority": "high"}), 400, ["'priority'", "'high'"]),
    ("priority-fraction", DIGITS, with_params({"priority": 1.5}), 400, ["'priority'", "1.5"]),
    (
        "binary-output-not-bool",
        DIGITS,
        with_params({"binary_data_output": 1}),
        400,
        ["parameter 'binary_data_output' must be true or false", "got 1"],
    ),
    (
        "sequence-unsupported",
        DIGITS,
        with_params({"sequence_id": 7}),
        400,
        ["'sequence_id' is not supported"],
    ),
    ("parameters-not-object", DIGITS, with_params([1]), 400, ["'parameters'", "JSON object"]),  # type: ignore[arg-type]
    (
        "id-not-string",
        DIGITS,
        json_body({"id": 5, "inputs": [PIXELS]}),
        400,
        ["'id' must be a string, got integer"],
    ),
    # -- models and versions
    ("unknown-model", "/v2/models/nope/infer", json_body({"inputs": [PIXELS]}), 404, ["'nope'"]),
    (
        "unknown-version",
        "/v2/models/digits/versions/7/infer",
        json_body({"inputs": [PIXELS]}),
        404,
        ["no version 7"],
    ),
    (
        "bad-version",
        "/v2/models/digits/versions/x/infer",
        json_body({"inputs": [PIXELS]}),
        404,
        ["has no version"],
    ),
]


@pytest.mark.parametrize(
    ("path", "request_", "status", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_malformed_request_is_a_clear_4xx(
    client: httpx.Client, path: str, request_: dict[str, Any], status: int, words: list[str]
) -> None:
    r = client.post(path, content=request_["content"], headers=request_["headers"])
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    message = r.json()["error"]
    for w in words:
        assert w in message, f"{w!r} not in {message!r}"
    # The server is still healthy and still serves.
    assert client.get("/v2/health/ready").status_code == 200
    ok = client.post(DIGITS, json={"inputs": [PIXELS]})
    assert ok.status_code == 200, ok.text


def test_metadata_errors(client: httpx.Client) -> None:
    r = client.get("/v2/models/nope")
    assert r.status_code == 404 and "unknown model 'nope'" in r.json()["error"]
    r = client.get("/v2/models/digits/versions/3")
    assert r.status_code == 404 and "no version 3" in r.json()["error"]
    r = client.get("/v2/models/digits/versions/x/ready")
    assert r.status_code == 404 and "no version 'x'" in r.json()["error"]


def test_gzip_bomb_is_refused(client: httpx.Client) -> None:
    # 100 MB of zeros compresses to ~100 kB; the body limit (64 MB) holds after inflating.
    bomb = gzip.compress(b"\x00" * (100 * 1024 * 1024), compresslevel=9)
    r = client.post(DIGITS, content=bomb, headers={"content-encoding": "gzip"})
    assert r.status_code == 413, r.text
    assert "once decompressed" in r.json()["error"]
    assert client.get("/v2/health/ready").status_code == 200


# -- a model that failed to load ----------------------------------------------------------


@pytest.fixture(scope="module")
def broken_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A repository with one good model and one whose file is not a TFLite model."""
    repo: Path = tmp_path_factory.mktemp("repo")
    (repo / "good" / "1").mkdir(parents=True)
    shutil.copy(model_path("digits"), repo / "good" / "1" / "model.tflite")
    (repo / "broken" / "1").mkdir(parents=True)
    (repo / "broken" / "1" / "model.tflite").write_bytes(b"this is not a flatbuffer" * 10)
    # Strict readiness (Triton's default; servekit's is off): a failed model keeps the
    # server not ready.
    server = ServerProcess(str(repo), env={"SERVEKIT_STRICT_READINESS": "true"}, name="v2-broken")
    deadline = time.monotonic() + 60
    while True:  # not "ready" (a model failed): wait until the good one is
        if server.proc.poll() is not None:
            raise RuntimeError(f"server exited:\n{server.log()}")
        try:
            if httpx.get(f"{server.url}/v2/models/good/ready", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(server.log())
        time.sleep(0.1)
    yield server
    server.stop()


def test_not_ready_model(broken_server: ServerProcess) -> None:
    tc = triton.InferenceServerClient(broken_server.url.removeprefix("http://"))
    try:
        assert tc.is_server_live()
        assert not tc.is_server_ready()
        assert tc.is_model_ready("good")
        assert not tc.is_model_ready("broken")
        assert not tc.is_model_ready("broken", "1")
        with pytest.raises(InferenceServerException, match="broken"):
            tc.get_model_metadata("broken")
    finally:
        tc.close()
    with httpx.Client(base_url=broken_server.url) as c:
        r = c.get("/v2/models/broken/ready")
        assert r.status_code == 400 and r.json() == {"name": "broken", "ready": False}
        r = c.get("/v2/models/broken/versions/1/ready")
        assert r.status_code == 400 and r.json() == {"name": "broken", "ready": False}
        r = c.get("/v2/models/broken/versions/1")
        assert r.status_code == 503 and "broken" in r.json()["error"]
        r = c.post("/v2/models/broken/infer", json={"inputs": [PIXELS]})
        assert r.status_code == 503 and "broken" in r.json()["error"]
        assert "retry-after" not in r.headers  # failed for good: no invitation to retry
        r = c.post("/v2/models/good/infer", json={"inputs": [PIXELS]})
        assert r.status_code == 200, r.text
