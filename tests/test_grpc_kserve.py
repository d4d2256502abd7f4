"""KServe v2 over gRPC, driven by Triton's own client (tritonclient.grpc), the standard
health stub and perf_analyzer against real servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.grpc.aio as tga
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from conftest import MODELS, REPO, ServerProcess, digits_rows, direct_predict, free_port
from perf_analyzer_support import parse_perf_csv, perf_analyzer_args, run_perf_analyzer

ADMIN = "grpc-admin"
SLOW_CONFIG = "max_batch_size: 1\ninstances: 1\nmax_queue_size: 8\n"


class GrpcServer(ServerProcess):
    def __init__(self, *args: str, env: dict[str, str] | None = None, name: str = "grpc") -> None:
        self.grpc_port = free_port()
        super().__init__(
            *args, env={"SERVEKIT_GRPC_PORT": str(self.grpc_port), **(env or {})}, name=name
        )
        self.grpc_url = f"127.0.0.1:{self.grpc_port}"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("grpc") / "repo"
    for name in ("digits", "multi", "lookup", "digits_int8"):
        shutil.copytree(REPO / name, root / name)
    shutil.copytree(MODELS / "slow" / "slow", root / "slow")
    (root / "slow" / "config.yaml").write_text(SLOW_CONFIG)
    return root


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[GrpcServer]:
    s = GrpcServer(
        str(repo),
        "--model-control-mode",
        "explicit",
        "--load-model",
        "*",
        env={"SERVEKIT_ADMIN_TOKEN": ADMIN},
    ).wait_ready()
    yield s
    assert s.stop() == 0, s.log()


@pytest.fixture()
def client(server: GrpcServer) -> Iterator[tg.InferenceServerClient]:
    c = tg.InferenceServerClient(server.grpc_url)
    yield c
    c.close()


def infer_input(name: str, x: np.ndarray, datatype: str) -> tg.InferInput:
    inp = tg.InferInput(name, list(x.shape), datatype)
    inp.set_data_from_numpy(x)
    return inp


def code_of(e: InferenceServerException) -> str:
    return str(e.status())


# -- health and metadata -----------------------------------------------------------------------


def test_health_and_metadata(client: tg.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("digits") and client.is_model_ready("digits", "1")
    assert not client.is_model_ready("nope")
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "servekit"
    assert {"model_configuration", "statistics", "model_repository"} <= set(meta["extensions"])
    model = client.get_model_metadata("multi", as_json=True)
    assert model["platform"] == "tensorflow_lite" and model["versions"] == ["1"]
    assert model["inputs"] == [
        {"name": "bias", "datatype": "INT32", "shape": ["-1", "10"]},
        {"name": "features", "datatype": "FP32", "shape": ["-1", "64"]},
    ]
    with pytest.raises(InferenceServerException) as e:
        client.get_model_metadata("nope")
    assert code_of(e.value) == "StatusCode.NOT_FOUND" and "unknown model 'nope'" in str(e.value)


def test_standard_health_service(server: GrpcServer) -> None:
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            answer = stub.Check(health_pb2.HealthCheckRequest(service=service))
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as e:
            stub.Check(health_pb2.HealthCheckRequest(service="nope"))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_config_and_statistics(client: tg.InferenceServerClient) -> None:
    config = client.get_model_config("digits", as_json=True)["config"]
    assert config["platform"] == "tensorflow_lite"
    assert config["max_batch_size"] == 32
    assert config["input"] == [{"name": "pixels", "data_type": "TYPE_FP32", "dims": ["64"]}]
    assert "dynamic_batching" in config

    def count() -> int:
        stats = client.get_inference_statistics("digits", "1", as_json=True)["model_stats"]
        return int(stats[0].get("inference_count", 0))

    before = count()
    client.infer("digits", [infer_input("pixels", digits_rows(3), "FP32")])
    assert count() - before == 3
    with pytest.raises(InferenceServerException, match="no version 9"):
        client.get_model_config("digits", "9")


# -- inference -----------------------------------------------------------------------------------


async def test_answers_equal_the_interpreter_under_concurrency(server: GrpcServer) -> None:
    """60 concurrent requests of 1-5 rows over two models, raw contents both ways."""
    rng = np.random.default_rng(0)
    client = tga.InferenceServerClient(server.grpc_url)

    async def digits(rows: int, offset: int) -> None:
        x = digits_rows(rows, offset)
        out = await client.infer("digits", [infer_input("pixels", x, "FP32")])
        want = direct_predict("digits", {"pixels": x})["probabilities"]
        np.testing.assert_allclose(out.as_numpy("probabilities"), want, rtol=1e-5, atol=1e-6)

    async def multi(rows: int) -> None:
        features = rng.random((rows, 64), dtype=np.float32)
        bias = rng.integers(-3, 3, (rows, 10)).astype(np.int32)
        out = await client.infer(
            "multi",
            [infer_input("features", features, "FP32"), infer_input("bias", bias, "INT32")],
            outputs=[tg.InferRequestedOutput("label")],
        )
        want = direct_predict("multi", {"features": features, "bias": bias})
        np.testing.assert_array_equal(out.as_numpy("label"), want["label"])
        assert out.as_numpy("logits") is None  # only what was asked

    try:
        jobs = [
            digits(int(rng.integers(1, 6)), i) if i % 2 else multi(int(rng.integers(1, 6)))
            for i in range(60)
        ]
        await asyncio.gather(*jobs)
    finally:
        await client.close()


def test_typed_contents(server: GrpcServer) -> None:
    """The typed ``contents`` alternative to raw bytes (KServe's own clients send it)."""
    x = digits_rows(2)
    request = service_pb2.ModelInferRequest(model_name="digits", id="typed-1")
    tensor = request.inputs.add(name="pixels", datatype="FP32", shape=[2, 64])
    tensor.contents.fp32_contents.extend(x.reshape(-1).tolist())
    with grpc.insecure_channel(server.grpc_url) as channel:
        answer = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    assert answer.id == "typed-1" and answer.model_version == "1"
    (out,) = answer.outputs
    assert out.name == "probabilities" and list(out.shape) == [2, 10]
    got = np.frombuffer(answer.raw_output_contents[0], dtype="<f4").reshape(2, 10)
    want = direct_predict("digits", {"pixels": x})["probabilities"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("build", "words"),
    [
        (lambda: [infer_input("pixels", np.zeros((2, 63), np.float32), "FP32")], "[2, 63]"),
        (lambda: [infer_input("pixels", np.zeros((2, 64), np.float64), "FP64")], "FP64"),
        (lambda: [infer_input("pics", np.zeros((1, 64), np.float32), "FP32")], "pics"),
        (lambda: [infer_input("pixels", np.full((1, 64), np.nan, np.float32), "FP32")], "NaN"),
    ],
    ids=["shape", "datatype", "unknown-input", "nan"],
)
def test_bad_input_is_invalid_argument(
    client: tg.InferenceServerClient, build: object, words: str
) -> None:
    with pytest.raises(InferenceServerException) as e:
        client.infer("digits", build())
    assert code_of(e.value) == "StatusCode.INVALID_ARGUMENT", e.value
    assert words in str(e.value)


def test_raw_contents_that_do_not_add_up(server: GrpcServer) -> None:
    request = service_pb2.ModelInferRequest(model_name="digits")
    request.inputs.add(name="pixels", datatype="FP32", shape=[2, 64])
    request.raw_input_contents.append(b"\0" * 12)
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as e:
            stub.ModelInfer(request)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "binary_data_size is 12 bytes" in (e.value.details() or "")


def test_a_poison_request_fails_alone(client: tg.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as e:
        client.infer("lookup", [infer_input("index", np.array([[99]], np.int32), "INT32")])
    assert code_of(e.value) == "StatusCode.INVALID_ARGUMENT"
    assert "model 'lookup' failed on this request's input" in str(e.value)
    ok = client.infer("lookup", [infer_input("index", np.array([[2]], np.int32), "INT32")])
    assert ok.as_numpy("row").tolist() == [[8.0, 9.0, 10.0, 11.0]]


def test_deadlines(client: tg.InferenceServerClient) -> None:
    x = np.linspace(-1, 1, 64, dtype=np.float32).reshape(1, 64)
    with pytest.raises(InferenceServerException) as e:  # the call's deadline
        client.infer("slow", [infer_input("x", x, "FP32")], client_timeout=0.001)
    assert code_of(e.value) == "StatusCode.DEADLINE_EXCEEDED"
    with pytest.raises(InferenceServerException) as e:  # parameters.timeout (microseconds)
        client.infer("slow", [infer_input("x", x, "FP32")], timeout=1)
    assert code_of(e.value) == "StatusCode.DEADLINE_EXCEEDED"
    assert "deadline" in str(e.value)


async def test_queue_full_is_unavailable(server: GrpcServer) -> None:
    x = np.linspace(-1, 1, 64, dtype=np.float32).reshape(1, 64)
    client = tga.InferenceServerClient(server.grpc_url)
    try:
        results = await asyncio.gather(
            *(client.infer("slow", [infer_input("x", x, "FP32")]) for _ in range(12)),
            return_exceptions=True,
        )
    finally:
        await client.close()
    refused = [r for r in results if isinstance(r, InferenceServerException)]
    assert refused, "12 requests against a queue of 8 were all accepted"
    for r in refused:
        assert code_of(r) == "StatusCode.UNAVAILABLE" and "queue full" in str(r)
    assert len(refused) < len(results)


def test_stream_infer(client: tg.InferenceServerClient) -> None:
    results: list[object] = []
    client.start_stream(callback=lambda result, error: results.append(error or result))
    try:
        x = digits_rows(2)
        client.async_stream_infer("digits", [infer_input("pixels", x, "FP32")], request_id="a")
        bad = np.zeros((1, 5), np.float32)
        client.async_stream_infer("digits", [infer_input("pixels", bad, "FP32")], request_id="b")
        client.async_stream_infer("digits", [infer_input("pixels", x, "FP32")], request_id="c")
    finally:
        client.stop_stream()  # waits for the answers
    assert len(results) == 3
    good = [r for r in results if not isinstance(r, InferenceServerException)]
    errors = [r for r in results if isinstance(r, InferenceServerException)]
    assert len(good) == 2 and len(errors) == 1
    assert "expected shape [-1, 64], got [1, 5]" in str(errors[0])
    want = direct_predict("digits", {"pixels": digits_rows(2)})["probabilities"]
    for r in good:
        np.testing.assert_allclose(r.as_numpy("probabilities"), want, rtol=1e-5, atol=1e-6)


# -- the repository API ------------------------------------------------------------------------


def test_repository_api_needs_the_admin_token(server: GrpcServer) -> None:
    anonymous = tg.InferenceServerClient(server.grpc_url)
    wrong = {"authorization": "Bearer nope"}
    with pytest.raises(InferenceServerException) as e:
        anonymous.get_model_repository_index()
    assert code_of(e.value) == "StatusCode.UNAUTHENTICATED"
    with pytest.raises(InferenceServerException) as e:
        anonymous.get_model_repository_index(headers=wrong)
    assert code_of(e.value) == "StatusCode.PERMISSION_DENIED"

    admin = {"authorization": f"Bearer {ADMIN}"}
    index = anonymous.get_model_repository_index(headers=admin, as_json=True)["models"]
    assert {m["name"]: m["state"] for m in index}["digits_int8"] == "READY"
    anonymous.unload_model("digits_int8", headers=admin)
    assert not anonymous.is_model_ready("digits_int8")
    anonymous.load_model("digits_int8", headers=admin, config='{"max_batch_size": 8}')
    assert anonymous.is_model_ready("digits_int8")
    config = anonymous.get_model_config("digits_int8", as_json=True)["config"]
    assert config["max_batch_size"] == 8
    anonymous.close()


# -- access control, TLS, metrics ----------------------------------------------------------------


def test_api_keys() -> None:
    server = GrpcServer(
        str(REPO / "digits" / "1" / "model.tflite"), env={"SERVEKIT_API_KEYS": '["k1"]'}
    ).wait_ready()
    try:
        client = tg.InferenceServerClient(server.grpc_url)
        x = digits_rows(1)
        assert client.is_server_live()  # liveness needs no key
        with pytest.raises(InferenceServerException) as e:
            client.infer("model", [infer_input("pixels", x, "FP32")])
        assert code_of(e.value) == "StatusCode.UNAUTHENTICATED"
        with pytest.raises(InferenceServerException) as e:
            client.infer("model", [infer_input("pixels", x, "FP32")], headers={"x-api-key": "k2"})
        assert code_of(e.value) == "StatusCode.PERMISSION_DENIED"
        for headers in ({"x-api-key": "k1"}, {"authorization": "Bearer k1"}):
            out = client.infer("model", [infer_input("pixels", x, "FP32")], headers=headers)
            assert out.as_numpy("probabilities").shape == (1, 10)
        client.close()
    finally:
        assert server.stop() == 0, server.log()


def test_tls_and_mutual_tls(pki: Path) -> None:
    model = str(REPO / "digits" / "1" / "model.tflite")
    env = {
        "SERVEKIT_SSL_CERTFILE": str(pki / "server.pem"),
        "SERVEKIT_SSL_KEYFILE": str(pki / "server.key"),
        "SERVEKIT_SSL_CA_CERTS": str(pki / "ca.pem"),
        "SERVEKIT_SSL_REQUIRE_CLIENT_CERT": "true",
    }
    server = GrpcServer(model, env=env, name="grpc-mtls")
    x = digits_rows(1)
    try:
        with_cert = None
        deadline = 60.0
        while deadline > 0:
            try:
                with_cert = tg.InferenceServerClient(
                    server.grpc_url,
                    ssl=True,
                    root_certificates=str(pki / "ca.pem"),
                    private_key=str(pki / "client.key"),
                    certificate_chain=str(pki / "client.pem"),
                )
                if with_cert.is_server_ready():
                    break
            except InferenceServerException:
                pass
            deadline -= 0.2
            asyncio.run(asyncio.sleep(0.2))
        assert with_cert is not None
        out = with_cert.infer("model", [infer_input("pixels", x, "FP32")])
        assert out.as_numpy("probabilities").shape == (1, 10)
        no_cert = tg.InferenceServerClient(
            server.grpc_url, ssl=True, root_certificates=str(pki / "ca.pem")
        )
        with pytest.raises(InferenceServerException):
            no_cert.infer("model", [infer_input("pixels", x, "FP32")], client_timeout=5)
        plain = tg.InferenceServerClient(server.grpc_url)
        with pytest.raises(InferenceServerException):
            plain.is_server_live(client_timeout=5)
    finally:
        assert server.stop() == 0, server.log()


def test_grpc_calls_are_in_the_metrics(
    server: GrpcServer, client: tg.InferenceServerClient
) -> None:
    client.infer("digits", [infer_input("pixels", digits_rows(1), "FP32")])
    text = httpx.get(f"{server.url}/metrics").text
    assert 'servekit_grpc_requests_total{code="OK",method="ModelInfer"}' in text
    assert 'servekit_grpc_request_duration_seconds_count{method="ModelInfer"}' in text


def test_the_port_taken_is_a_one_line_failure(server: GrpcServer) -> None:
    clash = ServerProcess(
        str(REPO / "digits" / "1" / "model.tflite"),
        env={"SERVEKIT_GRPC_PORT": str(server.grpc_port)},
        name="grpc-clash",
    )
    assert clash.proc.wait(60) != 0
    assert f"gRPC cannot listen on 127.0.0.1:{server.grpc_port}" in clash.log()
    clash.stop()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_perf_analyzer(server: GrpcServer, tmp_path: Path, protocol: str) -> None:
    """Triton's load tool, unmodified, for a few seconds at two concurrencies: it reads
    the model's configuration first, then reports the server's own statistics."""
    csv = tmp_path / "perf.csv"
    url = server.grpc_url if protocol == "grpc" else server.url
    done = run_perf_analyzer(
        perf_analyzer_args(
            url,
            "digits",
            protocol=protocol,
            concurrency=(1, 2),
            measurement_ms=800,
            csv_path=csv,
            # A shared 2-core machine's throughput varies more than perf_analyzer's 10%
            # stability rule allows; this test is about the protocol, not the numbers.
            extra=["--stability-percentage", "1000", "--max-trials", "4"],
        ),
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = parse_perf_csv(csv)
    assert [row["Concurrency"] for row in rows] == [1.0, 2.0], done.stdout
    for row in rows:
        assert float(row["Inferences/Second"]) > 0
        assert float(row["Server Compute Infer"]) > 0  # from servekit's statistics
    assert "Successful request count" in done.stdout


async def test_a_cancelled_call_is_not_computed(server: GrpcServer) -> None:
    """Calls cancelled while they wait behind a slow batch are dropped before compute."""
    x = np.linspace(-1, 1, 64, dtype=np.float32).reshape(1, 64)

    def inferences() -> float:
        for line in httpx.get(f"{server.url}/metrics").text.splitlines():
            if line.startswith('servekit_inferences_total{model="slow"'):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    request = service_pb2.ModelInferRequest(model_name="slow")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 64])
    request.raw_input_contents.append(x.tobytes())
    before = inferences()
    async with grpc.aio.insecure_channel(server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        # Four calls ahead (~70 ms of compute, one at a time) keep the next two queued
        # well past their cancellation, however late the machine runs the client.
        ahead = [stub.ModelInfer(request) for _ in range(4)]
        await asyncio.sleep(0.01)
        queued = [stub.ModelInfer(request) for _ in range(2)]
        await asyncio.sleep(0.005)
        for call in queued:
            call.cancel()
        for call in ahead:
            await call
        for call in queued:
            with pytest.raises(asyncio.CancelledError):
                await call
    await asyncio.sleep(0.2)  # anything still running would have finished by now
    assert inferences() - before == 4


def test_messages_over_the_body_limit_are_refused() -> None:
    server = GrpcServer(
        str(REPO / "digits" / "1" / "model.tflite"), env={"SERVEKIT_MAX_BODY_BYTES": "4096"}
    ).wait_ready()
    try:
        client = tg.InferenceServerClient(server.grpc_url)
        big = np.zeros((32, 64), np.float32)  # 8 KiB of raw contents
        with pytest.raises(InferenceServerException) as e:
            client.infer("model", [infer_input("pixels", big, "FP32")])
        assert code_of(e.value) == "StatusCode.RESOURCE_EXHAUSTED"
        small = client.infer("model", [infer_input("pixels", big[:2], "FP32")])
        assert small.as_numpy("probabilities").shape == (2, 10)
        client.close()
    finally:
        assert server.stop() == 0, server.log()
