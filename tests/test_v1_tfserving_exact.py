"""The TF Serving REST API as TF Serving writes it, in-process: status and metadata in
TF Serving's schema exactly (servekit's own details apart, under ``servekit``),
``NaN`` / ``Infinity`` / ``-Infinity`` in requests and responses, and the paths
servekit does not serve (Classify, Regress, version labels) answering what to use."""

from __future__ import annotations

import importlib.metadata
import json
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from conftest import REPO, digits_rows, direct_predict
from servekit.config import ServerSettings
from servekit.server import tfs
from servekit.server.app import create_app


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """digits and multi as in tests/models/repo, and copies of them that take NaN and
    infinities (``allow_nonfinite: true``)."""
    root = tmp_path_factory.mktemp("tfs-rest") / "repo"
    for name in ("digits", "multi", "digits_int8"):
        shutil.copytree(REPO / name, root / name)
    for name, copy in (("digits", "digits_nf"), ("multi", "multi_nf")):
        shutil.copytree(REPO / name, root / copy)
        config = root / copy / "config.yaml"
        text = config.read_text() if config.exists() else ""
        config.write_text(text + "\nallow_nonfinite: true\n")
    return root


@asynccontextmanager
async def app_client(repo: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(ServerSettings(model_path=repo))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sk") as c,
    ):
        yield c


