"""Requests larger than max_batch_size: whole evaluation sets, as TF Serving takes them.

The data plane splits such a request into chunks of max_batch_size rows and joins the
answers in order, up to the model's max_request_rows. Every answer here is compared with
the model's runtime invoked directly, one row per invoke, while other requests run at
the same time; through every protocol (TF Serving REST, V2 JSON and binary, KServe
gRPC), on batchable, unbatchable (fixed batch 1) and variable-inner-dimension models.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc.aio as tga
import tritonclient.http as triton
from ai_edge_litert.interpreter import Interpreter
from prometheus_client.parser import text_string_to_metric_families
from sklearn.datasets import load_digits
from tritonclient.utils import InferenceServerException

from conftest import MODELS, REPO, free_port
from servekit.config import ServerSettings
from servekit.server.app import create_app

ROWS = 450


def digits(n: int, offset: int = 0) -> np.ndarray:
    """Distinct real rows: scikit-learn's 1,797 bundled digits, scaled to [0, 1]."""
    x = load_digits().data.astype(np.float32) / 16
    return x[offset : offset + n]


def multi_inputs(n: int, offset: int = 0) -> dict[str, np.ndarray]:
    bias = (np.arange(n * 10, dtype=np.int32).reshape(n, 10) + offset) % 3
    return {"features": digits(n, offset), "bias": bias.astype(np.int32)}


def framed(rows: np.ndarray, height: int, width: int) -> np.ndarray:
    """Digits on a blank canvas of any size (cnn_dynamic's variable inner dimensions)."""
    out = np.zeros((len(rows), height, width, 1), np.float32)
    out[:, 4:12, 4:12, 0] = rows.reshape(-1, 8, 8)
    return out


def tflite_rows(
    name: str, feed: Mapping[str, np.ndarray], repo: Path = REPO
) -> dict[str, np.ndarray]:
    """ai-edge-litert's own signature runner, one row per invoke: no servekit code."""
    runner = Interpreter(model_path=str(repo / name / "1" / "model.tflite")).get_signature_runner()
    n = len(next(iter(feed.values())))
    parts = [runner(**{k: v[i : i + 1] for k, v in feed.items()}) for i in range(n)]
    return {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in parts[0]}


