"""A catalogue of hostile requests against a real server. Each one gets a 4xx with
{"error": ...}, the message stays short (no raw input reflected beyond an excerpt),
and the server keeps serving."""

from __future__ import annotations

import gzip
import json
import struct
import zlib

import httpx
import numpy as np
import pytest

from conftest import ServerProcess, digits_rows

ROW = digits_rows(1)[0].tolist()
F32_ROW = np.asarray([ROW], dtype=np.float32)
LONG = "x" * 20_000


def v2_header(inputs: list[dict[str, object]], **extra: object) -> dict[str, object]:
    return {"inputs": inputs, **extra}


def binary(
    header: dict[str, object], *tensors: bytes, lie: int | None = None
) -> tuple[bytes, dict[str, str]]:
    head = json.dumps(header).encode()
    length = len(head) if lie is None else lie
    return head + b"".join(tensors), {
        "Inference-Header-Content-Length": str(length),
        "Content-Type": "application/octet-stream",
    }


def pixels(
    data: object, shape: object = (1, 64), datatype: str = "FP32", **kw: object
) -> dict[str, object]:
    return {"name": "pixels", "shape": shape, "datatype": datatype, "data": data, **kw}


def bin_pixels(
    arr: np.ndarray, datatype: str = "FP32", size: int | None = None
) -> tuple[bytes, dict[str, str]]:
    raw = arr.tobytes()
    spec = {
        "name": "pixels",
        "shape": list(arr.shape),
        "datatype": datatype,
        "parameters": {"binary_data_size": len(raw) if size is None else size},
    }
    return binary(v2_header([spec]), raw)


NAN = np.full((1, 64), np.nan, dtype=np.float32)
INF = np.full((1, 64), np.inf, dtype=np.float32)
DEEP = "[" * 5000 + "]" * 5000
INFER = "/v2/models/digits/infer"
PREDICT = "/v1/models/digits:predict"