@pytest.fixture()
async def client(repo: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(repo) as c:
        yield c


def dims(*sizes: int) -> dict[str, Any]:
    return {"dim": [{"size": str(s), "name": ""} for s in sizes], "unknown_rank": False}


# -- status and metadata ------------------------------------------------------------------


async def test_metadata_is_tf_servings_schema_exactly(client: httpx.AsyncClient) -> None:
    for path in ("/v1/models/multi/metadata", "/v1/models/multi/versions/1/metadata"):
        r = await client.get(path)
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        body = r.json()
        assert set(body) == {"model_spec", "metadata", "servekit"}
        assert body["model_spec"] == {"name": "multi", "signature_name": "", "version": "1"}
        assert body["metadata"] == {
            "signature_def": {
                "signature_def": {
                    "serving_default": {
                        "inputs": {
                            "features": {
                                "dtype": "DT_FLOAT",
                                "tensor_shape": dims(-1, 64),
                                "name": "serving_default_features:0",
                            },
                            "bias": {
                                "dtype": "DT_INT32",
                                "tensor_shape": dims(-1, 10),
                                "name": "serving_default_bias:0",
                            },
                        },
                        "outputs": {
                            "label": {
                                "dtype": "DT_INT64",
                                "tensor_shape": dims(-1),
                                "name": "StatefulPartitionedCall:0",
                            },
                            "logits": {
                                "dtype": "DT_FLOAT",
                                "tensor_shape": dims(-1, 10),
                                "name": "StatefulPartitionedCall:1",
                            },
                        },
                        "method_name": "tensorflow/serving/predict",
                    }
                }
            }
        }
    # servekit's own details, apart from TF Serving's.
    mine = body["servekit"]
    litert = f"ai-edge-litert {importlib.metadata.version('ai-edge-litert')}"
    assert mine["runtime"] == litert and mine["platform"] == "tensorflow_lite"
    assert mine["batching"]["max_batch_size"] == 32
    assert sorted(s["name"] for s in mine["inputs"]) == ["bias", "features"]
    q = (await client.get("/v1/models/digits_int8/metadata")).json()
    assert q["servekit"]["inputs"][0]["quantization"]["scale"] > 0
    sig = q["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sig["inputs"]["pixels"]["dtype"] == sig["outputs"]["probabilities"]["dtype"] == "DT_INT8"


async def test_metadata_parses_as_tf_servings_own_message(client: httpx.AsyncClient) -> None:
    """The signature part is proto3 JSON of tensorflow.serving.SignatureDefMap: TF
    Serving's generated class reads it without ignoring anything."""
    from google.protobuf import json_format
    from tensorflow_serving.apis import get_model_metadata_pb2

    body = (await client.get("/v1/models/digits/metadata")).json()
    message = json_format.ParseDict(
        body["metadata"]["signature_def"], get_model_metadata_pb2.SignatureDefMap()
    )
    info = message.signature_def["serving_default"].inputs["pixels"]
    assert [d.size for d in info.tensor_shape.dim] == [-1, 64]
    again = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    signature = again["signature_def"]["serving_default"]
    assert signature.pop("defaults") == {}  # newer TensorFlow's field, never set here
    assert again == body["metadata"]["signature_def"]


async def test_status_is_tf_servings_schema_exactly(client: httpx.AsyncClient) -> None:
    want = {
        "model_version_status": [
            {
                "version": "1",
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
        ]
    }
    assert (await client.get("/v1/models/digits")).json() == want
    assert (await client.get("/v1/models/digits/versions/1")).json() == want


# -- NaN and infinities ------------------------------------------------------------------


def tf_serving_json(obj: Any) -> str:
    """JSON with TF Serving's bare NaN / Infinity / -Infinity (Python's json writes and
    reads them by default)."""
    return json.dumps(obj)


NONFINITE_ROW = [np.nan, np.inf, -np.inf] + [0.5] * 61


async def test_nonfinite_numbers_in_and_out(client: httpx.AsyncClient) -> None:
    x = np.array([NONFINITE_ROW, digits_rows(1)[0].tolist()], np.float32)
    body = tf_serving_json({"instances": x.tolist()})
    assert "NaN, Infinity, -Infinity" in body
    r = await client.post("/v1/models/digits_nf:predict", content=body)
    assert r.status_code == 200, r.text
    assert "NaN" in r.text and "null" not in r.text
    got = np.array(json.loads(r.text)["predictions"], dtype=np.float32)
    want = direct_predict("digits", {"pixels": x})["probabilities"]
    assert np.isnan(got[0]).all() and np.isnan(want[0]).all()
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-6)

    # One infinite feature drives multi's logits to Infinity and -Infinity; the label
    # (int64) is a plain number. Row format, then columnar.
    features = np.zeros((1, 64), np.float32)
    features[0, 0] = np.inf
    bias = np.zeros((1, 10), np.int32)
    want_multi = direct_predict("multi", {"features": features, "bias": bias})
    assert {np.inf, -np.inf} == set(want_multi["logits"].ravel().tolist())
    rows = {"instances": [{"features": features[0].tolist(), "bias": bias[0].tolist()}]}
    r = await client.post("/v1/models/multi_nf:predict", content=tf_serving_json(rows))
    assert r.status_code == 200, r.text
    assert "-Infinity" in r.text and "Infinity" in r.text.replace("-Infinity", "")
    (prediction,) = json.loads(r.text)["predictions"]
    np.testing.assert_array_equal(
        np.array(prediction["logits"], np.float32), want_multi["logits"][0]
    )
    assert prediction["label"] == int(want_multi["label"][0])
    cols = {"inputs": {"features": features.tolist(), "bias": bias.tolist()}}
    r = await client.post("/v1/models/multi_nf:predict", content=tf_serving_json(cols))
    assert r.status_code == 200, r.text
    out = json.loads(r.text)["outputs"]
    np.testing.assert_array_equal(np.array(out["logits"], np.float32), want_multi["logits"])
    assert out["label"] == want_multi["label"].tolist()


async def test_nonfinite_input_refused_where_the_model_does_not_take_it(
    client: httpx.AsyncClient,
) -> None:
    body = tf_serving_json({"instances": [NONFINITE_ROW]})
    r = await client.post("/v1/models/digits:predict", content=body)
    assert r.status_code == 400
    assert "'pixels' contains NaN or infinity" in r.json()["error"]
    assert "allow_nonfinite" in r.json()["error"]
    # An integer input takes no NaN even where the model takes non-finite floats.
    body = tf_serving_json({"inputs": {"features": [NONFINITE_ROW], "bias": [[np.nan] * 10]}})
    r = await client.post("/v1/models/multi_nf:predict", content=body)
    assert r.status_code == 400 and "'bias'" in r.json()["error"]


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ('{"instances": [[NaN]], "instances": [[1.0]]}', ["duplicate keys"]),
        ('{"instances": [[NaN, 1e400]]}', ["malformed JSON"]),
        ('{"instances": [[1.0, "NaN"]', ["malformed JSON"]),
        ('{"instances": [[nan]]}', ["malformed JSON"]),
        ('{"instances": [[Infinity]] junk}', ["malformed JSON"]),
    ],
    ids=["duplicate-key", "too-large", "nan-in-a-string", "lowercase-nan", "trailing-junk"],
)
async def test_nonfinite_words_keep_json_strict(
    client: httpx.AsyncClient, body: str, words: list[str]
) -> None:
    r = await client.post("/v1/models/digits_nf:predict", content=body)
    assert r.status_code == 400, r.text
    for w in words:
        assert w in r.json()["error"]


