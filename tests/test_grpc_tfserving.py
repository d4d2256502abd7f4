"""TF Serving's gRPC API, driven by TF Serving's own client stubs (tensorflow-serving-api)
and TensorFlow's tensor helpers against a real server on 127.0.0.1; the server itself
imports neither."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before TensorFlow's first import

import grpc
import httpx
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import wrappers_pb2
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from conftest import MODELS, REPO, ROOT, ServerProcess, digits_rows, direct_predict, free_port
from perf_analyzer_support import parse_perf_csv, perf_analyzer_args, run_perf_analyzer
from servekit.grpc import tfserving
from servekit.grpc.tfs import tfserving_pb2 as pb
from servekit.tensors import TensorSpec

ort = pytest.importorskip("onnxruntime")

SLOW_CONFIG = "max_batch_size: 1\ninstances: 1\n"
SLOW_ROW = np.linspace(-1, 1, 64, dtype=np.float32).reshape(1, 64)
TIMEOUT = 30


class TfsServer(ServerProcess):
    """A server with TF Serving's gRPC port (and the KServe one) on free ports."""

    def __init__(self, *args: str, name: str = "tfs-grpc") -> None:
        self.tfs_port, self.kserve_port = free_port(), free_port()
        env = {
            "SERVEKIT_TFS_GRPC_PORT": str(self.tfs_port),
            "SERVEKIT_GRPC_PORT": str(self.kserve_port),
        }
        super().__init__(*args, env=env, name=name)
        self.target = f"127.0.0.1:{self.tfs_port}"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tfs") / "repo"
    for name in ("digits", "multi", "digits_int8"):
        shutil.copytree(REPO / name, root / name)
    # digits in two versions (the same weights): which one answered is in model_spec.
    shutil.copytree(REPO / "digits" / "1", root / "digits" / "2")
    with (root / "digits" / "config.yaml").open("a") as f:
        f.write("\nversion_policy: all\n")
    shutil.copytree(MODELS / "onnx" / "words", root / "words")
    shutil.copytree(MODELS / "slow" / "slow", root / "slow")
    (root / "slow" / "config.yaml").write_text(SLOW_CONFIG)
    return root


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[TfsServer]:
    s = TfsServer(str(repo), "--model-control-mode", "poll", "--poll-interval", "0.2")
    s.wait_ready()
    yield s
    assert s.stop() == 0, s.log()


@pytest.fixture(scope="module")
def channel(server: TfsServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.target) as c:
        yield c


@pytest.fixture()
def predict(channel: grpc.Channel) -> Any:
    return prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict


def request(model: str, inputs: dict[str, Any], **spec: Any) -> predict_pb2.PredictRequest:
    """A PredictRequest; numpy inputs go as tf.make_tensor_proto makes them."""
    r = predict_pb2.PredictRequest()
    r.model_spec.name = model
    for key, value in spec.items():
        if key == "version":
            r.model_spec.version.value = value
        else:
            setattr(r.model_spec, key, value)
    for name, value in inputs.items():
        proto = value if isinstance(value, tensor_pb2.TensorProto) else tf.make_tensor_proto(value)
        r.inputs[name].CopyFrom(proto)
    return r


def outputs(response: predict_pb2.PredictResponse) -> dict[str, np.ndarray]:
    return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}