def onnx_rows(name: str, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """onnxruntime itself, one row per run."""
    session = ort.InferenceSession(
        str(MODELS / "onnx" / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in session.get_outputs()]
    n = len(next(iter(feed.values())))
    parts = [session.run(names, {k: v[i : i + 1] for k, v in feed.items()}) for i in range(n)]
    return {k: np.concatenate([p[j] for p in parts]) for j, k in enumerate(names)}


def same(got: Mapping[str, Any], want: Mapping[str, np.ndarray]) -> None:
    """Floats within rounding (a batch sums in another order than one row), others exact."""
    if set(got) == {"_single"} and len(want) == 1:  # v1's one unnamed output
        got = {next(iter(want)): got["_single"]}
    assert set(got) == set(want), (sorted(got), sorted(want))
    for name, w in want.items():
        g = np.asarray(got[name])
        assert g.shape == w.shape, (name, g.shape, w.shape)
        if w.dtype.kind == "f":
            np.testing.assert_allclose(g.astype(np.float64), w, rtol=1e-5, atol=1e-6)
        else:
            assert g.tolist() == w.tolist(), name


# -- one in-process server: HTTP through ASGI, gRPC on a free port ---------------------------


class Served:
    def __init__(self, http: httpx.AsyncClient, grpc_url: str) -> None:
        self.http = http
        self.grpc_url = grpc_url

    async def v1_columns(self, model: str, feed: Mapping[str, np.ndarray]) -> dict[str, Any]:
        body = {"inputs": {k: v.tolist() for k, v in feed.items()}}
        r = await self.http.post(f"/v1/models/{model}:predict", json=body)
        assert r.status_code == 200, r.text
        out = r.json()["outputs"]
        return out if isinstance(out, dict) else {"_single": out}

    async def v1_rows(self, model: str, feed: Mapping[str, np.ndarray]) -> dict[str, Any]:
        n = len(next(iter(feed.values())))
        instances = [{k: v[i].tolist() for k, v in feed.items()} for i in range(n)]
        r = await self.http.post(f"/v1/models/{model}:predict", json={"instances": instances})
        assert r.status_code == 200, r.text
        predictions = r.json()["predictions"]
        assert len(predictions) == n
        if not isinstance(predictions[0], dict):
            return {"_single": predictions}
        return {k: [p[k] for p in predictions] for k in predictions[0]}

    async def v2_json(self, model: str, feed: Mapping[str, np.ndarray]) -> dict[str, Any]:
        r = await self.http.post(f"/v2/models/{model}/infer", json=v2_body(feed))
        assert r.status_code == 200, r.text
        return {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in r.json()["outputs"]}

    async def v2_binary(self, model: str, feed: Mapping[str, np.ndarray]) -> dict[str, Any]:
        """The binary tensor extension, encoded and decoded by tritonclient itself."""
        inputs = []
        for k, v in feed.items():
            i = triton.InferInput(k, list(v.shape), V2_TYPES[v.dtype.name])
            i.set_data_from_numpy(v, binary_data=True)
            inputs.append(i)
        body, length = triton.InferenceServerClient.generate_request_body(inputs)
        headers = {"Content-Type": "application/octet-stream"}
        if length is not None:
            headers["Inference-Header-Content-Length"] = str(length)
        r = await self.http.post(f"/v2/models/{model}/infer", content=body, headers=headers)
        assert r.status_code == 200, r.text
        got = r.headers.get("Inference-Header-Content-Length")
        result = triton.InferenceServerClient.parse_response_body(
            r.content, header_length=int(got) if got else None
        )
        return {o["name"]: result.as_numpy(o["name"]) for o in result.get_response()["outputs"]}

    async def grpc(self, model: str, feed: Mapping[str, np.ndarray], **kw: Any) -> dict[str, Any]:
        async with tga.InferenceServerClient(self.grpc_url) as client:
            inputs = []
            for k, v in feed.items():
                i = tga.InferInput(k, list(v.shape), V2_TYPES[v.dtype.name])
                i.set_data_from_numpy(v)
                inputs.append(i)
            result = await client.infer(model, inputs, **kw)
            return {o.name: result.as_numpy(o.name) for o in result.get_response().outputs}

    async def metric(self, name: str, **labels: str) -> float:
        text = (await self.http.get("/metrics")).text
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    return float(s.value)
        return 0.0


V2_TYPES = {"float32": "FP32", "int32": "INT32", "int64": "INT64"}


def v2_body(feed: Mapping[str, np.ndarray]) -> dict[str, Any]:
    return {
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


@asynccontextmanager
async def serving(repo: Path) -> AsyncIterator[Served]:
    port = free_port()
    app = create_app(ServerSettings(model_path=repo, grpc_port=port))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://sk", timeout=60
        ) as c,
    ):
        yield Served(c, f"127.0.0.1:{port}")


def make_repo(root: Path, **configs: str) -> Path:
    for name in ("digits", "multi", "fixed"):
        shutil.copytree(REPO / name, root / name)
    shutil.copytree(MODELS / "onnx" / "cnn_dynamic", root / "cnn")
    shutil.copytree(MODELS / "slow" / "slow", root / "slow")
    shutil.copytree(MODELS / "unsafe" / "row0", root / "row0")
    for name, text in configs.items():
        (root / name / "config.yaml").write_text(text)
    return root


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    return make_repo(
        tmp_path / "repo",
        # Two instances in threads and a short wait: chunks and small requests share
        # batches and run side by side.
        multi="max_batch_size: 32\ninstances: 2\nexecution: thread\nmax_queue_delay_ms: 2\n",
        fixed="instances: 2\n",
        cnn="max_batch_size: 16\n",
        slow="max_batch_size: 4\ninstances: 1\n",
    )


# -- the answers -----------------------------------------------------------------------------


async def test_450_rows_equal_the_runtime_row_by_row_on_every_protocol(repo: Path) -> None:
    x = digits(ROWS, 100)
    m = multi_inputs(ROWS, 300)
    want_digits = tflite_rows("digits", {"pixels": x})
    want_multi = tflite_rows("multi", m)
    want_fixed = tflite_rows("fixed", {"pixels": x[:ROWS]})
    small = [digits(1 + i % 5, 1000 + 7 * i) for i in range(24)]
    async with serving(repo) as s:
        meta = (await s.http.get("/v2/models/fixed")).json()
        assert meta["parameters"]["batching"]["dynamic"] is False  # one row per invoke
        assert (await s.http.get("/v2/models/digits")).json()["parameters"]["batching"][
            "max_batch_size"
        ] == 32
        large = [
            s.v1_columns("digits", {"pixels": x}),
            s.v1_rows("multi", m),
            s.v2_json("digits", {"pixels": x}),
            s.v2_binary("multi", m),
            s.grpc("digits", {"pixels": x}),
            s.grpc("multi", m),
            s.v2_binary("fixed", {"pixels": x}),
            s.v1_columns("fixed", {"pixels": x}),
        ]
        # Small requests at the same time, into the same queues.
        others = [
            (s.v2_binary, s.grpc, s.v1_columns)[i % 3]("digits", {"pixels": rows})
            for i, rows in enumerate(small)
        ]
        results = await asyncio.gather(*large, *others)
    got = dict(zip(range(len(large)), results, strict=False))
    same(got[0], want_digits)
    same(got[1], want_multi)
    same(got[2], want_digits)
    same(got[3], want_multi)
    same(got[4], want_digits)
    same(got[5], want_multi)
    same(got[6], want_fixed)
    same(got[7], want_fixed)
    for rows, answer in zip(small, results[len(large) :], strict=True):
        same(answer, tflite_rows("digits", {"pixels": rows}))


async def test_a_split_request_counts_once(repo: Path) -> None:
    """The request metrics (and Triton's statistics, made from them) count requests:
    a 450-row request is one success of 450 inferences, whatever its chunks."""
    async with serving(repo) as s:
        await s.v2_binary("digits", {"pixels": digits(ROWS)})
        await s.v2_binary("digits", {"pixels": digits(3)})
        ok = await s.metric("servekit_requests_total", model="digits", outcome="success", reason="")
        assert ok == 2, ok
        assert await s.metric("servekit_inferences_total", model="digits") == ROWS + 3
        stats = (await s.http.get("/v2/models/digits/stats")).json()["model_stats"][0]
        assert stats["inference_stats"]["success"]["count"] == 2, stats
        assert stats["inference_count"] == ROWS + 3, stats


async def test_a_model_that_failed_the_batch_safety_check(repo: Path) -> None:
    """row0 adds the batch's row 0 to every row: the check at load finds it and serves
    it one row per invoke. A 450-row request split into chunks must still answer every
    row alone (stacked, each row would get another row added)."""
    x = np.random.default_rng(3).standard_normal((ROWS, 8)).astype(np.float32)
    want = tflite_rows("row0", {"x": x}, MODELS / "unsafe")
    async with serving(repo) as s:
        meta = (await s.http.get("/v2/models/row0")).json()["parameters"]["batching"]
        assert meta["batch_safety"]["check"] == "unsafe" and not meta["batch_safety"]["batched"]
        got = await asyncio.gather(
            s.v2_binary("row0", {"x": x}), s.grpc("row0", {"x": x[::-1].copy()})
        )
    same(got[0], want)
    same(got[1], {k: v[::-1] for k, v in want.items()})


async def test_variable_inner_dimensions(repo: Path) -> None:
    """cnn_dynamic (ONNX, image [N, H, W, 1]): a 450-row request of one size split into
    chunks of 16, while requests of another size arrive (only one size stacks)."""
    big = framed(digits(ROWS, 500), 16, 16)
    others = [framed(digits(3, 20 * i), 20, 26) for i in range(8)]
    async with serving(repo) as s:
        results = await asyncio.gather(
            s.v2_binary("cnn", {"image": big}),
            *(s.v2_binary("cnn", {"image": o}) for o in others),
            s.grpc("cnn", {"image": framed(digits(ROWS, 900), 20, 26)}),
        )
    same(results[0], onnx_rows("cnn_dynamic", {"image": big}))
    for o, got in zip(others, results[1:-1], strict=True):
        same(got, onnx_rows("cnn_dynamic", {"image": o}))
    same(results[-1], onnx_rows("cnn_dynamic", {"image": framed(digits(ROWS, 900), 20, 26)}))


# -- the limits ------------------------------------------------------------------------------


async def test_4097_rows_is_a_400_naming_the_limit_on_every_protocol(repo: Path) -> None:
    x = np.resize(digits(1797), (4097, 64))
    message = "request of 4097 rows is over this model's max_request_rows 4096"
    async with serving(repo) as s:
        r = await s.http.post("/v2/models/digits/infer", json=v2_body({"pixels": x}))
        assert r.status_code == 400 and message in r.json()["error"], r.text
        r = await s.http.post("/v1/models/digits:predict", json={"inputs": x.tolist()})
        assert r.status_code == 400 and message in r.json()["error"], r.text
        with pytest.raises(InferenceServerException) as e:
            await s.grpc("digits", {"pixels": x})
        assert e.value.status() == "StatusCode.INVALID_ARGUMENT" and message in str(e.value)
        # 4096 rows are served (128 chunks of 32), the same as row by row.
        got = await s.v2_binary("digits", {"pixels": x[:4096]})
        same(got, tflite_rows("digits", {"pixels": x[:4096]}))
        assert await s.metric("servekit_requests_total", model="digits", reason="invalid") == 3


async def test_max_request_rows_is_configurable(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", digits="max_batch_size: 8\nmax_request_rows: 20\n")
    async with serving(repo) as s:
        meta = (await s.http.get("/v2/models/digits")).json()["parameters"]["batching"]
        assert meta["max_batch_size"] == 8
        same(
            await s.v2_json("digits", {"pixels": digits(20)}),
            tflite_rows("digits", {"pixels": digits(20)}),
        )
        r = await s.http.post("/v2/models/digits/infer", json=v2_body({"pixels": digits(21)}))
        assert r.status_code == 400, r.text
        assert r.json()["error"].startswith(
            "request of 21 rows is over this model's max_request_rows 20; send at most 20"
        )


async def test_a_bad_row_fails_the_whole_request_naming_the_request(repo: Path) -> None:
    x = digits(ROWS)
    x[300, 5] = np.nan  # in the tenth chunk
    async with serving(repo) as s:
        with pytest.raises(InferenceServerException) as e:
            await s.grpc("digits", {"pixels": x})
        assert e.value.status() == "StatusCode.INVALID_ARGUMENT", e.value
        assert "input 'pixels' contains NaN or infinity" in str(e.value)
        r = await s.http.post(
            "/v2/models/multi/infer",
            json=v2_body({"features": digits(ROWS), "bias": np.zeros((ROWS - 1, 10), np.int32)}),
        )
        assert r.status_code == 400, r.text
        assert r.json()["error"] == (
            f"inputs disagree on the batch size: 'bias' has {ROWS - 1} rows, 'features' has "
            f"{ROWS} rows"
        )
        assert await s.metric("servekit_inferences_total", model="digits") == 0


async def test_a_deadline_fails_the_request_and_the_rest_is_never_computed(repo: Path) -> None:
    """slow: ~17 ms an invoke, one instance, chunks of 4 rows. 200 rows are 50 chunks,
    about a second of compute; a 100 ms deadline ends the request after a few."""
    x = np.ones((200, 64), np.float32)
    async with serving(repo) as s:
        body = {**v2_body({"x": x}), "parameters": {"timeout": 100_000}}  # microseconds
        r = await s.http.post("/v2/models/slow/infer", json=body)
        assert r.status_code == 504, r.text
        with pytest.raises(InferenceServerException) as e:
            await s.grpc("slow", {"x": x}, client_timeout=0.1)
        assert e.value.status() == "StatusCode.DEADLINE_EXCEEDED"
        await asyncio.sleep(0.5)  # what was still queued would have run by now
        computed = await s.metric("servekit_inferences_total", model="slow")
        assert 0 < computed < 100, computed  # a few chunks each, not 2 x 200 rows
        # Two requests failed, each counted once (not once per chunk).
        failed = await s.metric(
            "servekit_requests_total", model="slow", outcome="failure", reason="timeout"
        )
        assert failed == 2, failed
        # The model serves on at once: nothing of the two requests is left queued.
        same(await s.v2_json("slow", {"x": x[:8]}), tflite_rows_slow(x[:8]))


def tflite_rows_slow(x: np.ndarray) -> dict[str, np.ndarray]:
    interp = Interpreter(model_path=str(MODELS / "slow" / "slow" / "1" / "model.tflite"))
    runner = interp.get_signature_runner()
    parts = [runner(x=x[i : i + 1]) for i in range(len(x))]
    return {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in parts[0]}


async def test_a_cancelled_grpc_call_drops_its_queued_chunks(repo: Path) -> None:
    x = np.ones((200, 64), np.float32)
    async with serving(repo) as s:
        async with grpc.aio.insecure_channel(s.grpc_url) as channel:
            from tritonclient.grpc import service_pb2, service_pb2_grpc

            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            request = service_pb2.ModelInferRequest(model_name="slow")
            tensor = request.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
            del tensor
            request.raw_input_contents.append(x.tobytes())
            call = stub.ModelInfer(request)
            await asyncio.sleep(0.15)  # a few chunks computed
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
        await asyncio.sleep(0.5)
        computed = await s.metric("servekit_inferences_total", model="slow")
        assert 0 < computed < 100, computed
