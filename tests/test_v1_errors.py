"""Every bad input of the serving core gets a 4xx {"error": ...} naming what was wrong."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from conftest import ServerProcess, digits_rows

ROW = digits_rows(1)[0].tolist()
CASES = [
    # (id, path, body (bytes or json), status, words the message must contain)
    (
        "malformed-json",
        "/v1/models/digits:predict",
        b'{"instances": [1, 2',
        400,
        ["malformed JSON"],
    ),
    ("empty-body", "/v1/models/digits:predict", b"", 400, ["empty request body"]),
    (
        "not-an-object",
        "/v1/models/digits:predict",
        [1, 2, 3],
        400,
        ["expected a JSON object", "list"],
    ),
    (
        "unknown-model",
        "/v1/models/nope:predict",
        {"instances": [ROW]},
        404,
        ["unknown model 'nope'", "digits"],
    ),
    (
        "unknown-version",
        "/v1/models/digits/versions/7:predict",
        {"instances": [ROW]},
        404,
        ["no version 7", "[1]"],
    ),
    (
        "bad-version",
        "/v1/models/digits/versions/x:predict",
        {"instances": [ROW]},
        404,
        ["no version 'x'"],
    ),
    (
        "missing-input",
        "/v1/models/multi:predict",
        {"inputs": {"features": [ROW]}},
        400,
        ["missing input(s) ['bias']"],
    ),
    (
        "extra-input",
        "/v1/models/digits:predict",
        {"inputs": {"pixels": [ROW], "extra": [1]}},
        400,
        ["unknown input", "extra", "pixels"],
    ),
    (
        "wrong-shape",
        "/v1/models/digits:predict",
        {"instances": [[1.0, 2.0]]},
        400,
        ["'pixels'", "expected shape [-1, 64]", "got [1, 2]"],
    ),
    (
        "wrong-rank",
        "/v1/models/digits_cnn:predict",
        {"instances": [ROW]},
        400,
        ["'image'", "expected shape [-1, 8, 8, 1]", "got [1, 64]"],
    ),
    (
        "strings",
        "/v1/models/digits:predict",
        {"instances": [["a"] * 64]},
        400,
        ["'pixels'", "non-numeric"],
    ),
    ("ragged", "/v1/models/digits:predict", {"instances": [ROW, [1.0]]}, 400, ["'pixels'"]),
    (
        "fraction-for-int",
        "/v1/models/multi:predict",
        {"inputs": {"features": [ROW], "bias": [[0.5] * 10]}},
        400,
        ["'bias'", "int32", "fractional"],
    ),
    (
        "int8-out-of-range",
        "/v1/models/digits_int8:predict",
        {"instances": [[300] * 64]},
        400,
        ["'pixels'", "[-128, 127]", "300"],
    ),
    ("empty-batch", "/v1/models/digits:predict", {"instances": []}, 400, ["empty batch"]),
    ("empty-columnar", "/v1/models/digits:predict", {"inputs": {"pixels": []}}, 400, ["'pixels'"]),
    (
        "over-max-batch",
        "/v1/models/digits:predict",
        {"instances": [ROW] * 4097},
        400,
        ["4097 rows", "max_request_rows 4096"],
    ),
    (
        "both-formats",
        "/v1/models/digits:predict",
        {"instances": [ROW], "inputs": [ROW]},
        400,
        ["exactly one of"],
    ),
    (
        "neither-format",
        "/v1/models/digits:predict",
        {"signature_name": "serving_default"},
        400,
        ["exactly one of"],
    ),
    (
        "unknown-field",
        "/v1/models/digits:predict",
        {"instances": [ROW], "foo": 1},
        400,
        ["unknown field", "foo"],
    ),
    (
        "bad-signature",
        "/v1/models/digits:predict",
        {"signature_name": "train", "instances": [ROW]},
        400,
        ["signature_name", "train"],
    ),
    (
        "batch-disagree",
        "/v1/models/multi:predict",
        {"inputs": {"features": [ROW, ROW], "bias": [[0] * 10]}},
        400,
        ["disagree", "2 rows", "1 rows"],
    ),
    (
        "multi-bare-rows",
        "/v1/models/multi:predict",
        {"instances": [ROW]},
        400,
        ["several inputs", "object"],
    ),
    (
        "instances-not-list",
        "/v1/models/digits:predict",
        {"instances": 5},
        400,
        ["'instances' must be a list"],
    ),
    (
        "float32-overflow",
        "/v1/models/digits:predict",
        {"instances": [[1e39, *ROW[1:]]]},
        400,
        ["'pixels'", "overflow float32"],
    ),
    (
        "scalar-input",
        "/v1/models/digits:predict",
        {"inputs": {"pixels": 3.0}},
        400,
        ["'pixels'", "scalar"],
    ),
]


@pytest.mark.parametrize(
    ("path", "body", "status", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_is_a_clear_4xx(
    client: httpx.Client, path: str, body: object, status: int, words: list[str]
) -> None:
    if isinstance(body, bytes):
        r = client.post(path, content=body, headers={"content-type": "application/json"})
    else:
        r = client.post(path, json=body)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    message = r.json()["error"]
    for w in words:
        assert w in message, f"{w!r} not in {message!r}"
    # The server is still healthy and still serves.
    assert client.get("/v2/health/ready").status_code == 200


def test_unknown_route_and_method_are_json_errors(client: httpx.Client) -> None:
    r = client.get("/v1/nothing/here")
    assert r.status_code == 404 and "error" in r.json()
    r = client.get("/v1/models/digits:predict")
    assert r.status_code in (404, 405) and "error" in r.json()


@pytest.fixture(scope="module")
def small_body_server() -> Iterator[ServerProcess]:
    server = ServerProcess(
        "tests/models/repo/digits/1/model.tflite",
        env={"SERVEKIT_MAX_BODY_BYTES": "2048"},
        name="small-body",
    ).wait_ready()
    yield server
    assert server.stop() == 0, server.log()


def test_body_over_limit_is_413(small_body_server: ServerProcess) -> None:
    big = {"instances": [ROW] * 10}  # ~6 KB of JSON
    r = httpx.post(f"{small_body_server.url}/v1/models/model:predict", json=big)
    assert r.status_code == 413
    assert "2048 bytes" in r.json()["error"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit counts streamed bytes
        yield b'{"instances": ['
        for _ in range(10):
            yield (str(ROW) + ",").encode()
        yield b"[0]]}"

    r = httpx.post(f"{small_body_server.url}/v1/models/model:predict", content=chunks())
    assert r.status_code == 413
    ok = httpx.post(f"{small_body_server.url}/v1/models/model:predict", json={"instances": [ROW]})
    assert ok.status_code == 200, ok.text
