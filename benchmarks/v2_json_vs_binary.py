"""Open Inference Protocol v2: JSON vs the binary tensor data extension, one 224x224x3 image.

Starts a real servekit (a subprocess) on ``benchmarks/models`` (the ``image_small``
model, built by ``make_image_model.py``), then sends the same float32 image
[1, 224, 224, 3] as

- ``json``: ``"data"`` as a flat list of 150,528 numbers; the response in JSON;
- ``binary``: a JSON header + the image's 602,112 raw bytes
  (``Inference-Header-Content-Length``), ``binary_data_output: true``;

each from a few concurrent clients (httpx, asyncio, one connection each) for a fixed
time after a warm-up. Request bodies are encoded once up front, so the numbers are
the server's decode/encode plus transport and inference, not the client's encoding.
Writes throughput, latency percentiles and the binary/JSON ratios to
``benchmarks/results/v2_json_vs_binary.json``.

    .venv/bin/python benchmarks/v2_json_vs_binary.py [--duration 10] [--clients 4]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import orjson
from ai_edge_litert.interpreter import Interpreter
from server_process import ServerProcess

HERE = Path(__file__).resolve().parent
MODELS = HERE / "models"
MODEL = "image_small"
RESULTS = HERE / "results" / "v2_json_vs_binary.json"
PATH = f"/v2/models/{MODEL}/infer"
SHAPE = (1, 224, 224, 3)

F32 = npt.NDArray[np.float32]
Request = tuple[bytes, dict[str, str]]


def json_request(x: F32) -> Request:
    body = {
        "inputs": [
            {"name": "image", "shape": list(x.shape), "datatype": "FP32", "data": x.reshape(-1)}
        ]
    }
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), {
        "content-type": "application/json"
    }


def binary_request(x: F32) -> Request:
    header = orjson.dumps(
        {
            "parameters": {"binary_data_output": True},
            "inputs": [
                {
                    "name": "image",
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
        }
    )
    return header + x.tobytes(), {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(header)),
    }


def parse_json(r: httpx.Response) -> F32:
    out = r.json()["outputs"][0]
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


def parse_binary(r: httpx.Response) -> F32:
    n = int(r.headers["inference-header-content-length"])
    out = orjson.loads(r.content[:n])["outputs"][0]
    return np.frombuffer(r.content[n:], dtype="<f4").reshape(out["shape"])


MODES: dict[str, tuple[Callable[[F32], Request], Callable[[httpx.Response], F32]]] = {
    "json": (json_request, parse_json),
    "binary": (binary_request, parse_binary),
}


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    k = max(0, min(len(sorted_values) - 1, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]


async def run_mode(
    url: str, request: Request, *, clients: int, duration_s: float, warmup_s: float
) -> dict[str, Any]:
    body, headers = request
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        latencies: list[float] = []
        errors = 0

        async def worker(until: float, record: bool) -> None:
            nonlocal errors
            while time.perf_counter() < until:
                t0 = time.perf_counter()
                r = await client.post(PATH, content=body, headers=headers)
                t1 = time.perf_counter()
                if r.status_code != 200:
                    errors += 1
                elif record:
                    latencies.append(t1 - t0)

        until = time.perf_counter() + warmup_s
        await asyncio.gather(*(worker(until, False) for _ in range(clients)))
        errors = 0
        start = time.perf_counter()
        until = start + duration_s
        await asyncio.gather(*(worker(until, True) for _ in range(clients)))
        elapsed = time.perf_counter() - start
    latencies.sort()
    ms = [v * 1000 for v in latencies]
    return {
        "requests": len(latencies),
        "errors": errors,
        "seconds": round(elapsed, 3),
        "request_bytes": len(body),
        "throughput_rps": round(len(latencies) / elapsed, 2),
        "latency_ms": {
            "p50": round(percentile(ms, 50), 3),
            "p99": round(percentile(ms, 99), 3),
            "mean": round(statistics.fmean(ms), 3),
            "min": round(ms[0], 3),
            "max": round(ms[-1], 3),
        },
    }


def check_correct(url: str, x: F32) -> None:
    """Both encodings return what the interpreter itself computes, before timing anything."""
    runner = Interpreter(
        model_path=str(MODELS / MODEL / "1" / "model.tflite")
    ).get_signature_runner("serving_default")
    want = np.asarray(runner(image=x)["probabilities"])
    with httpx.Client(base_url=url, timeout=60) as client:
        for mode, (encode, parse) in MODES.items():
            body, headers = encode(x)
            r = client.post(PATH, content=body, headers=headers)
            r.raise_for_status()
            np.testing.assert_allclose(parse(r), want, rtol=1e-5, atol=1e-6, err_msg=mode)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per mode")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds per mode, unmeasured")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    model_file = MODELS / MODEL / "1" / "model.tflite"
    if not model_file.is_file():
        sys.exit(f"{model_file} is missing: run benchmarks/make_image_model.py first")
    x = np.random.default_rng(0).random(SHAPE, dtype=np.float32)
    results: dict[str, Any] = {}
    with ServerProcess(MODELS, "--log-level", "warning") as server:
        check_correct(server.url, x)
        for mode, (encode, _) in MODES.items():
            print(f"{mode}: {args.clients} clients for {args.duration:g} s ...", flush=True)
            results[mode] = asyncio.run(
                run_mode(
                    server.url,
                    encode(x),
                    clients=args.clients,
                    duration_s=args.duration,
                    warmup_s=args.warmup,
                )
            )
    j, b = results["json"], results["binary"]
    report = {
        "benchmark": "v2_json_vs_binary",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "model": MODEL,
        "input": {"name": "image", "shape": list(SHAPE), "datatype": "FP32"},
        "clients": args.clients,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "results": results,
        "binary_vs_json": {
            "throughput_ratio": round(b["throughput_rps"] / j["throughput_rps"], 2),
            "p50_latency_ratio": round(j["latency_ms"]["p50"] / b["latency_ms"]["p50"], 2),
            "p99_latency_ratio": round(j["latency_ms"]["p99"] / b["latency_ms"]["p99"], 2),
            "request_bytes_ratio": round(j["request_bytes"] / b["request_bytes"], 2),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'mode':8} {'req/s':>9} {'p50 ms':>9} {'p99 ms':>9} {'body kB':>9}")
    for mode, r in results.items():
        lat = r["latency_ms"]
        print(
            f"{mode:8} {r['throughput_rps']:9.1f} {lat['p50']:9.2f} {lat['p99']:9.2f} "
            f"{r['request_bytes'] / 1000:9.0f}"
        )
    ratios = report["binary_vs_json"]
    print(
        f"binary vs JSON: {ratios['throughput_ratio']}x throughput, "
        f"{ratios['p50_latency_ratio']}x lower p50, {ratios['p99_latency_ratio']}x lower p99"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
