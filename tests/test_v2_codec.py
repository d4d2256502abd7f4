"""Open Inference Protocol v2 codec, unit by unit (no server): every datatype both ways."""

from __future__ import annotations

import gzip
import zlib
from typing import Any

import numpy as np
import orjson
import pytest

from servekit.errors import BadInput, PayloadTooLarge
from servekit.server import v2_codec as codec
from servekit.tensors import V2_TO_NUMPY, TensorSpec

NUMERIC = [k for k in V2_TO_NUMPY if k not in ("BYTES", "BOOL")]


def spec(name: str, datatype: str, shape: tuple[int, ...]) -> TensorSpec:
    return TensorSpec(name, V2_TO_NUMPY[datatype], shape)


def binary_request(header: dict[str, Any], *buffers: bytes) -> tuple[bytes, str]:
    head = orjson.dumps(header)
    return head + b"".join(buffers), str(len(head))


def decode(
    body: bytes,
    specs: list[TensorSpec],
    header_length: str | None = None,
    content_type: str | None = None,
    outputs: tuple[str, ...] = ("y",),
) -> codec.InferRequest:
    return codec.decode_request(
        body,
        header_length=header_length,
        content_type=content_type,
        inputs=specs,
        outputs=outputs,
    )


def sample(datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    dtype = V2_TO_NUMPY[datatype]
    n = int(np.prod(shape))
    if datatype == "BOOL":
        return np.asarray(np.arange(n) % 3 == 0).reshape(shape)
    if datatype == "BYTES":
        items = [b"", b"a", "h\u00e9llo".encode(), b"\x00\xff binary", b"x" * 300, b"z"]
        arr = np.empty(n, dtype=object)
        arr[:] = [items[i % len(items)] for i in range(n)]
        return arr.reshape(shape)
    if dtype.kind == "f":
        return (np.linspace(-3, 3, n) * 1.5).astype(dtype).reshape(shape)
    info = np.iinfo(dtype)
    # The extremes and a few values between, exactly (64-bit ints included).
    values = [int(info.min), int(info.max), 0, 1, int(info.max) // 3, int(info.min) // 7]
    return np.array([values[i % len(values)] for i in range(n)], dtype=dtype).reshape(shape)


# -- BYTES -------------------------------------------------------------------------------


def test_bytes_serialize_round_trip() -> None:
    arr = sample("BYTES", (2, 3))
    buf = codec.serialize_bytes(arr)
    # 4-byte little-endian length before each element, row-major.
    assert buf[:4] == (0).to_bytes(4, "little")
    assert buf[4:9] == (1).to_bytes(4, "little") + b"a"
    back = codec.deserialize_bytes("s", buf, 6)
    assert back.dtype == object and back.tolist() == arr.reshape(-1).tolist()


def test_bytes_binary_request_and_binary_response_round_trip() -> None:
    arr = sample("BYTES", (2, 3))
    raw = codec.serialize_bytes(arr)
    header = {
        "inputs": [
            {
                "name": "s",
                "shape": [2, 3],
                "datatype": "BYTES",
                "parameters": {"binary_data_size": len(raw)},
            }
        ],
        "parameters": {"binary_data_output": True},
    }
    body, hl = binary_request(header, raw)
    req = decode(body, [spec("s", "BYTES", (-1, 3))], header_length=hl)
    got = req.inputs["s"]
    assert got.dtype == object and got.shape == (2, 3)
    assert all(isinstance(v, bytes) for v in got.reshape(-1))
    assert got.tolist() == arr.tolist()
    content, n = codec.encode_response(
        model_name="m", model_version="1", request=req, outputs={"y": got}, order=["y"]
    )
    assert n is not None
    meta = orjson.loads(content[:n])
    out = meta["outputs"][0]
    assert out["datatype"] == "BYTES" and out["shape"] == [2, 3]
    assert out["parameters"]["binary_data_size"] == len(raw) == len(content) - n
    assert codec.deserialize_bytes("y", content[n:], 6).tolist() == arr.reshape(-1).tolist()


def test_bytes_json_request_and_json_response() -> None:
    body = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "s",
                    "shape": [2, 2],
                    "datatype": "BYTES",
                    "data": [["a", "hé"], ["", "z"]],
                }
            ]
        }
    )
    req = decode(body, [spec("s", "BYTES", (-1, 2))])
    assert req.inputs["s"].tolist() == [[b"a", "hé".encode()], [b"", b"z"]]
    content, n = codec.encode_response(
        model_name="m", model_version="1", request=req, outputs={"y": req.inputs["s"]}, order=["y"]
    )
    assert n is None
    assert orjson.loads(content)["outputs"][0]["data"] == ["a", "hé", "", "z"]