def close(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def failure(call: Any, *args: Any, **kwargs: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        call(*args, timeout=TIMEOUT, **kwargs)
    error: grpc.RpcError = e.value
    return error


# -- Predict ---------------------------------------------------------------------------


def test_digits_equal_the_interpreter(predict: Any) -> None:
    x = digits_rows(5, 3)
    response = predict(request("digits", {"pixels": x}), timeout=TIMEOUT)
    got = outputs(response)
    assert set(got) == {"probabilities"}
    close(got["probabilities"], direct_predict("digits", {"pixels": x})["probabilities"])
    # The newest version answered, and says so.
    assert response.model_spec.name == "digits"
    assert response.model_spec.version.value == 2
    assert response.model_spec.signature_name == "serving_default"
    assert response.outputs["probabilities"].tensor_content  # raw bytes, as TF Serving


def test_multi_int32_and_float_in_int64_and_float_out(predict: Any) -> None:
    x = digits_rows(4, 20)
    bias = (np.arange(40, dtype=np.int32).reshape(4, 10) % 3) * 2
    want = direct_predict("multi", {"features": x, "bias": bias})
    got = outputs(predict(request("multi", {"features": x, "bias": bias}), timeout=TIMEOUT))
    assert got["label"].dtype == np.int64
    np.testing.assert_array_equal(got["label"], want["label"])
    close(got["logits"], want["logits"])


def test_int8_model_exactly(predict: Any) -> None:
    q = np.clip(np.round(digits_rows(6) * 255 - 128), -128, 127).astype(np.int8)
    got = outputs(predict(request("digits_int8", {"pixels": q}), timeout=TIMEOUT))
    want = direct_predict("digits_int8", {"pixels": q})["probabilities"]
    assert got["probabilities"].dtype == np.int8
    np.testing.assert_array_equal(got["probabilities"], want)


def test_strings_in_and_out_of_an_onnx_model(predict: Any) -> None:
    words = np.array([b"three", b"seven", b"eleven", b"nine"], dtype=object)
    response = predict(request("words", {"word": tf.make_tensor_proto(words)}), timeout=TIMEOUT)
    assert response.outputs["echo"].dtype == types_pb2.DT_STRING
    assert list(response.outputs["echo"].string_val) == list(words)
    session = ort.InferenceSession(str(MODELS / "onnx" / "words" / "1" / "model.onnx"))
    (want,) = session.run(["digit"], {"word": words.astype(str)})
    got = outputs(response)
    np.testing.assert_array_equal(got["digit"], want)
    assert got["digit"].tolist() == [3, 7, -1, 9]


def typed(dtype: int, shape: list[int], **values: Any) -> tensor_pb2.TensorProto:
    """A TensorProto with typed values, as clients without TensorFlow build them."""
    dims = [tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in shape]
    return tensor_pb2.TensorProto(
        dtype=dtype, tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=dims), **values
    )


def test_typed_values_and_one_value_filling_the_shape(predict: Any) -> None:
    x = digits_rows(2, 40)
    bias = np.array([[0, 1, 2, 0, 1, 2, 0, 1, 2, 0]] * 2, dtype=np.int32)
    features = typed(types_pb2.DT_FLOAT, [2, 64], float_val=x.ravel().tolist())
    bias_proto = typed(types_pb2.DT_INT32, [2, 10], int_val=bias.ravel().tolist())
    got = outputs(predict(request("multi", {"features": features, "bias": bias_proto})))
    want = direct_predict("multi", {"features": x, "bias": bias})
    close(got["logits"], want["logits"])
    # int8 in int_val.
    q = np.clip(np.round(x * 255 - 128), -128, 127).astype(np.int8)
    pixels = typed(types_pb2.DT_INT8, [2, 64], int_val=q.ravel().tolist())
    got = outputs(predict(request("digits_int8", {"pixels": pixels}), timeout=TIMEOUT))
    np.testing.assert_array_equal(
        got["probabilities"], direct_predict("digits_int8", {"pixels": q})["probabilities"]
    )
    # A scalar with a shape: TensorFlow sends one value and means it everywhere.
    filled = tf.make_tensor_proto(0.25, dtype=tf.float32, shape=[3, 64])
    assert len(filled.float_val) == 1 and not filled.tensor_content
    got = outputs(predict(request("digits", {"pixels": filled}), timeout=TIMEOUT))
    want_filled = direct_predict("digits", {"pixels": np.full((3, 64), 0.25, np.float32)})
    close(got["probabilities"], want_filled["probabilities"])


def test_versions_signatures_and_output_filter(predict: Any) -> None:
    x = digits_rows(2)
    for version in (1, 2):
        response = predict(request("digits", {"pixels": x}, version=version), timeout=TIMEOUT)
        assert response.model_spec.version.value == version
    for signature in ("", "serving_default"):
        r = request("digits", {"pixels": x}, signature_name=signature)
        assert predict(r, timeout=TIMEOUT).outputs
    bias = np.zeros((2, 10), np.int32)
    r = request("multi", {"features": x, "bias": bias})
    r.output_filter.append("label")
    response = predict(r, timeout=TIMEOUT)
    assert list(response.outputs) == ["label"]
    error = failure(predict, request("digits", {"pixels": x}, version_label="stable"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no version labels" in error.details() and "model_spec.version" in error.details()
    assert "[1, 2]" in error.details()


def bad_cases() -> list[tuple[str, predict_pb2.PredictRequest, grpc.StatusCode, list[str]]]:
    x = digits_rows(2)
    ok_bias = np.zeros((2, 10), np.int32)
    short = typed(types_pb2.DT_FLOAT, [2, 64], tensor_content=x.tobytes()[:-4])
    both = typed(types_pb2.DT_FLOAT, [1, 64], tensor_content=x[:1].tobytes(), float_val=[1.0])
    wrong_field = typed(types_pb2.DT_FLOAT, [1, 64], int_val=[1] * 64)
    few = typed(types_pb2.DT_FLOAT, [2, 64], float_val=[0.5] * 10)
    unknown_rank = typed(types_pb2.DT_FLOAT, [])
    unknown_rank.tensor_shape.unknown_rank = True
    big_int8 = typed(types_pb2.DT_INT8, [1, 64], int_val=[300] * 64)
    inv, nf = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
    return [
        (
            "wrong-dtype",
            request("digits", {"pixels": x.astype(np.float64)}),
            inv,
            ["'pixels'", "DT_FLOAT", "DT_DOUBLE"],
        ),
        (
            "wrong-shape",
            request("digits", {"pixels": x[:, :63]}),
            inv,
            ["'pixels'", "expected shape [-1, 64]", "[2, 63]"],
        ),
        (
            "unknown-input",
            request("digits", {"pixels": x, "extra": x}),
            inv,
            ["unknown input", "extra"],
        ),
        (
            "missing-input",
            request("multi", {"features": x}),
            inv,
            ["missing input(s) ['bias']"],
        ),
        (
            "batches-disagree",
            request("multi", {"features": x, "bias": ok_bias[:1]}),
            inv,
            ["disagree", "2 rows", "1 rows"],
        ),
        ("short-content", request("digits", {"pixels": short}), inv, ["'pixels'", "508 bytes"]),
        ("content-and-values", request("digits", {"pixels": both}), inv, ["not both"]),
        ("wrong-field", request("digits", {"pixels": wrong_field}), inv, ["float_val", "int_val"]),
        ("too-few-values", request("digits", {"pixels": few}), inv, ["10 value(s)", "128"]),
        ("unknown-rank", request("digits", {"pixels": unknown_rank}), inv, ["unknown_rank"]),
        ("int8-range", request("digits_int8", {"pixels": big_int8}), inv, ["[-128, 127]"]),
        (
            "bad-signature",
            request("digits", {"pixels": x}, signature_name="train"),
            inv,
            ["signature_name", "train", "serving_default"],
        ),
        (
            "output-filter",
            _with_filter(request("digits", {"pixels": x}), "logits"),
            inv,
            ["output_filter", "logits", "probabilities"],
        ),
        (
            "no-model-name",
            request("", {"pixels": x}),
            inv,
            ["model_spec.name"],
        ),
        ("unknown-model", request("nope", {"pixels": x}), nf, ["unknown model 'nope'", "digits"]),
        ("unknown-version", request("digits", {"pixels": x}, version=7), nf, ["no version 7"]),
        (
            "over-max-batch",
            request("digits", {"pixels": np.zeros((4097, 64), np.float32)}),
            inv,
            ["4097 rows", "max_request_rows 4096"],
        ),
    ]


def _with_filter(r: predict_pb2.PredictRequest, name: str) -> predict_pb2.PredictRequest:
    r.output_filter.append(name)
    return r


@pytest.mark.parametrize(
    ("case", "code", "words"), [c[1:] for c in bad_cases()], ids=[c[0] for c in bad_cases()]
)
def test_bad_requests_name_the_problem(
    predict: Any, case: predict_pb2.PredictRequest, code: grpc.StatusCode, words: list[str]
) -> None:
    error = failure(predict, case)
    assert error.code() == code, error.details()
    for w in words:
        assert w in error.details(), f"{w!r} not in {error.details()!r}"


def test_deadlines_drop_late_requests_before_compute(
    server: TfsServer, channel: grpc.Channel
) -> None:
    """Calls whose deadline passes while they wait behind thirty ~17 ms invokes (the slow
    model takes one row at a time) end DEADLINE_EXCEEDED and are never computed: servekit
    drops them at the call's deadline (or when the client gives up a moment before; under
    such a burst gRPC itself sometimes hands a call over only after its deadline)."""
    before = metric(server, "servekit_inferences_total", model="slow")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    slow = request("slow", {"x": SLOW_ROW})
    ahead = [stub.Predict.future(slow) for _ in range(30)]
    time.sleep(0.005)  # so that they arrive first
    late = [stub.Predict.future(slow, timeout=0.2) for _ in range(10)]
    for call in ahead:
        assert call.result(timeout=TIMEOUT).outputs
    assert [call.code() for call in late] == [grpc.StatusCode.DEADLINE_EXCEEDED] * 10
    time.sleep(0.1)  # anything still running would have finished by now
    assert metric(server, "servekit_inferences_total", model="slow") - before == 30


def test_a_cancelled_call_is_not_computed(server: TfsServer, channel: grpc.Channel) -> None:
    """Calls cancelled while they wait behind slow invokes are dropped before compute."""
    before = metric(server, "servekit_inferences_total", model="slow")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    slow = request("slow", {"x": SLOW_ROW})
    ahead = [stub.Predict.future(slow) for _ in range(10)]
    time.sleep(0.005)  # so that they arrive first (~170 ms of invokes)
    queued = [stub.Predict.future(slow) for _ in range(2)]
    time.sleep(0.005)
    for call in queued:
        assert call.cancel()
    for call in ahead:
        assert call.result(timeout=TIMEOUT).outputs
    assert all(call.cancelled() for call in queued)
    time.sleep(0.2)  # anything still running would have finished by now
    assert metric(server, "servekit_inferences_total", model="slow") - before == 10


def test_both_grpc_ports_serve_tf_serving(server: TfsServer) -> None:
    x = digits_rows(1)
    for port in (server.tfs_port, server.kserve_port):
        with grpc.insecure_channel(f"127.0.0.1:{port}") as c:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(c)
            assert outputs(stub.Predict(request("digits", {"pixels": x}), timeout=TIMEOUT))


# -- what servekit does not serve ------------------------------------------------------


def test_classify_regress_multi_inference_and_reload_are_unimplemented(
    channel: grpc.Channel,
) -> None:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    models = model_service_pb2_grpc.ModelServiceStub(channel)
    for call, message, words in (
        (stub.Classify, classification_pb2.ClassificationRequest(), ["Classify", "Predict"]),
        (stub.Regress, regression_pb2.RegressionRequest(), ["Regress", "Predict"]),
        (stub.MultiInference, inference_pb2.MultiInferenceRequest(), ["one PredictRequest"]),
        (
            models.HandleReloadConfigRequest,
            model_management_pb2.ReloadConfigRequest(),
            ["repository", "/v2/repository/models/<name>/load"],
        ),
    ):
        error = failure(call, message)
        assert error.code() == grpc.StatusCode.UNIMPLEMENTED
        for w in words:
            assert w in error.details(), error.details()


# -- metadata and status -----------------------------------------------------------------


def metadata_request(model: str, *fields: str, **spec: Any) -> Any:
    r = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=list(fields))
    r.model_spec.name = model
    if "version" in spec:
        r.model_spec.version.value = spec["version"]
    return r


def test_model_metadata_parsed_by_tf_serving_types(channel: grpc.Channel) -> None:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    response = stub.GetModelMetadata(metadata_request("multi", "signature_def"), timeout=TIMEOUT)
    assert response.model_spec.name == "multi" and response.model_spec.version.value == 1
    packed = response.metadata["signature_def"]
    assert packed.type_url == "type.googleapis.com/tensorflow.serving.SignatureDefMap"
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert packed.Unpack(signatures)
    (key,) = signatures.signature_def
    assert key == "serving_default"
    sig = signatures.signature_def[key]
    assert sig.method_name == "tensorflow/serving/predict"
    shapes = {
        name: ([d.size for d in info.tensor_shape.dim], info.dtype, info.name)
        for name, info in [*sig.inputs.items(), *sig.outputs.items()]
    }
    assert shapes == {
        "features": ([-1, 64], types_pb2.DT_FLOAT, "serving_default_features:0"),
        "bias": ([-1, 10], types_pb2.DT_INT32, "serving_default_bias:0"),
        "label": ([-1], types_pb2.DT_INT64, "StatefulPartitionedCall:0"),
        "logits": ([-1, 10], types_pb2.DT_FLOAT, "StatefulPartitionedCall:1"),
    }
    one = stub.GetModelMetadata(
        metadata_request("digits", "signature_def", version=1), timeout=TIMEOUT
    )
    assert one.model_spec.version.value == 1
    for fields, words in (((), ["metadata_field is empty"]), (("labels",), ["'labels'"])):
        error = failure(stub.GetModelMetadata, metadata_request("digits", *fields))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        for w in words:
            assert w in error.details()
    error = failure(stub.GetModelMetadata, metadata_request("nope", "signature_def"))
    assert error.code() == grpc.StatusCode.NOT_FOUND


def status_request(model: str, version: int | None = None) -> Any:
    r = get_model_status_pb2.GetModelStatusRequest()
    r.model_spec.name = model
    if version is not None:
        r.model_spec.version.CopyFrom(wrappers_pb2.Int64Value(value=version))
    return r


def test_model_status(channel: grpc.Channel, repo: Path) -> None:
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    State = get_model_status_pb2.ModelVersionStatus.State
    both = stub.GetModelStatus(status_request("digits"), timeout=TIMEOUT)
    assert [(s.version, s.state, s.status.error_code) for s in both.model_version_status] == [
        (1, State.AVAILABLE, 0),
        (2, State.AVAILABLE, 0),
    ]
    one = stub.GetModelStatus(status_request("digits", 1), timeout=TIMEOUT)
    assert [s.version for s in one.model_version_status] == [1]
    error = failure(stub.GetModelStatus, status_request("nope"))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    error = failure(stub.GetModelStatus, status_request("digits", 9))
    assert error.code() == grpc.StatusCode.NOT_FOUND and "no version 9" in error.details()

    # A version that fails to load is END, with servekit's reason (the poll finds it).
    (repo / "broken" / "1").mkdir(parents=True)
    (repo / "broken" / "1" / "model.tflite").write_bytes(b"this is not a model at all")
    deadline = time.monotonic() + 30
    while True:
        try:
            status = stub.GetModelStatus(status_request("broken"), timeout=TIMEOUT)
            (s,) = status.model_version_status
            if s.state == State.END:
                break
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.NOT_FOUND
        assert time.monotonic() < deadline, "the broken model never showed up"
        time.sleep(0.1)
    assert s.status.error_code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert "not a TFLite model" in s.status.error_message


def test_grpc_calls_are_in_the_metrics(server: TfsServer, predict: Any) -> None:
    predict(request("digits", {"pixels": digits_rows(1)}), timeout=TIMEOUT)
    text = httpx.get(f"{server.url}/metrics").text
    assert 'servekit_grpc_requests_total{code="OK",method="Predict"}' in text
    assert 'servekit_grpc_requests_total{code="UNIMPLEMENTED",method="Classify"}' in text


def test_perf_analyzer_tfserving_service_kind(server: TfsServer, tmp_path: Path) -> None:
    """Triton's perf_analyzer speaks TF Serving's API too (--service-kind tfserving:
    GetModelMetadata, then Predict); the batch dimension is -1, so it is given a shape."""
    before = metric(server, "servekit_grpc_requests_total", method="Predict", code="OK")
    csv = tmp_path / "perf.csv"
    args = perf_analyzer_args(
        server.target,
        "digits",
        protocol="grpc",
        concurrency=(1, 2),
        measurement_ms=800,
        csv_path=csv,
        extra=["--service-kind", "tfserving", "--shape", "pixels:1,64"],
    )
    done = run_perf_analyzer(args, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = parse_perf_csv(csv)
    assert [row["Concurrency"] for row in rows] == [1.0, 2.0]
    assert all(float(row["Inferences/Second"]) > 0 for row in rows)
    after = metric(server, "servekit_grpc_requests_total", method="Predict", code="OK")
    assert after - before > 100


def metric(server: ServerProcess, name: str, **labels: str) -> float:
    want = [f'{k}="{v}"' for k, v in labels.items()]
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith(name + "{") and all(w in line for w in want):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# -- the wire format, both ways ----------------------------------------------------------

DTYPES = [
    np.float32,
    np.float64,
    np.float16,
    np.int8,
    np.int16,
    np.int32,
    np.int64,
    np.uint8,
    np.uint16,
    np.uint32,
    np.uint64,
    np.bool_,
]


@pytest.mark.parametrize("dtype", DTYPES, ids=[np.dtype(d).name for d in DTYPES])
def test_tensors_as_tensorflow_writes_and_reads_them(dtype: type) -> None:
    """servekit's TensorProto reads what tf.make_tensor_proto writes, and the typed field
    of the dtype, and writes (tensor_content) what tf.make_ndarray reads."""
    arr = (np.arange(12).reshape(3, 4) % 5).astype(dtype)
    spec = TensorSpec("t", np.dtype(dtype), (-1, 4))
    # TensorFlow sends most dtypes as tensor_content, some (bool, uint16) typed.
    made = pb.TensorProto.FromString(tf.make_tensor_proto(arr).SerializeToString())
    np.testing.assert_array_equal(tfserving.decode_tensor("t", made, spec), arr)
    field = tfserving._FIELD[spec.datatype]
    values = arr.view(np.uint16) if dtype is np.float16 else arr
    official = tensor_pb2.TensorProto(dtype=tf.as_dtype(dtype).as_datatype_enum)
    official.tensor_shape.dim.add(size=3)
    official.tensor_shape.dim.add(size=4)
    getattr(official, field).extend(values.ravel().tolist())
    typed_values = pb.TensorProto.FromString(official.SerializeToString())
    np.testing.assert_array_equal(tfserving.decode_tensor("t", typed_values, spec), arr)
    back = tensor_pb2.TensorProto.FromString(
        tfserving.encode_tensor(arr, spec.datatype).SerializeToString()
    )
    got = tf.make_ndarray(back)
    assert got.dtype == arr.dtype
    np.testing.assert_array_equal(got, arr)


def test_strings_as_tensorflow_writes_and_reads_them() -> None:
    arr = np.array([[b"a", "é".encode()], [b"", b"\x00\xff"]], dtype=object)
    spec = TensorSpec("s", np.dtype(object), (-1, 2))
    proto = pb.TensorProto.FromString(tf.make_tensor_proto(arr).SerializeToString())
    np.testing.assert_array_equal(tfserving.decode_tensor("s", proto, spec), arr)
    back = tensor_pb2.TensorProto.FromString(
        tfserving.encode_tensor(arr, "BYTES").SerializeToString()
    )
    np.testing.assert_array_equal(tf.make_ndarray(back), arr)


def test_the_server_imports_no_tensorflow() -> None:
    code = (
        "import sys; import servekit.server.app, servekit.grpc.server; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('tensorflow', 'tensorflow_serving', 'keras')); print(bad); sys.exit(bool(bad))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
