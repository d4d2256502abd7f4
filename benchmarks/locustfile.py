"""Locust users for servekit's demo model (``digits``: ``pixels`` f32[-1,64] ->
``probabilities`` f32[-1,10]), for people who load-test with locust.

Four tasks, each checking that the answer is a probability vector per row:

- ``v1 predict``: TF Serving row format, ``{"instances": [[...64 floats]]}``;
- ``v2 infer json``: Open Inference Protocol JSON;
- ``v2 infer binary``: the binary tensor data extension both ways (JSON header +
  raw float32 bytes, ``Inference-Header-Content-Length``);
- ``v2 infer raw``: the raw body form (header length 0: the whole body is the input;
  the answer is binary too).

Rows are the two real digits of the bundled sample request. Start a server
(``servekit serve``) and run, e.g.::

    locust -f benchmarks/locustfile.py --host http://127.0.0.1:8000 --headless -u 16 -r 16 -t 30s

``SERVEKIT_LOCUST_MODEL`` names another model with the same input and output (for
instance ``digits`` in a repository). Locust's own client costs far more CPU per request
than the server under test: for throughput numbers use ``servekit bench`` or ``wrk``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from importlib import resources

import numpy as np
import orjson
from locust import FastHttpUser, between, task
from locust.contrib.fasthttp import ResponseContextManager

MODEL = os.environ.get("SERVEKIT_LOCUST_MODEL", "digits")
ROWS = np.asarray(
    json.loads((resources.files("servekit.demo") / "sample_request.json").read_text())["instances"],
    dtype=np.float32,
)
CLASSES = 10

V1_BODY = orjson.dumps({"instances": ROWS.tolist()})
V2_JSON_BODY = orjson.dumps(
    {
        "inputs": [
            {
                "name": "pixels",
                "shape": list(ROWS.shape),
                "datatype": "FP32",
                "data": ROWS.reshape(-1).tolist(),
            }
        ]
    }
)
_HEADER = orjson.dumps(
    {
        "inputs": [
            {
                "name": "pixels",
                "shape": list(ROWS.shape),
                "datatype": "FP32",
                "parameters": {"binary_data_size": ROWS.nbytes},
            }
        ],
        "parameters": {"binary_data_output": True},
    }
)
RAW_BODY = ROWS.astype("<f4").tobytes()
V2_BINARY_BODY = _HEADER + RAW_BODY


def _v1_outputs(body: bytes, headers: Mapping[str, str]) -> np.ndarray:
    return np.asarray(orjson.loads(body)["predictions"])


def _v2_json_outputs(body: bytes, headers: Mapping[str, str]) -> np.ndarray:
    out = orjson.loads(body)["outputs"][0]
    return np.asarray(out["data"]).reshape(out["shape"])


def _v2_binary_outputs(body: bytes, headers: Mapping[str, str]) -> np.ndarray:
    n = int(headers["Inference-Header-Content-Length"])
    out = orjson.loads(body[:n])["outputs"][0]
    return np.frombuffer(body[n:], dtype="<f4").reshape(out["shape"])


def check(
    r: ResponseContextManager, outputs: Callable[[bytes, Mapping[str, str]], np.ndarray]
) -> None:
    """Fail the request unless it is a 200 with one probability vector per row."""
    if r.status_code != 200:
        r.failure(f"status {r.status_code}: {(r.text or '')[:200]}")
        return
    try:
        values = outputs(r.content or b"", r.headers)
    except (KeyError, ValueError, TypeError) as e:
        r.failure(f"unexpected response ({type(e).__name__}: {e})")
        return
    if values.shape != (len(ROWS), CLASSES):
        r.failure(f"expected shape {[len(ROWS), CLASSES]}, got {list(values.shape)}")
    elif not np.allclose(values.sum(axis=1), 1.0, atol=1e-3):
        r.failure("rows do not sum to 1")


JSON = {"Content-Type": "application/json"}


class ServekitUser(FastHttpUser):
    """One client of the demo model, using every protocol in turn."""

    wait_time = between(0, 0.01)

    @task
    def v1_predict(self) -> None:
        path = f"/v1/models/{MODEL}:predict"
        with self.client.post(
            path, data=V1_BODY, headers=JSON, name="v1 predict", catch_response=True
        ) as r:
            check(r, _v1_outputs)

    @task
    def v2_infer_json(self) -> None:
        path = f"/v2/models/{MODEL}/infer"
        with self.client.post(
            path, data=V2_JSON_BODY, headers=JSON, name="v2 infer json", catch_response=True
        ) as r:
            check(r, _v2_json_outputs)

    @task
    def v2_infer_binary(self) -> None:
        headers = {
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(len(_HEADER)),
        }
        path = f"/v2/models/{MODEL}/infer"
        with self.client.post(
            path, data=V2_BINARY_BODY, headers=headers, name="v2 infer binary", catch_response=True
        ) as r:
            check(r, _v2_binary_outputs)

    @task
    def v2_infer_raw(self) -> None:
        headers = {
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": "0",
        }
        path = f"/v2/models/{MODEL}/infer"
        with self.client.post(
            path, data=RAW_BODY, headers=headers, name="v2 infer raw", catch_response=True
        ) as r:
            check(r, _v2_binary_outputs)
