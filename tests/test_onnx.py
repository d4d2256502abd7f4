"""ONNX Runtime as servekit's second backend.

Every served answer is compared with onnxruntime invoked directly (its own
``InferenceSession``, the request's rows in one run and one row per run). The models
come from ``tests/models/onnx`` (``scripts/make_onnx_models.py``). API behaviour is
tested in-process (the app with its lifespan behind ``httpx.ASGITransport``); one test
runs a real server for tritonclient.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton
from prometheus_client.parser import text_string_to_metric_families

from conftest import MODELS, REPO, ROOT, ServerProcess, digits_rows, direct_predict
from servekit.config import ModelConfig, ServerSettings
from servekit.errors import BadInput, InferenceFailed
from servekit.metrics import Metrics
from servekit.repository import ModelSource, ServedModel
from servekit.runtime import BACKENDS, ONNX, backend_for_file
from servekit.runtime import onnx as onnx_backend
from servekit.runtime.onnx import ORT_TO_NUMPY, OnnxSession, error_text, read_model_bytes
from servekit.server.app import create_app
from servekit.tensors import V2_TO_NUMPY

ONNX_MODELS = MODELS / "onnx"
TOKEN = "t"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
V2_TYPES = {"float32": "FP32", "uint8": "UINT8", "int64": "INT64", "object": "BYTES"}


def onnx_path(name: str) -> Path:
    return ONNX_MODELS / name / "1" / "model.onnx"


# -- the reference: onnxruntime alone ----------------------------------------------------


@functools.cache
def reference(name: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3  # dense_helper's default input is worth a warning each time
    return ort.InferenceSession(str(onnx_path(name)), options, providers=["CPUExecutionProvider"])


def direct(name: str, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """onnxruntime on the request's rows in one run (tensor outputs only)."""
    session = reference(name)
    names = [o.name for o in session.get_outputs() if o.type.startswith("tensor(")]
    return dict(zip(names, session.run(names, dict(feed)), strict=True))