@pytest.mark.parametrize(
    ("buf", "count", "words"),
    [
        (b"\x05\x00\x00\x00ab", 1, ["element 0 says 5 bytes", "only 2 left"]),
        (b"\x01\x00", 1, ["inside a 4-byte length prefix"]),
        (b"\x01\x00\x00\x00a\x01\x00\x00\x00b", 1, ["expected 1 BYTES element", "more"]),
        (b"\x01\x00\x00\x00a", 2, ["expected 2 BYTES element", "got 1"]),
    ],
)
def test_bytes_malformed(buf: bytes, count: int, words: list[str]) -> None:
    with pytest.raises(BadInput) as e:
        codec.deserialize_bytes("s", buf, count)
    for w in words:
        assert w in str(e.value)
    assert "'s'" in str(e.value)


def test_bytes_json_values_must_be_strings() -> None:
    body = orjson.dumps(
        {"inputs": [{"name": "s", "shape": [2], "datatype": "BYTES", "data": ["a", 3]}]}
    )
    with pytest.raises(BadInput, match="'s': BYTES values must be strings, got integer"):
        decode(body, [spec("s", "BYTES", (-1,))])


# -- every datatype, binary and JSON -----------------------------------------------------


@pytest.mark.parametrize("datatype", [*NUMERIC, "BOOL"])
def test_binary_input_is_a_zero_copy_view(datatype: str) -> None:
    arr = sample(datatype, (3, 4))
    raw = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
    header = {
        "inputs": [
            {
                "name": "x",
                "shape": [3, 4],
                "datatype": datatype,
                "parameters": {"binary_data_size": len(raw)},
            }
        ]
    }
    body, hl = binary_request(header, raw)
    got = decode(body, [spec("x", datatype, (-1, 4))], header_length=hl).inputs["x"]
    assert got.dtype == arr.dtype and got.shape == (3, 4)
    np.testing.assert_array_equal(got, arr)
    # numpy.frombuffer on the body itself: no copy of the tensor bytes.
    assert np.shares_memory(got, np.frombuffer(body, dtype=np.uint8))


@pytest.mark.parametrize("datatype", [*NUMERIC, "BOOL"])
def test_json_input_every_datatype(datatype: str) -> None:
    arr = sample(datatype, (2, 3))
    body = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [2, 3],
                    "datatype": datatype,
                    "data": arr.reshape(-1).tolist(),
                }
            ]
        }
    )
    got = decode(body, [spec("x", datatype, (-1, 3))]).inputs["x"]
    assert got.dtype == arr.dtype
    np.testing.assert_array_equal(got, arr)