# (id, method, path, body (bytes | json-able | (bytes, headers)), statuses allowed)
CASES: list[tuple[str, str, str, object, tuple[int, ...]]] = [
    ("claims-10GB", "POST", PREDICT, (b"{}", {"Content-Length": str(10 * 2**30)}), (413,)),
    ("deep-nesting-5000", "POST", PREDICT, DEEP.encode(), (400,)),
    (
        "deep-nesting-in-instances",
        "POST",
        PREDICT,
        ('{"instances": ' + "[" * 200 + "1" + "]" * 200 + "}").encode(),
        (400,),
    ),
    ("instances-string", "POST", PREDICT, {"instances": "AAAA"}, (400,)),
    ("instances-null", "POST", PREDICT, {"instances": None}, (400,)),
    ("instances-object", "POST", PREDICT, {"instances": {"pixels": ROW}}, (400,)),
    ("inputs-null", "POST", PREDICT, {"inputs": None}, (400,)),
    ("empty-object", "POST", PREDICT, {}, (400,)),
    ("json-array-body", "POST", INFER, [1, 2, 3], (400,)),
    ("duplicate-keys", "POST", PREDICT, b'{"instances": [[0]], "instances": [[1]]}', (400,)),
    ("nan-literal", "POST", PREDICT, b'{"instances": [[NaN]]}', (400,)),
    ("huge-number", "POST", PREDICT, b'{"instances": [[1e999]]}', (400,)),
    ("null-bytes-in-keys", "POST", PREDICT, b'{"inst\\u0000ances": [[1]]}', (400,)),
    (
        "bools-for-int8",
        "POST",
        "/v1/models/digits_int8:predict",
        {"instances": [[True] * 64, [1.5] * 64]},
        (400,),
    ),
    (
        "huge-shape-tiny-data",
        "POST",
        INFER,
        v2_header([pixels([1.0], shape=[100000, 100000, 100000])]),
        (400,),
    ),
    (
        "shape-product-overflow",
        "POST",
        INFER,
        v2_header([pixels([1.0], shape=[2**62, 2**62])]),
        (400,),
    ),
    ("negative-dim", "POST", INFER, v2_header([pixels(ROW, shape=[-1, 64])]), (400,)),
    ("float-dim", "POST", INFER, v2_header([pixels(ROW, shape=[1.5, 64])]), (400,)),
    ("shape-not-list", "POST", INFER, v2_header([pixels(ROW, shape="1,64")]), (400,)),
    ("datatype-with-space", "POST", INFER, v2_header([pixels(ROW, datatype="FP32 ")]), (400,)),
    ("datatype-mismatch", "POST", INFER, v2_header([pixels([1] * 64, datatype="INT64")]), (400,)),
    ("data-as-string", "POST", INFER, v2_header([pixels("AAAA")]), (400,)),
    (
        "thousands-of-inputs",
        "POST",
        INFER,
        v2_header([pixels(ROW) | {"name": f"in{i}"} for i in range(5000)]),
        (400,),
    ),
    ("parameters-as-list", "POST", INFER, v2_header([pixels(ROW)], parameters=[1, 2]), (400,)),
    (
        "negative-timeout",
        "POST",
        INFER,
        v2_header([pixels(ROW)], parameters={"timeout": -5}),
        (400,),
    ),
    ("unknown-output", "POST", INFER, v2_header([pixels(ROW)], outputs=[{"name": LONG}]), (400,)),
    (
        "header-length-past-body",
        "POST",
        INFER,
        binary(v2_header([pixels(ROW)]), lie=10_000),
        (400,),
    ),
    ("header-length-negative", "POST", INFER, binary(v2_header([pixels(ROW)]), lie=-5), (400,)),
    ("binary-size-lies", "POST", INFER, bin_pixels(F32_ROW, size=4), (400,)),
    ("binary-size-huge", "POST", INFER, bin_pixels(F32_ROW, size=2**40), (400,)),
    ("binary-nan", "POST", INFER, bin_pixels(NAN), (400,)),
    ("binary-inf", "POST", INFER, bin_pixels(INF), (400,)),
    (
        "raw-body-wrong-size",
        "POST",
        INFER,
        (b"\x00" * 17, {"Inference-Header-Content-Length": "0"}),
        (400,),
    ),
    (
        "gzip-garbage",
        "POST",
        INFER,
        (b"not gzip at all", {"Content-Encoding": "gzip", "Content-Type": "application/json"}),
        (400,),
    ),
    (
        "gzip-bomb",
        "POST",
        INFER,
        (
            gzip.compress(b"[" + b" " * (80 * 2**20) + b"]"),
            {"Content-Encoding": "gzip", "Content-Type": "application/json"},
        ),
        (400, 413),
    ),
    ("unicode-model-name", "POST", "/v1/models/dígïts🙂:predict", {"instances": [ROW]}, (404,)),
    ("unicode-input-name", "POST", PREDICT, {"inputs": {"píxels🙂": [ROW]}}, (400,)),
    ("long-model-name", "POST", f"/v1/models/{LONG}:predict", {"instances": [ROW]}, (404, 414)),
    ("long-input-name", "POST", PREDICT, {"inputs": {LONG: [ROW]}}, (400,)),
    (
        "path-traversal-model",
        "POST",
        "/v1/models/..%2F..%2Fetc%2Fpasswd:predict",
        {"instances": [ROW]},
        (404,),
    ),
    ("nul-in-model-name", "POST", "/v2/models/%00/infer", v2_header([pixels(ROW)]), (404,)),
    (
        "version-negative",
        "POST",
        "/v1/models/digits/versions/-1:predict",
        {"instances": [ROW]},
        (400, 404),
    ),
    (
        "version-hex",
        "POST",
        "/v2/models/digits/versions/0x1/infer",
        v2_header([pixels(ROW)]),
        (404,),
    ),
    (
        "version-huge",
        "POST",
        "/v1/models/digits/versions/99999999999999999999999:predict",
        {"instances": [ROW]},
        (404,),
    ),
    ("admin-traversal", "POST", "/v2/repository/models/..%2Fsecrets/load", None, (403, 404)),
    ("admin-no-token", "POST", "/v2/repository/index", None, (401,)),
    ("get-on-infer", "GET", INFER, None, (404, 405)),
]