def direct_rows(name: str, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """onnxruntime one row per run."""
    rows = len(next(iter(feed.values())))
    parts = [direct(name, {k: v[i : i + 1] for k, v in feed.items()}) for i in range(rows)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def same(got: Mapping[str, Any], want: Mapping[str, np.ndarray]) -> None:
    """Floats within rounding (other batch sizes sum in another order), others exact."""
    assert set(got) == set(want), (sorted(got), sorted(want))
    for name, w in want.items():
        g = np.asarray(got[name])
        assert g.shape == w.shape, (name, g.shape, w.shape)
        if w.dtype.kind == "f":
            np.testing.assert_allclose(g.astype(np.float64), w, rtol=1e-5, atol=1e-6)
        else:
            assert g.tolist() == w.tolist(), name


def check(name: str, got: Mapping[str, Any], feed: Mapping[str, np.ndarray]) -> None:
    same(got, direct(name, feed))
    same(got, direct_rows(name, feed))


def framed(rows: np.ndarray, height: int, width: int) -> np.ndarray:
    """Digits as images of any size: each 8x8 digit on a blank canvas, 4 pixels in."""
    out = np.zeros((len(rows), height, width, 1), np.float32)
    out[:, 4:12, 4:12, 0] = rows.reshape(-1, 8, 8)
    return out


def raw_pixels(n: int, offset: int = 0) -> np.ndarray:
    """dense_helper's input: digits as the data set's 0..16 integers."""
    return np.round(digits_rows(n, offset) * 16).astype(np.uint8)


# -- repositories and the in-process app ---------------------------------------------------


def make_repo(root: Path, models: Mapping[str, Mapping[int, Path]], **configs: str) -> Path:
    """``{name: {version: model file}}`` copied into a repository; ``configs``: config.yaml."""
    for name, versions in models.items():
        for version, source in versions.items():
            folder = root / name / str(version)
            folder.mkdir(parents=True)
            shutil.copy(source, folder / source.name)
    for name, text in configs.items():
        (root / name / "config.yaml").write_text(text)
    return root


@asynccontextmanager
async def app_client(repo: Path, **settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(ServerSettings(model_path=repo, admin_token=TOKEN, **settings))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://sk", timeout=30
        ) as c,
    ):
        yield c


async def v1(c: httpx.AsyncClient, model: str, feed: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """TF Serving's columnar form; outputs as arrays by name."""
    r = await c.post(
        f"/v1/models/{model}:predict", json={"inputs": {k: v.tolist() for k, v in feed.items()}}
    )
    assert r.status_code == 200, r.text
    out = r.json()["outputs"]
    return out if isinstance(out, dict) else {"_single": out}


async def v2_json(
    c: httpx.AsyncClient, model: str, feed: Mapping[str, np.ndarray], version: str = ""
) -> dict[str, np.ndarray]:
    body = {
        "inputs": [
            {
                "name": k,
                "shape": list(v.shape),
                "datatype": V2_TYPES[v.dtype.name],
                "data": v.reshape(-1).tolist(),
            }
            for k, v in feed.items()
        ]
    }
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    r = await c.post(path, json=body)
    assert r.status_code == 200, r.text
    outs = {}
    for o in r.json()["outputs"]:
        dtype = object if o["datatype"] == "BYTES" else V2_TO_NUMPY[o["datatype"]]
        outs[o["name"]] = np.array(o["data"], dtype=dtype).reshape(o["shape"])
    return outs


async def v2_binary(
    c: httpx.AsyncClient, model: str, feed: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """The binary tensor extension, encoded and decoded by tritonclient itself."""
    inputs = []
    for k, v in feed.items():
        i = triton.InferInput(k, list(v.shape), V2_TYPES[v.dtype.name])
        i.set_data_from_numpy(v, binary_data=True)
        inputs.append(i)
    body, header_length = triton.InferenceServerClient.generate_request_body(inputs)
    headers = {"Content-Type": "application/octet-stream"}
    if header_length is not None:
        headers["Inference-Header-Content-Length"] = str(header_length)
    r = await c.post(f"/v2/models/{model}/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    length = r.headers.get("Inference-Header-Content-Length")
    result = triton.InferenceServerClient.parse_response_body(
        r.content, header_length=int(length) if length else None
    )
    return {o["name"]: text(result.as_numpy(o["name"])) for o in result.get_response()["outputs"]}


def text(arr: np.ndarray) -> np.ndarray:
    """BYTES elements (bytes on the binary wire) as str, to compare with onnxruntime's."""
    if arr.dtype.kind != "O":
        return arr
    items = [v.decode() if isinstance(v, bytes) else v for v in arr.reshape(-1).tolist()]
    return np.array(items, dtype=object).reshape(arr.shape)


def metric(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


async def index(c: httpx.AsyncClient) -> dict[tuple[str, str], dict[str, str]]:
    r = await c.post("/v2/repository/index", headers=ADMIN)
    assert r.status_code == 200, r.text
    return {(row["name"], row["version"]): row for row in r.json()}


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.05)


def served_model(name: str, **config: object) -> ServedModel:
    return ServedModel(
        ModelSource(name, 1, onnx_path(name), None), ModelConfig.model_validate(config), Metrics()
    )


# -- the session -----------------------------------------------------------------------------

SIGNATURES = {
    "digits": ([("pixels", "float32", (-1, 64))], [("probabilities", "float32", (-1, 10))], None),
    "cnn_dynamic": (
        [("image", "float32", (-1, -1, -1, 1))],
        [("probabilities", "float32", (-1, 10))],
        None,
    ),
    # temperature (an initializer too) keeps its default: not an input of requests.
    "dense_helper": (
        [("pixels", "uint8", (-1, 64))],
        [("probabilities", "float32", (-1, 10)), ("label", "int64", (-1,))],
        None,
    ),
    "sklearn_text": (
        [("pixels", "float32", (-1, 64))],
        [("label", "object", (-1,)), ("probabilities", "float32", (-1, 10))],
        None,
    ),
    # The ZipMap output (a sequence of maps) is left out.
    "sklearn_int": ([("pixels", "float32", (-1, 64))], [("output_label", "int64", (-1,))], None),
    "words": (
        [("word", "object", (-1,))],
        [("digit", "int64", (-1,)), ("echo", "object", (-1,))],
        None,
    ),
    "fixed_batch": ([("pixels", "float32", (1, 64))], [("probabilities", "float32", (1, 10))], 1),
}


@pytest.mark.parametrize("name", list(SIGNATURES))
def test_signature_from_onnxruntime(name: str) -> None:
    inputs, outputs, native = SIGNATURES[name]
    sig = OnnxSession(read_model_bytes(onnx_path(name))).signature
    assert [(s.name, s.dtype.name, s.shape) for s in sig.inputs] == inputs
    assert [(s.name, s.dtype.name, s.shape) for s in sig.outputs] == outputs
    assert sig.native_batch == native
    assert sig.signature_key is None


def test_every_v2_datatype_has_its_onnx_type() -> None:
    assert set(ORT_TO_NUMPY.values()) == set(V2_TO_NUMPY.values())


def test_backend_entry() -> None:
    assert BACKENDS["onnx"] is ONNX
    assert (ONNX.platform, ONNX.model_file) == ("onnxruntime_onnx", "model.onnx")
    assert ONNX.runtime_name() == f"onnxruntime {ort.__version__}"
    assert backend_for_file(Path("x/model.onnx")) is ONNX
    with pytest.raises(BadInput, match=r"expected \.tflite or \.onnx"):
        backend_for_file(Path("model.pt"))


def test_session_options_follow_the_config() -> None:
    config = ModelConfig(threads_per_instance=3, onnx_graph_optimization="basic")
    session = ONNX.load(read_model_bytes(onnx_path("digits")), config)
    options = session._session.get_session_options()  # type: ignore[attr-defined]
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (3, 1)
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    for entry in ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning"):
        assert options.get_session_config_entry(entry) == "0"
    assert session._session.get_providers() == ["CPUExecutionProvider"]  # type: ignore[attr-defined]
    assert ModelConfig().onnx_graph_optimization == "all"
    with pytest.raises(ValueError, match="onnx_graph_optimization"):
        ModelConfig.model_validate({"onnx_graph_optimization": "max"})


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"this is not an ONNX model",
        (REPO / "digits" / "1" / "model.tflite").read_bytes(),
        onnx_path("digits").read_bytes()[:5000],  # truncated
    ],
    ids=["empty", "text", "tflite", "truncated"],
)
def test_read_refuses_what_is_not_onnx(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    with pytest.raises(BadInput, match=r"is not an ONNX model \(no protobuf ModelProto"):
        read_model_bytes(path)
    with pytest.raises(BadInput, match="cannot read model file"):
        read_model_bytes(tmp_path / "missing.onnx")


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("future_opset", ["ONNX Runtime (FAIL)", "Opset 99", "is till opset"]),
        ("unknown_op", ["ONNX Runtime (FAIL)", "com.example:Frobnicate", "not a registered"]),
    ],
)
def test_models_the_runtime_cannot_load_fail_in_one_line(name: str, words: list[str]) -> None:
    with pytest.raises(BadInput) as caught:
        OnnxSession(read_model_bytes(onnx_path(name)))
    reason = str(caught.value)
    assert "\n" not in reason and len(reason) <= 330
    for w in words:
        assert w in reason, reason
    for leak in ("onnxruntime_src", ".h:", ".cc:", "::"):
        assert leak not in reason, reason


@pytest.mark.parametrize(
    ("make_input", "words"),
    [
        (lambda h, T: h.make_tensor_value_info("x", T.FLOAT, None), "has no dimensions"),
        (lambda h, T: h.make_tensor_value_info("x", T.FLOAT, []), "has no dimensions"),
        (
            lambda h, T: h.make_tensor_sequence_value_info("x", T.FLOAT, None),
            "is of type seq(tensor(float)), which servekit cannot take",
        ),
    ],
    ids=["unknown-rank", "scalar", "sequence"],
)
def test_inputs_servekit_cannot_take_refuse_the_model(
    make_input: Callable[[Any, Any], Any], words: str
) -> None:
    from onnx import TensorProto, helper

    x = make_input(helper, TensorProto)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    op = "SequenceLength" if "seq" in words else "Relu"
    if op == "SequenceLength":
        y = helper.make_tensor_value_info("y", TensorProto.INT64, [])
    graph = helper.make_graph([helper.make_node(op, ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    with pytest.raises(BadInput, match=re.escape(words)):
        OnnxSession(model.SerializeToString())


def test_error_text_is_one_line_without_source_locations() -> None:
    raw = (
        "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while "
        "running Gather node. Name:'g' Status Message: /onnxruntime_src/onnxruntime/core/"
        "providers/cpu/tensor/gather.cc:112 onnxruntime::common::Status onnxruntime::"
        "GatherCopyData(const Tensor*, bool (*)(int)) indices element out of data bounds, "
        "idx=99 must be within the inclusive range [-10,9]\n"
    )
    assert error_text(RuntimeError(raw)) == (
        "ONNX Runtime (RUNTIME_EXCEPTION): Non-zero status code returned while running "
        "Gather node. Name:'g' Status Message: indices element out of data bounds, idx=99 "
        "must be within the inclusive range [-10,9]"
    )
    assert error_text(ValueError("Required inputs (['x']) are missing")) == (
        "ONNX Runtime: Required inputs (['x']) are missing"
    )
    long = "First sentence. " + "Filler words here. " * 30 + "The detail that matters."
    short = error_text(RuntimeError(long))
    assert len(short) <= 320 and short.endswith("... The detail that matters.")


def test_a_failing_run_is_inference_failed_in_one_line() -> None:
    session = OnnxSession(read_model_bytes(onnx_path("fixed_batch")))
    with pytest.raises(InferenceFailed) as caught:
        session.invoke({"pixels": digits_rows(2)})
    assert str(caught.value).startswith("ONNX Runtime (INVALID_ARGUMENT): Got invalid dimensions")
    assert "\n" not in str(caught.value)


def test_string_tensors_in_and_out() -> None:
    session = OnnxSession(read_model_bytes(onnx_path("words")))
    words = np.array(["seven", b"two", "zéro", "", 0], dtype=object)  # bytes from V2 binary
    out = session.invoke({"word": words})
    assert out["digit"].tolist() == [7, 2, -1, -1, -1]
    assert out["echo"].tolist() == ["seven", "two", "zéro", "", "0"]
    with pytest.raises(InferenceFailed, match="string element 0 is not UTF-8"):
        session.invoke({"word": np.array([b"\xff"], dtype=object)})


# -- onnxruntime not installed ---------------------------------------------------------------


def test_servekit_imports_without_onnxruntime() -> None:
    code = (
        "import sys; sys.modules['onnxruntime'] = None\n"
        "import servekit.cli, servekit.server.app, servekit.runtime\n"
        "from servekit.runtime import BACKENDS\n"
        "assert 'onnx' in BACKENDS, BACKENDS\n"
        "print(BACKENDS['onnx'].runtime_name())\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "onnxruntime (not installed)"


async def test_without_onnxruntime_an_onnx_model_fails_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime: ImportError
    onnx_backend._ort.cache_clear()
    try:
        repo = make_repo(
            tmp_path / "repo",
            {
                "tfl": {1: REPO / "digits" / "1" / "model.tflite"},
                "onx": {1: onnx_path("digits")},
            },
        )
        async with app_client(repo) as c:
            rows = await index(c)
            assert rows[("tfl", "1")]["state"] == "READY"
            assert rows[("onx", "1")]["state"] == "UNAVAILABLE"
            reason = rows[("onx", "1")]["reason"]
            assert "ONNX Runtime is not installed" in reason
            assert "pip install onnxruntime" in reason and "\n" not in reason
            r = await c.post("/v1/models/tfl:predict", json={"instances": digits_rows(1).tolist()})
            assert r.status_code == 200
    finally:
        onnx_backend._ort.cache_clear()


# -- serving -----------------------------------------------------------------------------------


def request_for(model: str, rng: np.random.Generator, offset: int) -> dict[str, np.ndarray]:
    n = int(rng.integers(1, 6))
    if model == "dense_helper":
        return {"pixels": raw_pixels(n, offset)}
    if model == "cnn_dynamic":
        size = [(16, 16), (20, 26)][offset % 2]
        return {"image": framed(digits_rows(n, offset), *size)}
    return {"pixels": digits_rows(n, offset)}


async def test_concurrent_mixed_requests_equal_onnxruntime(tmp_path: Path) -> None:
    """72 requests of 1-5 rows, four models, three encodings, all at once."""
    models = ("digits", "dense_helper", "cnn_dynamic", "sklearn_text")
    repo = make_repo(
        tmp_path / "repo",
        {m: {1: onnx_path(m)} for m in models},
        # Two instances in threads, and a short wait so that batches form.
        digits="instances: 2\nexecution: thread\nmax_queue_delay_ms: 5\n",
        dense_helper="max_queue_delay_ms: 5\n",
    )
    rng = np.random.default_rng(7)
    calls = []
    for i in range(72):
        model = models[i % len(models)]
        feed = request_for(model, rng, i)
        calls.append((model, feed, (v1, v2_json, v2_binary)[i // len(models) % 3]))
    async with app_client(repo) as c:
        results = await asyncio.gather(*(send(c, m, feed) for m, feed, send in calls))
        for (model, feed, _), got in zip(calls, results, strict=True):
            if "_single" in got:  # v1 names no output for a one-output model
                (name,) = direct(model, feed)
                got = {name: got["_single"]}
            check(model, got, feed)
        metrics = (await c.get("/metrics")).text
        for model in models:
            meta = (await c.get(f"/v2/models/{model}")).json()
            assert meta["platform"] == "onnxruntime_onnx"
            assert meta["parameters"]["batching"]["batch_safety"]["check"] == "verified"
        rows = sum(len(next(iter(f.values()))) for m, f, _ in calls if m == "digits")
        assert metric(metrics, "servekit_inferences_total", model="digits") == rows
        executions = metric(metrics, "servekit_executions_total", model="digits")
        assert 0 < executions < 18  # 18 requests: some shared an execution


async def test_tflite_and_onnx_side_by_side_with_versions_reload_and_metrics(
    tmp_path: Path,
) -> None:
    """One model with a TFLite version 1 and an ONNX version 2 (the same weights), next
    to an ONNX-only model; then versions come and go through polling and the admin API."""
    repo = make_repo(
        tmp_path / "repo",
        {
            "digits": {1: REPO / "digits" / "1" / "model.tflite", 2: onnx_path("digits")},
            "labels": {1: onnx_path("sklearn_int")},
        },
        digits="version_policy: all\n",
    )
    x = digits_rows(7, 30)
    async with app_client(repo, model_control_mode="poll", poll_interval_s=0.1) as c:
        # Per version: the platform (V2 metadata) and the runtime (v1 and V2 metadata).
        for version, platform, runtime in (
            (
                "1",
                "tensorflow_lite",
                f"ai-edge-litert {importlib.metadata.version('ai-edge-litert')}",
            ),
            ("2", "onnxruntime_onnx", f"onnxruntime {ort.__version__}"),
        ):
            v2_meta = (await c.get(f"/v2/models/digits/versions/{version}")).json()
            assert v2_meta["platform"] == platform and v2_meta["versions"] == ["1", "2"]
            v1_meta = (await c.get(f"/v1/models/digits/versions/{version}/metadata")).json()
            assert v1_meta["servekit"]["runtime"] == runtime
            assert v2_meta["parameters"]["runtime"] == runtime
            batching = v1_meta["servekit"]["batching"]
            assert batching["batch_safety"]["check"] == "verified"
            assert batching["dynamic"] and batching["buckets"][-1] == 32

        tflite = await v2_json(c, "digits", {"pixels": x}, version="1")
        onnx = await v2_json(c, "digits", {"pixels": x}, version="2")
        newest = await v2_json(c, "digits", {"pixels": x})  # no version: the newest, 2
        same(tflite, direct_predict("digits", {"pixels": x}))
        check("digits", onnx, {"pixels": x})
        check("digits", newest, {"pixels": x})
        same(onnx, tflite)  # the same weights in two runtimes
        labels = await v1(c, "labels", {"pixels": x})
        same({"output_label": np.asarray(labels["_single"])}, direct("sklearn_int", {"pixels": x}))

        metrics = (await c.get("/metrics")).text
        for version in ("1", "2"):
            assert metric(metrics, "servekit_executions_total", model="digits", version=version)
            assert metric(
                metrics,
                "servekit_model_batching",
                model="digits",
                version=version,
                check="verified",
            )
        assert metric(metrics, "servekit_inferences_total", model="digits", version="2") == 14

        # Polling picks up an ONNX version 3 and lets go of the TFLite version 1.
        (repo / "digits" / ".incoming").mkdir()
        shutil.copy(onnx_path("digits"), repo / "digits" / ".incoming" / "model.onnx")
        (repo / "digits" / ".incoming").rename(repo / "digits" / "3")
        shutil.rmtree(repo / "digits" / "1")

        async def swapped() -> bool:
            rows = await index(c)
            return (
                rows.get(("digits", "3"), {}).get("state") == "READY"
                and (
                    "digits",
                    "1",
                )
                not in rows
            )

        await until(swapped)
        check("digits", await v2_json(c, "digits", {"pixels": x}, version="3"), {"pixels": x})

        # The admin API unloads and loads an ONNX model.
        r = await c.post("/v2/repository/models/labels/unload", headers=ADMIN)
        assert r.status_code == 200, r.text
        r = await c.get("/v2/models/labels/ready")
        assert r.status_code == 404, r.text
        assert (await index(c))[("labels", "1")]["state"] == "UNAVAILABLE"
        r = await c.post(
            "/v2/repository/models/labels/load",
            headers=ADMIN,
            json={"parameters": {"config": {"onnx_graph_optimization": "basic"}}},
        )
        assert r.status_code == 200, r.text
        labels = await v1(c, "labels", {"pixels": x})
        same({"output_label": np.asarray(labels["_single"])}, direct("sklearn_int", {"pixels": x}))


async def test_variable_spatial_dims_two_image_sizes(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"cnn": {1: onnx_path("cnn_dynamic")}})
    digits = digits_rows(24, 50)
    small = [framed(digits[i : i + 3], 16, 16) for i in range(0, 24, 3)]
    large = [framed(digits[i : i + 3], 20, 26) for i in range(0, 24, 3)]
    async with app_client(repo) as c:
        meta = (await c.get("/v2/models/cnn")).json()
        assert meta["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, -1, -1, 1]}]
        assert meta["parameters"]["batching"]["batch_safety"]["check"] == "verified"
        assert meta["parameters"]["batching"]["execution"] == "thread"
        images = [img for pair in zip(small, large, strict=True) for img in pair]
        results = await asyncio.gather(*(v2_binary(c, "cnn", {"image": i}) for i in images))
        for img, got in zip(images, results, strict=True):
            check("cnn_dynamic", {"probabilities": got["probabilities"]}, {"image": img})
        # The model answers a digit the same on either canvas.
        for i in range(0, len(results), 2):
            np.testing.assert_allclose(
                results[i]["probabilities"], results[i + 1]["probabilities"], atol=1e-5
            )


async def test_fixed_batch_model_runs_one_row_per_invoke(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"fixed": {1: onnx_path("fixed_batch")}})
    requests = [digits_rows(n, 3 * n) for n in (1, 2, 3, 4, 1, 5, 2, 3)]
    async with app_client(repo) as c:
        meta = (await c.get("/v2/models/fixed")).json()
        assert meta["inputs"][0]["shape"] == [-1, 64]
        batching = meta["parameters"]["batching"]
        assert batching["batch_safety"]["check"] == "fixed" and not batching["dynamic"]
        results = await asyncio.gather(*(v2_json(c, "fixed", {"pixels": r}) for r in requests))
        for request, got in zip(requests, results, strict=True):
            want = direct_rows("fixed_batch", {"pixels": request})
            same(got, want)
            same(got, direct_predict("digits", {"pixels": request}))  # the demo's weights


async def test_broken_files_fail_with_one_line_reasons_while_others_serve(
    tmp_path: Path,
) -> None:
    broken = ("future_opset", "unknown_op", "garbage")
    repo = make_repo(
        tmp_path / "repo",
        {"digits": {1: onnx_path("digits")}, **{b: {1: onnx_path(b)} for b in broken}},
    )
    async with app_client(repo) as c:
        rows = await index(c)
        assert rows[("digits", "1")]["state"] == "READY"
        reasons = {b: rows[(b, "1")]["reason"] for b in broken}
        for b in broken:
            assert rows[(b, "1")]["state"] == "UNAVAILABLE"
            assert reasons[b].startswith("failed to load: ") and "\n" not in reasons[b]
        assert "Opset 99" in reasons["future_opset"]
        assert "com.example:Frobnicate(-1) is not a registered" in reasons["unknown_op"]
        assert "is not an ONNX model" in reasons["garbage"]
        r = await c.post("/v1/models/garbage:predict", json={"instances": [[0.0] * 64]})
        assert r.status_code == 503 and "is not an ONNX model" in r.json()["error"]
        x = digits_rows(2)
        check("digits", await v2_json(c, "digits", {"pixels": x}), {"pixels": x})


async def test_classifier_labels_as_strings_and_int64(tmp_path: Path) -> None:
    repo = make_repo(
        tmp_path / "repo",
        {"text": {1: onnx_path("sklearn_text")}, "ints": {1: onnx_path("sklearn_int")}},
    )
    x = digits_rows(6, 100)
    want_text = direct("sklearn_text", {"pixels": x})
    want_ints = direct("sklearn_int", {"pixels": x})
    assert set(want_text["label"]) <= set(NAMES)
    async with app_client(repo) as c:
        meta = (await c.get("/v2/models/text")).json()
        assert meta["outputs"] == [
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
        ]
        r = await c.post(
            "/v2/models/text/infer",
            json={
                "inputs": [
                    {
                        "name": "pixels",
                        "shape": [6, 64],
                        "datatype": "FP32",
                        "data": x.reshape(-1).tolist(),
                    }
                ]
            },
        )
        out = {o["name"]: o for o in r.json()["outputs"]}
        assert out["label"]["datatype"] == "BYTES" and out["label"]["shape"] == [6]
        assert out["label"]["data"] == want_text["label"].tolist()
        binary = await v2_binary(c, "text", {"pixels": x})
        assert binary["label"].tolist() == want_text["label"].tolist()
        np.testing.assert_allclose(binary["probabilities"], want_text["probabilities"], atol=1e-6)

        r = await c.post("/v1/models/text:predict", json={"instances": x.tolist()})
        predictions = r.json()["predictions"]
        assert [p["label"] for p in predictions] == want_text["label"].tolist()

        r = await c.post("/v1/models/ints:predict", json={"instances": x.tolist()})
        assert r.json()["predictions"] == want_ints["output_label"].tolist()
        ints = await v2_json(c, "ints", {"pixels": x})
        assert ints["output_label"].dtype == np.int64
        assert ints["output_label"].tolist() == want_ints["output_label"].tolist()


async def test_inputs_with_a_default_keep_it(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"dense": {1: onnx_path("dense_helper")}})
    x = raw_pixels(4, 9)
    async with app_client(repo) as c:
        check("dense_helper", await v2_json(c, "dense", {"pixels": x}), {"pixels": x})
        r = await c.post(
            "/v1/models/dense:predict",
            json={"inputs": {"pixels": x.tolist(), "temperature": 5.0}},
        )
        assert r.status_code == 400 and "temperature" in r.json()["error"]


async def test_string_inputs_through_v1_and_v2(tmp_path: Path) -> None:
    """A BYTES input and output, through every protocol."""
    repo = make_repo(tmp_path / "repo", {"words": {1: onnx_path("words")}})
    words = np.array(["seven", "zero", "eleven", "two"], dtype=object)
    async with app_client(repo) as c:
        meta = (await c.get("/v2/models/words")).json()
        assert meta["inputs"] == [{"name": "word", "datatype": "BYTES", "shape": [-1]}]
        for send in (v2_json, v2_binary):
            got = await send(c, "words", {"word": words})
            assert got["digit"].tolist() == [7, 0, -1, 2]
            assert got["echo"].tolist() == words.tolist()
        r = await c.post("/v1/models/words:predict", json={"instances": ["nine", "one"]})
        assert r.json()["predictions"] == [
            {"digit": 9, "echo": "nine"},
            {"digit": 1, "echo": "one"},
        ]


async def test_string_inputs_pass_the_batch_safety_check() -> None:
    served = served_model("words")
    await served.load()
    assert served.ready
    assert served.batching is not None and served.batching.check == "verified"
    words = np.array(["seven", "zero", "eleven", "two"], dtype=object)
    got = await served.infer({"word": words})
    assert got["digit"].tolist() == [7, 0, -1, 2]
    await served.unload(5)


# -- a real server, for tritonclient -------------------------------------------------------


def test_tritonclient_on_a_real_server(tmp_path: Path) -> None:
    models = {"digits": "digits", "cnn": "cnn_dynamic", "text": "sklearn_text"}
    repo = make_repo(tmp_path / "repo", {m: {1: onnx_path(f)} for m, f in models.items()})
    server = ServerProcess(str(repo), name="onnx").wait_ready()
    client = triton.InferenceServerClient(server.url.removeprefix("http://"), concurrency=8)
    try:
        for model, source in models.items():
            meta = client.get_model_metadata(model)
            assert meta["platform"] == "onnxruntime_onnx"
            assert meta["parameters"]["batching"]["batch_safety"]["check"] == "verified"
            (inp,), _, _ = SIGNATURES[source]
            shape = [-1, *inp[2][1:]]
            assert meta["inputs"] == [{"name": inp[0], "datatype": "FP32", "shape": shape}]
        rng = np.random.default_rng(11)
        sent = []
        for i in range(60):
            model = list(models)[i % 3]
            feed = request_for(models[model], rng, i)
            ((name, arr),) = feed.items()
            inp = triton.InferInput(name, list(arr.shape), "FP32")
            inp.set_data_from_numpy(arr, binary_data=True)
            sent.append((models[model], feed, client.async_infer(model, [inp])))
        for source, feed, pending in sent:
            result = pending.get_result()
            outs = {
                o["name"]: text(result.as_numpy(o["name"]))
                for o in result.get_response()["outputs"]
            }
            check(source, outs, feed)
    finally:
        client.close()
        assert server.stop() == 0, server.log()


# -- the CLI -----------------------------------------------------------------------------------


def test_inspect_an_onnx_model() -> None:
    def servekit(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "servekit", *args],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=120,
        )

    r = servekit("inspect", str(onnx_path("sklearn_text")), "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["platform"] == "onnxruntime_onnx"
    assert info["runtime"] == f"onnxruntime {ort.__version__}"
    assert [(o["name"], o["datatype"], o["shape"]) for o in info["outputs"]] == [
        ("label", "BYTES", [-1]),
        ("probabilities", "FP32", [-1, 10]),
    ]
    r = servekit("inspect", str(onnx_path("cnn_dynamic")))
    assert r.returncode == 0, r.stderr
    for word in ("image", "FP32", "[-1, -1, -1, 1]", "onnxruntime"):
        assert word in r.stdout
    r = servekit("inspect", str(onnx_path("garbage")))
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert len([line for line in r.stderr.splitlines() if line.strip()]) == 1
    assert "is not an ONNX model" in r.stderr