def test_jsonable_writes_tf_servings_words() -> None:
    from servekit.server.encoding import dumps

    arr = np.array([[np.nan, np.inf], [-np.inf, 0.1]], np.float32)
    assert dumps(tfs.jsonable(arr)) == b"[[NaN,Infinity],[-Infinity,0.1]]"
    half = np.array([np.nan, -np.inf, 0.5], np.float16)
    assert dumps(tfs.jsonable(half)) == b"[NaN,-Infinity,0.5]"
    assert dumps(tfs.jsonable(np.array([0.1, 2.0], np.float32))) == b"[0.1,2.0]"
    strings = np.array([[b"a", "\u00e9".encode()]], dtype=object)
    assert dumps(tfs.jsonable(strings)) == '[["a","\u00e9"]]'.encode()


# -- what TF Serving has and servekit does not ---------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status", "words"),
    [
        ("POST", "/v1/models/digits:classify", 501, ["Classify", "/v1/models/digits:predict"]),
        ("POST", "/v1/models/digits:regress", 501, ["Regress", "/v1/models/digits:predict"]),
        (
            "POST",
            "/v1/models/digits/versions/1:classify",
            501,
            ["Classify", "/v1/models/digits/versions/1:predict"],
        ),
        ("POST", "/v1/models/digits/versions/1:regress", 501, ["Regress"]),
        (
            "GET",
            "/v1/models/digits/labels/stable",
            400,
            ["no version labels", "'stable'", "/v1/models/digits/versions/<version>", "[1]"],
        ),
        (
            "GET",
            "/v1/models/digits/labels/canary/metadata",
            400,
            ["'canary'", "/versions/<version>/metadata"],
        ),
        (
            "POST",
            "/v1/models/digits/labels/stable:predict",
            400,
            ["no version labels", "/versions/<version>:predict"],
        ),
        ("POST", "/v1/models/digits/labels/stable:classify", 501, ["Classify"]),
        ("GET", "/v1/models/nope/labels/stable", 404, ["unknown model 'nope'"]),
    ],
)
async def test_unsupported_paths_say_what_to_use(
    client: httpx.AsyncClient, method: str, path: str, status: int, words: list[str]
) -> None:
    r = await client.request(method, path, json={"instances": [[0.0] * 64]})
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    message = r.json()["error"]
    for w in words:
        assert w in message, f"{w!r} not in {message!r}"


def test_unsupported_paths_stay_out_of_the_openapi_document(repo: Path) -> None:
    paths = create_app(ServerSettings(model_path=repo)).openapi()["paths"]
    assert not [p for p in paths if "labels" in p or "classify" in p or "regress" in p]
    assert "/v1/models/{model_name}/metadata" in paths