def nested(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


def deep_object(depth: int) -> bytes:
    return ('{"a": ' * depth + "1" + "}" * depth).encode()


def v2_json(header: dict[str, object]) -> tuple[bytes, dict[str, str]]:
    return json.dumps(header).encode(), {"Content-Type": "application/json"}


def v2_raw(text: str) -> tuple[bytes, dict[str, str]]:
    return text.encode(), {"Content-Type": "application/json"}


def header_length(value: bytes) -> tuple[bytes, dict[str, str | bytes]]:
    """A V2 binary request whose Inference-Header-Content-Length is ``value`` (raw bytes:
    the client would refuse or re-encode some of them)."""
    head = json.dumps(v2_header([pixels(ROW)])).encode()
    return head, {"Inference-Header-Content-Length": value, "Content-Type": "application/json"}


def header_length_json(head: bytes) -> tuple[bytes, dict[str, str]]:
    """A V2 binary request whose JSON header is ``head``, as sent."""
    return head, {
        "Inference-Header-Content-Length": str(len(head)),
        "Content-Type": "application/octet-stream",
    }


def bin_header(header: dict[str, object], *tensors: bytes) -> tuple[bytes, dict[str, str]]:
    return binary(header, *tensors)


def bin_spec(shape: list[int], size: object, datatype: str = "FP32") -> dict[str, object]:
    return {
        "name": "pixels",
        "shape": shape,
        "datatype": datatype,
        "parameters": {"binary_data_size": size},
    }


F32 = F32_ROW.tobytes()

# The independent round's 12 requests that got a 500 (RecursionError or ValueError), and
# their families: each must be a 400 that names the problem.
CASES += [
    # Large numeric arrays are decoded apart from the rest of the body: their dimensions
    # still count towards the depth limit, and one where a key belongs is malformed.
    (
        "v1-deep-around-a-large-array",
        "POST",
        PREDICT,
        b'{"instances":' * 9 + nested(16, "1," * 9000 + "1").encode() + b"}" * 9,
        (400,),
    ),
    (
        "v1-large-array-as-a-key",
        "POST",
        PREDICT,
        b'{"instances": 1, [' + b"1," * 9000 + b"1]: 2}",
        (400,),
    ),
    ("v1-deep-array-600", "POST", PREDICT, nested(600).encode(), (400,)),
    ("v1-deep-array-1000", "POST", PREDICT, nested(1000).encode(), (400,)),
    ("v1-deep-object-500", "POST", PREDICT, deep_object(500), (400,)),
    ("v1-deep-object-1000", "POST", PREDICT, deep_object(1000), (400,)),
    (
        "v1-instances-deep-600",
        "POST",
        PREDICT,
        ('{"instances": ' + nested(600) + "}").encode(),
        (400,),
    ),
    (
        "v1-instances-deep-1000",
        "POST",
        PREDICT,
        ('{"instances": ' + nested(1000) + "}").encode(),
        (400,),
    ),
    (
        "v1-instances-deep-objects",
        "POST",
        PREDICT,
        ('{"instances": [' + deep_object(700).decode() + "]}").encode(),
        (400,),
    ),
    (
        "v1-inputs-deep-600",
        "POST",
        PREDICT,
        ('{"inputs": {"pixels": ' + nested(600) + "}}").encode(),
        (400,),
    ),
    (
        "v1-deep-with-nan",  # NaN sends the body to the standard library's parser
        "POST",
        PREDICT,
        ('{"instances": ' + nested(900, "NaN") + "}").encode(),
        (400,),
    ),
    ("v1-deep-mixed", "POST", PREDICT, ('[{"a": ' * 400 + "1" + "}]" * 400).encode(), (400,)),
    (
        "v1-nesting-just-too-deep",
        "POST",
        PREDICT,
        ('{"instances": ' + nested(30) + "}").encode(),
        (400,),
    ),
    ("v2-deep-array-600", "POST", INFER, v2_raw(nested(600)), (400,)),
    ("v2-deep-object-1000", "POST", INFER, deep_object(1000), (400,)),
    (
        "v2-data-deep-600",
        "POST",
        INFER,
        v2_raw(
            '{"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", '
            '"data": ' + nested(600) + "}]}"
        ),
        (400,),
    ),
    (
        "v2-parameters-deep-900",
        "POST",
        INFER,
        v2_raw('{"inputs": [], "parameters": ' + deep_object(900).decode() + "}"),
        (400,),
    ),
    (
        "v2-binary-header-deep-600",
        "POST",
        INFER,
        (nested(600).encode(), {"Inference-Header-Content-Length": str(1201)}),
        (400,),
    ),
    (
        "v2-binary-header-deep-object-1000",
        "POST",
        INFER,
        (deep_object(1000), {"Inference-Header-Content-Length": str(len(deep_object(1000)))}),
        (400,),
    ),
    ("v2-shape-100-dims", "POST", INFER, v2_header([pixels([1.0], shape=[1] * 100)]), (400,)),
    ("v2-shape-65-dims", "POST", INFER, v2_header([pixels([1.0], shape=[1] * 65)]), (400,)),
    ("v2-shape-17-dims", "POST", INFER, v2_header([pixels([1.0], shape=[1] * 17)]), (400,)),
    (
        "v2-shape-zero-then-huge",
        "POST",
        INFER,
        v2_header([pixels([], shape=[0, 1099511627776, 1099511627776])]),
        (400,),
    ),
    (
        "v2-shape-huge-then-zero",
        "POST",
        INFER,
        v2_header([pixels([], shape=[2**62, 2**62, 0])]),
        (400,),
    ),
    ("v2-shape-uint64-max", "POST", INFER, v2_header([pixels([], shape=[0, 2**64 - 1])]), (400,)),
    (
        "v2-shape-past-uint64",
        "POST",
        INFER,
        v2_raw(
            '{"inputs": [{"name": "pixels", '
            '"shape": [0, 99999999999999999999999], "datatype": "FP32", "data": []}]}'
        ),
        (400,),
    ),
    ("v2-shape-bool-dim", "POST", INFER, v2_header([pixels(ROW, shape=[True, 64])]), (400,)),
    ("v2-shape-empty", "POST", INFER, v2_header([pixels([1.0], shape=[])]), (400,)),
    ("v2-shape-zero-rows", "POST", INFER, v2_header([pixels([], shape=[0, 64])]), (400,)),
    ("v2-shape-float-exp", "POST", INFER, v2_header([pixels(ROW, shape=[1e300, 64])]), (400,)),
    (
        "v2-binary-shape-zero-then-huge",
        "POST",
        INFER,
        bin_header(v2_header([bin_spec([0, 2**40, 2**40], 0)])),
        (400,),
    ),
    (
        "v2-binary-shape-huge-then-zero",
        "POST",
        INFER,
        bin_header(v2_header([bin_spec([2**62, 2**62, 0], 0)])),
        (400,),
    ),
    (
        "v2-binary-shape-100-dims",
        "POST",
        INFER,
        bin_header(v2_header([bin_spec([1] * 100, 4)]), F32[:4]),
        (400,),
    ),
    (
        "v2-binary-shape-overflows-bytes",
        "POST",
        INFER,
        bin_header(v2_header([bin_spec([2**40, 2**20], 256)]), F32),
        (400,),
    ),
    ("header-length-superscript-two", "POST", INFER, header_length(b"\xb2"), (400,)),
    ("header-length-superscript-one", "POST", INFER, header_length(b"1\xb9"), (400,)),
    ("header-length-5000-digits", "POST", INFER, header_length(b"9" * 5000), (400,)),
    ("header-length-plus", "POST", INFER, header_length(b"+10"), (400,)),
    ("header-length-underscore", "POST", INFER, header_length(b"1_0"), (400,)),
    ("header-length-hex", "POST", INFER, header_length(b"0x10"), (400,)),
    ("header-length-float", "POST", INFER, header_length(b"10.0"), (400,)),
    ("header-length-empty", "POST", INFER, header_length(b""), (400,)),
    ("header-length-utf8-digit", "POST", INFER, header_length("٣".encode()), (400,)),
    # Duplicate keys, anywhere in the document.
    (
        "v2-duplicate-input-key",
        "POST",
        INFER,
        v2_raw(
            '{"inputs": [{"name": "pixels", "name": "x", "shape": [1, 64], '
            '"datatype": "FP32", "data": ' + json.dumps(ROW) + "}]}"
        ),
        (400,),
    ),
    (
        "v2-duplicate-parameters-key",
        "POST",
        INFER,
        v2_raw('{"inputs": [], "parameters": {"timeout": 1, "timeout": 2}}'),
        (400,),
    ),
    (
        "v2-duplicate-key-binary-header",
        "POST",
        INFER,
        header_length_json(b'{"inputs": [], "inputs": []}'),
        (400,),
    ),
    (
        "v1-duplicate-key-in-row",
        "POST",
        "/v1/models/multi:predict",
        b'{"instances": [{"bias": [0], "bias": [1], "features": [0]}]}',
        (400,),
    ),
    # Wrong types.
    ("v2-inputs-object", "POST", INFER, {"inputs": {"pixels": ROW}}, (400,)),
    ("v2-inputs-string", "POST", INFER, {"inputs": "pixels"}, (400,)),
    ("v2-input-name-number", "POST", INFER, v2_header([pixels(ROW) | {"name": 5}]), (400,)),
    ("v2-data-object", "POST", INFER, v2_header([pixels({"a": 1})]), (400,)),
    ("v2-data-strings", "POST", INFER, v2_header([pixels(["1.0"] * 64)]), (400,)),
    ("v2-data-nulls", "POST", INFER, v2_header([pixels([None] * 64)]), (400,)),
    ("v2-data-ragged", "POST", INFER, v2_header([pixels([ROW, ROW[:3]], shape=[2, 64])]), (400,)),
    ("v2-data-too-few", "POST", INFER, v2_header([pixels(ROW[:63])]), (400,)),
    ("v2-id-number", "POST", INFER, v2_header([pixels(ROW)], id=5), (400,)),
    ("v2-outputs-object", "POST", INFER, v2_header([pixels(ROW)], outputs={"a": 1}), (400,)),
    (
        "v2-binary-size-string",
        "POST",
        INFER,
        bin_header(v2_header([bin_spec([1, 64], "256")]), F32),
        (400,),
    ),
    (
        "v2-binary-size-negative",
        "POST",
        INFER,
        bin_header(v2_header([bin_spec([1, 64], -256)]), F32),
        (400,),
    ),
    (
        "v2-binary-size-float",
        "POST",
        INFER,
        bin_header(v2_header([bin_spec([1, 64], 256.0)]), F32),
        (400,),
    ),
    (
        "v2-binary-trailing-bytes",
        "POST",
        INFER,
        bin_header(v2_header([bin_spec([1, 64], 256)]), F32, b"extra"),
        (400,),
    ),
    (
        "v2-binary-bytes-datatype",
        "POST",
        INFER,
        bin_header(v2_header([bin_spec([1, 1], 8, "BYTES")]), b"\xff\xff\xff\xff1234"),
        (400,),
    ),
    (
        "v2-binary-and-data",
        "POST",
        INFER,
        bin_header(v2_header([bin_spec([1, 64], 256) | {"data": ROW}]), F32),
        (400,),
    ),
    ("v1-instances-nulls", "POST", PREDICT, {"instances": [[None] * 64]}, (400,)),
    ("v1-instances-strings", "POST", PREDICT, {"instances": [["a"] * 64]}, (400,)),
    ("v1-signature-number", "POST", PREDICT, {"instances": [ROW], "signature_name": 5}, (400,)),
    ("v1-instances-ragged", "POST", PREDICT, {"instances": [ROW, ROW[:5]]}, (400,)),
    ("v1-instances-b64", "POST", PREDICT, {"instances": [{"b64": "!!!not base64"}]}, (400,)),
    ("v1-inputs-b64", "POST", PREDICT, {"inputs": {"pixels": {"b64": "@@@"}}}, (400,)),
    # Huge numbers.
    (
        "v2-data-1e999",
        "POST",
        INFER,
        v2_raw(
            '{"inputs": [{"name": "pixels", "shape": [1, 1], "datatype": "FP32", "data": [1e999]}]}'
        ),
        (400,),
    ),
    ("v2-data-overflows-fp32", "POST", INFER, v2_header([pixels([1e39] * 64)]), (400,)),
    (
        "v2-data-bigint",
        "POST",
        INFER,
        v2_raw(
            '{"inputs": [{"name": "pixels", "shape": [1, 1], '
            '"datatype": "FP32", "data": [123456789012345678901234567890]}]}'
        ),
        (400,),
    ),
    (
        "v2-timeout-past-uint64",
        "POST",
        INFER,
        v2_header([pixels(ROW)], parameters={"timeout": 2**64}),
        (400,),
    ),
    (
        "v2-priority-huge",
        "POST",
        INFER,
        v2_raw('{"inputs": [], "parameters": {"priority": 99999999999999999999999}}'),
        (400,),
    ),
    (
        "v1-int8-out-of-range",
        "POST",
        "/v1/models/digits_int8:predict",
        {"instances": [[300] * 64]},
        (400,),
    ),
    # Encodings: not UTF-8, BOMs, other Unicode forms.
    ("body-latin1", "POST", PREDICT, b'{"instances": [["\xe9"]]}', (400,)),
    ("body-invalid-utf8-key", "POST", INFER, b'{"\xff\xfe": 1}', (400,)),
    (
        "body-utf8-bom",
        "POST",
        PREDICT,
        b"\xef\xbb\xbf" + json.dumps({"instances": [ROW]}).encode(),
        (400,),
    ),
    ("body-utf16", "POST", PREDICT, json.dumps({"instances": [ROW]}).encode("utf-16"), (400,)),
    ("lone-surrogate-key", "POST", PREDICT, b'{"\\ud800": [[1]]}', (400,)),
    ("body-only-whitespace", "POST", PREDICT, b"   \n\t ", (400,)),
    (
        "body-trailing-garbage",
        "POST",
        INFER,
        json.dumps(v2_header([pixels(ROW)])).encode() + b"}",
        (400,),
    ),
    ("body-two-documents", "POST", PREDICT, b'{"instances": [[1]]} {"instances": [[1]]}', (400,)),
    ("body-empty", "POST", INFER, (b"", {"Content-Type": "application/json"}), (400,)),
    # Compressed bodies.
    (
        "deflate-bomb",
        "POST",
        INFER,
        (
            zlib.compress(b"[" + b" " * (80 * 2**20) + b"]", 9),
            {"Content-Encoding": "deflate", "Content-Type": "application/json"},
        ),
        (400, 413),
    ),
    (
        "gzip-truncated",
        "POST",
        INFER,
        (
            gzip.compress(json.dumps(v2_header([pixels(ROW)])).encode())[:-12],
            {"Content-Encoding": "gzip", "Content-Type": "application/json"},
        ),
        (400,),
    ),
    (
        "gzip-deep-nesting",
        "POST",
        INFER,
        (
            gzip.compress(nested(1000).encode()),
            {"Content-Encoding": "gzip", "Content-Type": "application/json"},
        ),
        (400,),
    ),
    ("encoding-brotli", "POST", INFER, (b"\x00", {"Content-Encoding": "br"}), (400,)),
    ("encoding-stacked", "POST", INFER, (b"\x00", {"Content-Encoding": "gzip, gzip"}), (400,)),
]

MULTI_INFER = "/v2/models/multi/infer"

# The protocols' own parameters and extensions, misused.
CASES += [
    (
        "v2-sequence-id",
        "POST",
        INFER,
        v2_header([pixels(ROW)], parameters={"sequence_id": 7}),
        (400,),
    ),
    (
        "v2-binary-output-not-bool",
        "POST",
        INFER,
        v2_header([pixels(ROW)], parameters={"binary_data_output": "yes"}),
        (400,),
    ),
    (
        "v2-priority-negative",
        "POST",
        INFER,
        v2_header([pixels(ROW)], parameters={"priority": -1}),
        (400,),
    ),
    (
        "v2-timeout-float",
        "POST",
        INFER,
        v2_header([pixels(ROW)], parameters={"timeout": 1.5}),
        (400,),
    ),
    (
        "v2-input-shared-memory",
        "POST",
        INFER,
        v2_header([pixels(ROW, parameters={"shared_memory_region": "x"})]),
        (400,),
    ),
    (
        "v2-output-classification",
        "POST",
        INFER,
        v2_header(
            [pixels(ROW)], outputs=[{"name": "probabilities", "parameters": {"classification": 3}}]
        ),
        (400,),
    ),
    (
        "v2-output-twice",
        "POST",
        INFER,
        v2_header([pixels(ROW)], outputs=[{"name": "probabilities"}, {"name": "probabilities"}]),
        (400,),
    ),
    ("v2-input-twice", "POST", INFER, v2_header([pixels(ROW), pixels(ROW)]), (400,)),
    (
        "v2-input-missing",
        "POST",
        MULTI_INFER,
        v2_header([pixels(ROW) | {"name": "features"}]),
        (400,),
    ),
    ("v2-no-inputs", "POST", INFER, {"id": "x"}, (400,)),
    (
        "v2-raw-body-multi-input",
        "POST",
        MULTI_INFER,
        (b"\x00" * 256, {"Content-Type": "application/octet-stream"}),
        (400,),
    ),
    (
        "v2-binary-bool-not-0-or-1",
        "POST",
        INFER,
        bin_header(v2_header([bin_spec([1, 64], 64, "BOOL")]), b"\x02" * 64),
        (400,),
    ),
    (
        "v2-binary-fp16-for-fp32",
        "POST",
        INFER,
        bin_header(v2_header([bin_spec([1, 64], 128, "FP16")]), b"\x00" * 128),
        (400,),
    ),
    (
        "v2-binary-two-inputs-past-end",
        "POST",
        MULTI_INFER,
        bin_header(
            v2_header(
                [
                    bin_spec([1, 10], 40, "INT32") | {"name": "bias"},
                    bin_spec([1, 64], 256) | {"name": "features"},
                ]
            ),
            b"\x00" * 100,
        ),
        (400,),
    ),
    (
        "v2-data-fraction-for-int32",
        "POST",
        MULTI_INFER,
        v2_header(
            [
                {"name": "bias", "shape": [1, 10], "datatype": "INT32", "data": [0.5] * 10},
                {"name": "features", "shape": [1, 64], "datatype": "FP32", "data": ROW},
            ]
        ),
        (400,),
    ),
    (
        "v2-data-past-int32",
        "POST",
        MULTI_INFER,
        v2_header(
            [
                {"name": "bias", "shape": [1, 10], "datatype": "INT32", "data": [2**40] * 10},
                {"name": "features", "shape": [1, 64], "datatype": "FP32", "data": ROW},
            ]
        ),
        (400,),
    ),
    (
        "v2-rows-disagree",
        "POST",
        MULTI_INFER,
        v2_header(
            [
                {"name": "bias", "shape": [2, 10], "datatype": "INT32", "data": [0] * 20},
                {"name": "features", "shape": [1, 64], "datatype": "FP32", "data": ROW},
            ]
        ),
        (400,),
    ),
    # TF Serving REST's own.
    (
        "v1-both-instances-and-inputs",
        "POST",
        PREDICT,
        {"instances": [ROW], "inputs": [ROW]},
        (400,),
    ),
    ("v1-unknown-field", "POST", PREDICT, {"instances": [ROW], "extra": 1}, (400,)),
    ("v1-unknown-signature", "POST", PREDICT, {"instances": [ROW], "signature_name": "x"}, (400,)),
    ("v1-empty-instances", "POST", PREDICT, {"instances": []}, (400,)),
    (
        "v1-rows-with-different-inputs",
        "POST",
        "/v1/models/multi:predict",
        {"instances": [{"bias": [0] * 10, "features": ROW}, {"bias": [0] * 10}]},
        (400,),
    ),
    (
        "v1-nan-for-finite-model",
        "POST",
        PREDICT,
        b'{"instances": [[NaN' + b", 0" * 63 + b"]]}",
        (400,),
    ),
    ("v1-infinity-word-in-string", "POST", PREDICT, b'{"instances": "Infinity"}', (400,)),
    ("v1-classify", "POST", "/v1/models/digits:classify", {"examples": []}, (501,)),
    ("v1-label", "POST", "/v1/models/digits/labels/stable:predict", {"instances": [ROW]}, (400,)),
    ("v1-large-ragged-rows", "POST", PREDICT, {"instances": [ROW * 40, ROW * 39]}, (400,)),
    ("v1-large-strings", "POST", PREDICT, {"instances": [["1.0"] * 3000]}, (400,)),
    (
        "v2-large-data-wrong-count",
        "POST",
        INFER,
        v2_header([pixels(ROW * 100, shape=[99, 64])]),
        (400,),
    ),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "statuses"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_hostile_request_gets_a_clear_4xx(
    client: httpx.Client, method: str, path: str, body: object, statuses: tuple[int, ...]
) -> None:
    headers: dict[str, str | bytes] = {}
    if isinstance(body, tuple):
        content, headers = body
    elif isinstance(body, bytes):
        content, headers = body, {"Content-Type": "application/json"}
    elif body is None:
        content = b""
    else:
        content, headers = json.dumps(body).encode(), {"Content-Type": "application/json"}
    raw = "Content-Length" in headers or any(isinstance(v, bytes) for v in headers.values())
    if raw:  # a lying length or raw header bytes: sent as they are, a client would fix them
        r = raw_request(client, method, path, content, headers)
    else:
        r = client.request(method, path, content=content, headers=headers)
    assert r.status_code in statuses, (r.status_code, r.text[:300])
    assert r.headers["content-type"] == "application/json"
    message = r.json()["error"]
    assert isinstance(message, str) and message
    assert len(message) < 1000, f"error reflects too much input ({len(message)} chars)"
    assert client.get("/v2/health/ready").status_code == 200
    assert client.post(PREDICT, json={"instances": [ROW]}).status_code == 200


def raw_request(
    client: httpx.Client, method: str, path: str, body: bytes, headers: dict[str, str | bytes]
) -> httpx.Response:
    import socket

    url = httpx.URL(str(client.base_url))
    if not any(k.lower() == "content-length" for k in headers):
        headers = {**headers, "Content-Length": str(len(body))}
    with socket.create_connection((url.host, url.port or 80), timeout=10) as s:
        head = f"{method} {path} HTTP/1.1\r\nHost: x\r\n".encode() + b"".join(
            k.encode() + b": " + (v if isinstance(v, bytes) else v.encode()) + b"\r\n"
            for k, v in headers.items()
        )
        s.sendall(head + b"\r\n" + body)
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    hdrs = dict(line.split(": ", 1) for line in lines[1:])
    return httpx.Response(status, headers=hdrs, content=payload)


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


def test_catalogue_is_at_least_30() -> None:
    assert len(CASES) >= 160
    assert len({c[0] for c in CASES}) == len(CASES)


def test_nonfinite_allowed_when_the_model_says_so(tmp_path: object) -> None:
    import shutil
    from pathlib import Path

    from conftest import REPO

    repo = Path(str(tmp_path)) / "repo"
    shutil.copytree(REPO / "digits", repo / "digits")
    (repo / "digits" / "config.yaml").write_text("allow_nonfinite: true\n")
    server = ServerProcess(str(repo), name="nonfinite").wait_ready()
    try:
        content, headers = bin_pixels(NAN)
        r = httpx.post(f"{server.url}{INFER}", content=content, headers=headers)
        assert r.status_code == 200, r.text
        assert struct.calcsize("f") == 4
    finally:
        assert server.stop() == 0


def test_hostile_requests_leave_no_traceback_and_short_log_lines(
    repo_server: ServerProcess, client: httpx.Client
) -> None:
    """A 4xx is not logged; whatever the catalogue sent, the log has no traceback and no
    line long enough to carry a request's body."""
    for _, method, path, body, _ in CASES[-20:]:
        if isinstance(body, bytes):
            client.request(method, path, content=body)
    log = repo_server.log()
    assert "Traceback" not in log and "unhandled error" not in log
    assert max(len(line) for line in log.splitlines()) < 2000