@pytest.mark.parametrize("datatype", [*NUMERIC, "BOOL", "BYTES"])
@pytest.mark.parametrize("binary", [True, False])
def test_response_every_datatype(datatype: str, binary: bool) -> None:
    arr = sample(datatype, (2, 3))
    req = codec.InferRequest(inputs={}, binary_output=binary, id="r1")
    content, n = codec.encode_response(
        model_name="m", model_version="7", request=req, outputs={"y": arr}, order=["y"]
    )
    meta = orjson.loads(content if n is None else content[:n])
    assert meta["model_name"] == "m" and meta["model_version"] == "7" and meta["id"] == "r1"
    out = meta["outputs"][0]
    assert out == {**out, "name": "y", "datatype": datatype, "shape": [2, 3]}
    if binary:
        assert n is not None and "data" not in out
        tail = content[n:]
        assert out["parameters"]["binary_data_size"] == len(tail)
        if datatype == "BYTES":
            got = codec.deserialize_bytes("y", tail, 6).reshape(2, 3)
        else:
            got = np.frombuffer(tail, dtype=arr.dtype.newbyteorder("<")).reshape(2, 3)
        np.testing.assert_array_equal(got, arr)
    else:
        assert n is None and "parameters" not in out
        want = arr.reshape(-1)
        if datatype == "BYTES":
            assert out["data"] == [v.decode("utf-8", "replace") for v in want]
        else:
            np.testing.assert_array_equal(np.array(out["data"], dtype=arr.dtype), want)


# -- FP16 and BOOL details ---------------------------------------------------------------


def test_fp16_json_values_and_overflow() -> None:
    body = orjson.dumps(
        {"inputs": [{"name": "h", "shape": [3], "datatype": "FP16", "data": [0.5, -2, 1e4]}]}
    )
    got = decode(body, [spec("h", "FP16", (-1,))]).inputs["h"]
    assert got.dtype == np.float16 and got.tolist() == [0.5, -2.0, 10000.0]
    body = orjson.dumps(
        {"inputs": [{"name": "h", "shape": [1], "datatype": "FP16", "data": [1e6]}]}
    )
    with pytest.raises(BadInput, match="'h': values overflow float16"):
        decode(body, [spec("h", "FP16", (-1,))])


def test_fp16_binary_output_is_two_bytes_per_element() -> None:
    arr = np.array([[1.5, -0.25]], dtype=np.float16)
    req = codec.InferRequest(inputs={}, binary_output=True)
    content, n = codec.encode_response(
        model_name="m", model_version="1", request=req, outputs={"y": arr}, order=["y"]
    )
    assert n is not None and len(content) - n == 4
    assert np.frombuffer(content[n:], dtype="<f2").tolist() == [1.5, -0.25]


def test_bool_json_accepts_true_false_and_0_1() -> None:
    body = orjson.dumps(
        {"inputs": [{"name": "b", "shape": [4], "datatype": "BOOL", "data": [True, False, 1, 0]}]}
    )
    got = decode(body, [spec("b", "BOOL", (-1,))]).inputs["b"]
    assert got.dtype == np.bool_ and got.tolist() == [True, False, True, False]
    body = orjson.dumps({"inputs": [{"name": "b", "shape": [1], "datatype": "BOOL", "data": [2]}]})
    with pytest.raises(BadInput, match="'b': expected bool values"):
        decode(body, [spec("b", "BOOL", (-1,))])


def test_bool_binary_bytes_must_be_0_or_1() -> None:
    header = {
        "inputs": [
            {"name": "b", "shape": [3], "datatype": "BOOL", "parameters": {"binary_data_size": 3}}
        ]
    }
    body, hl = binary_request(header, b"\x01\x00\x02")
    with pytest.raises(BadInput, match="'b': BOOL bytes must be 0 or 1"):
        decode(body, [spec("b", "BOOL", (-1,))], header_length=hl)


# -- nested vs flat ----------------------------------------------------------------------


def test_nested_and_flat_data_decode_the_same() -> None:
    arr = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    specs = [spec("x", "FP32", (-1, 3, 4))]
    flat = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [2, 3, 4],
                    "datatype": "FP32",
                    "data": arr.reshape(-1).tolist(),
                }
            ]
        }
    )
    nested = orjson.dumps(
        {"inputs": [{"name": "x", "shape": [2, 3, 4], "datatype": "FP32", "data": arr.tolist()}]}
    )
    partly = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [2, 3, 4],
                    "datatype": "FP32",
                    "data": arr.reshape(6, 4).tolist(),
                }
            ]
        }
    )
    for body in (flat, nested, partly):
        got = decode(body, specs).inputs["x"]
        assert got.shape == (2, 3, 4)
        np.testing.assert_array_equal(got, arr)


