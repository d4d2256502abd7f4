"""The hostile catalogue's shape cases over gRPC (KServe v2 and TF Serving Predict):
each is INVALID_ARGUMENT naming the problem, before anything is allocated for the
declared shape, and the server keeps serving."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from conftest import REPO, ServerProcess, digits_rows, free_port
from servekit.grpc.tfs import tfserving_pb2 as tfs_pb

ROW = digits_rows(1).astype(np.float32)


class Server(ServerProcess):
    def __init__(self, repo: Path) -> None:
        self.kserve_port, self.tfs_port = free_port(), free_port()
        env = {
            "SERVEKIT_GRPC_PORT": str(self.kserve_port),
            "SERVEKIT_TFS_GRPC_PORT": str(self.tfs_port),
        }
        super().__init__(str(repo), env=env, name="hostile-grpc")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    repo = tmp_path_factory.mktemp("hostile-grpc") / "repo"
    shutil.copytree(REPO / "digits", repo / "digits")
    s = Server(repo).wait_ready()
    yield s
    assert s.stop() == 0, s.log()


@pytest.fixture(scope="module")
def kserve(server: Server) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(f"127.0.0.1:{server.kserve_port}") as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def tfs_predict(server: Server) -> Iterator[grpc.UnaryUnaryMultiCallable]:
    with grpc.insecure_channel(f"127.0.0.1:{server.tfs_port}") as channel:
        yield channel.unary_unary(
            "/tensorflow.serving.PredictionService/Predict",
            request_serializer=tfs_pb.PredictRequest.SerializeToString,
            response_deserializer=tfs_pb.PredictResponse.FromString,
        )


def kserve_request(shape: list[int], raw: bytes | None = None, fp32: list[float] | None = None):
    r = service_pb2.ModelInferRequest(model_name="digits")
    t = r.inputs.add(name="pixels", datatype="FP32")
    t.shape.extend(shape)
    if raw is not None:
        r.raw_input_contents.append(raw)
    if fp32 is not None:
        t.contents.fp32_contents.extend(fp32)
    return r


KSERVE_CASES = {
    "shape-100-dims": ([1] * 100, b"\0\0\0\0", None),
    "shape-zero-then-huge": ([0, 2**40, 2**40], b"", None),
    "shape-huge-then-zero": ([2**62, 2**62, 0], b"", None),
    "shape-int64-max": ([0, 2**63 - 1], b"", None),
    "shape-negative": ([-1, 64], ROW.tobytes(), None),
    "typed-shape-zero-then-huge": ([0, 2**40, 2**40], None, []),
    "typed-too-few": ([1, 64], None, [1.0]),
    "raw-too-short": ([1, 64], b"\0" * 8, None),
}


@pytest.mark.parametrize("case", list(KSERVE_CASES))
def test_kserve_hostile_shapes_are_invalid_argument(
    kserve: service_pb2_grpc.GRPCInferenceServiceStub, case: str
) -> None:
    shape, raw, typed = KSERVE_CASES[case]
    with pytest.raises(grpc.RpcError) as e:
        kserve.ModelInfer(kserve_request(shape, raw, typed), timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
    assert "pixels" in e.value.details() and len(e.value.details()) < 1000
    ok = kserve.ModelInfer(kserve_request([1, 64], ROW.tobytes()), timeout=10)
    assert ok.raw_output_contents


def tfs_request(dims: list[int], **values: object) -> tfs_pb.PredictRequest:
    r = tfs_pb.PredictRequest()
    r.model_spec.name = "digits"
    t = r.inputs["pixels"]
    t.dtype = tfs_pb.DataType.Value("DT_FLOAT")
    for d in dims:
        t.tensor_shape.dim.add(size=d)
    for field, v in values.items():
        if field == "tensor_content":
            t.tensor_content = v  # type: ignore[assignment]
        else:
            getattr(t, field).extend(v)
    return r


TFS_CASES = {
    "shape-100-dims": ([1] * 100, {"float_val": [1.0]}),
    "shape-zero-then-huge": ([0, 2**40, 2**40], {"tensor_content": b""}),
    "shape-huge-then-zero": ([2**62, 2**62, 0], {"float_val": []}),
    "one-value-fills-2**40": ([2**40, 64], {"float_val": [1.0]}),
    "one-value-fills-wrong-rank": ([2**20, 2**20], {"float_val": [1.0]}),
    "one-value-fills-too-much": ([2**22, 64], {"float_val": [1.0]}),
    "shape-negative": ([-1, 64], {"float_val": [1.0]}),
}


@pytest.mark.parametrize("case", list(TFS_CASES))
def test_tfserving_hostile_shapes_are_invalid_argument(
    tfs_predict: grpc.UnaryUnaryMultiCallable, case: str
) -> None:
    dims, values = TFS_CASES[case]
    with pytest.raises(grpc.RpcError) as e:
        tfs_predict(tfs_request(dims, **values), timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
    assert "pixels" in e.value.details() and len(e.value.details()) < 1000
    ok = tfs_predict(tfs_request([1, 64], tensor_content=ROW.tobytes()), timeout=10)
    assert ok.outputs
