"""A catalogue of hostile requests against a real server. Each one gets a 4xx with
{"error": ...}, the message stays short (no raw input reflected beyond an excerpt),
and the server keeps serving."""

from __future__ import annotations

import gzip
import json
import struct

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
    ("long-model-name", "POST", f"/v1/models/{LONG}:predict", {"instances": [ROW]}, (404,)),
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


@pytest.mark.parametrize(
    ("method", "path", "body", "statuses"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_hostile_request_gets_a_clear_4xx(
    client: httpx.Client, method: str, path: str, body: object, statuses: tuple[int, ...]
) -> None:
    headers: dict[str, str] = {}
    if isinstance(body, tuple):
        content, headers = body
    elif isinstance(body, bytes):
        content, headers = body, {"Content-Type": "application/json"}
    elif body is None:
        content = b""
    else:
        content, headers = json.dumps(body).encode(), {"Content-Type": "application/json"}
    if "Content-Length" in headers:  # a lying length: send it raw, the client would fix it
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
    client: httpx.Client, method: str, path: str, body: bytes, headers: dict[str, str]
) -> httpx.Response:
    import socket

    url = httpx.URL(str(client.base_url))
    with socket.create_connection((url.host, url.port or 80), timeout=10) as s:
        head = f"{method} {path} HTTP/1.1\r\nHost: x\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in headers.items()
        )
        s.sendall(head.encode() + b"\r\n" + body)
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
    assert len(CASES) >= 30
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