def test_ragged_nested_data_is_refused() -> None:
    body = orjson.dumps(
        {"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3]]}]}
    )
    with pytest.raises(BadInput, match="'x': values must be a rectangular nested list"):
        decode(body, [spec("x", "FP32", (-1, 2))])


def test_data_count_must_equal_the_shape_product() -> None:
    body = orjson.dumps(
        {"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3]}]}
    )
    with pytest.raises(BadInput, match=r"'x': shape \[2, 2\] needs 4 value\(s\), got 3"):
        decode(body, [spec("x", "FP32", (-1, 2))])


# -- several inputs, outputs, parameters -------------------------------------------------


def test_mixed_binary_and_json_inputs_read_in_order() -> None:
    a = np.arange(6, dtype=np.int32).reshape(2, 3)
    b = np.ones((2, 2), dtype=np.float64)
    c = np.array([[7], [8]], dtype=np.uint16)
    header = {
        "inputs": [
            {
                "name": "a",
                "shape": [2, 3],
                "datatype": "INT32",
                "parameters": {"binary_data_size": 24},
            },
            {"name": "b", "shape": [2, 2], "datatype": "FP64", "data": b.tolist()},
            {
                "name": "c",
                "shape": [2, 1],
                "datatype": "UINT16",
                "parameters": {"binary_data_size": 4},
            },
        ]
    }
    body, hl = binary_request(header, a.tobytes(), c.tobytes())
    specs = [spec("a", "INT32", (-1, 3)), spec("b", "FP64", (-1, 2)), spec("c", "UINT16", (-1, 1))]
    got = decode(body, specs, header_length=hl).inputs
    assert list(got) == ["a", "b", "c"]
    np.testing.assert_array_equal(got["a"], a)
    np.testing.assert_array_equal(got["b"], b)
    np.testing.assert_array_equal(got["c"], c)


def test_outputs_filter_order_and_binary_override() -> None:
    body = orjson.dumps(
        {
            "id": "abc",
            "parameters": {"binary_data_output": True},
            "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}],
            "outputs": [{"name": "z"}, {"name": "y", "parameters": {"binary_data": False}}],
        }
    )
    req = decode(body, [spec("x", "FP32", (-1,))], outputs=("y", "z", "w"))
    assert req.id == "abc"
    # binary_data_output is the default; an output's binary_data overrides it.
    assert req.outputs == (codec.RequestedOutput("z", True), codec.RequestedOutput("y", False))
    y = np.array([1.0], dtype=np.float32)
    z = np.array([2, 3], dtype=np.int64)
    content, n = codec.encode_response(
        model_name="m",
        model_version="1",
        request=req,
        outputs={"y": y, "z": z, "w": y},
        order=["y", "z", "w"],
    )
    assert n is not None
    meta = orjson.loads(content[:n])
    assert [o["name"] for o in meta["outputs"]] == ["z", "y"]
    assert meta["outputs"][1]["data"] == [1.0]
    assert np.frombuffer(content[n:], dtype="<i8").tolist() == [2, 3]


def test_priority_maps_onto_the_batcher_order() -> None:
    # Lower batcher numbers are served first: 1 (highest) < 0 (default) < 2 < 3.
    keys = {p: codec.batcher_priority(p) for p in (0, 1, 2, 3, 10)}
    assert keys[0] == 0
    assert sorted(keys, key=keys.__getitem__) == [1, 0, 2, 3, 10]


@pytest.mark.parametrize(
    ("params", "timeout_s", "priority"),
    [
        ({}, None, 0),
        ({"timeout": 0}, None, 0),
        ({"timeout": 2_500_000, "priority": 1}, 2.5, -1),
        ({"timeout": 1, "priority": 3}, 1e-6, 2),
    ],
)
def test_schedule_policy_parameters(
    params: dict[str, Any], timeout_s: float | None, priority: int
) -> None:
    body = orjson.dumps(
        {
            "parameters": params,
            "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}],
        }
    )
    req = decode(body, [spec("x", "FP32", (-1,))])
    assert req.timeout_s == timeout_s and req.priority == priority


# -- header, raw bodies, compression -----------------------------------------------------


def test_split_body() -> None:
    body = b'{"inputs": []}\x00\x01'
    header, offset = codec.split_body(body, "14", None)
    assert header is not None and bytes(header) == b'{"inputs": []}' and offset == 14
    assert codec.split_body(body, "0", None) == (None, 0)
    assert codec.split_body(body, None, "application/octet-stream") == (None, 0)
    header, offset = codec.split_body(body, None, "application/json")
    assert header is not None and offset == len(body)
    with pytest.raises(BadInput, match="Inference-Header-Content-Length 99 is past the end"):
        codec.split_body(body, "99", None)
    with pytest.raises(BadInput, match="must be a non-negative integer, got '-1'"):
        codec.split_body(body, "-1", None)


def test_raw_body_derives_rows_from_the_byte_count() -> None:
    arr = np.arange(2 * 8 * 8, dtype=np.float32).reshape(2, 8, 8, 1)
    body = arr.tobytes()
    req = decode(body, [spec("image", "FP32", (-1, 8, 8, 1))], header_length="0")
    assert req.binary_output and req.outputs is None
    np.testing.assert_array_equal(req.inputs["image"], arr)
    with pytest.raises(
        BadInput,
        match=r"'image': a raw body must be a whole number of rows of 8 x 8 x 1 FP32 "
        r"\(256 bytes each\), got 300 bytes",
    ):
        decode(b"\x00" * 300, [spec("image", "FP32", (-1, 8, 8, 1))], header_length="0")
    with pytest.raises(BadInput, match="more than one variable dimension"):
        decode(body, [spec("image", "FP32", (-1, -1))], header_length="0")
    with pytest.raises(BadInput, match="needs a single-input model"):
        decode(body, [spec("a", "FP32", (-1,)), spec("b", "FP32", (-1,))], header_length="0")


def test_raw_bytes_body_is_one_element() -> None:
    req = decode(b"\x00hello", [spec("s", "BYTES", (-1,))], content_type="application/octet-stream")
    assert req.inputs["s"].tolist() == [b"\x00hello"]


@pytest.mark.parametrize(
    ("encoding", "pack"), [("gzip", gzip.compress), ("deflate", zlib.compress), ("identity", bytes)]
)
def test_decompress(encoding: str, pack: Any) -> None:
    data = b'{"inputs": []}' * 100
    assert codec.decompress(pack(data), encoding, 10_000) == data
    if encoding != "identity":
        with pytest.raises(PayloadTooLarge, match="over the limit of 1000 bytes"):
            codec.decompress(pack(data), encoding, 1000)
        with pytest.raises(BadInput, match=f"not valid {encoding} data"):
            codec.decompress(b"not compressed", encoding, 10_000)


def test_uint64_json_values_are_exact() -> None:
    # numpy alone would read integers past 2**63 - 1 as (inexact) float64.
    got = codec.decode_json_data("u", "UINT64", (3,), [2**64 - 1, 2**63 + 1, 0])
    assert got.dtype == np.uint64 and got.tolist() == [2**64 - 1, 2**63 + 1, 0]
    with pytest.raises(BadInput, match=r"'u': values must lie in \[0, 18446744073709551615\]"):
        codec.decode_json_data("u", "UINT64", (1,), [-1])
