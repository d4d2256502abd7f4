"""JSON tensor decoders measured on a 224x224x3 float request (150,528 numbers), and
how long each one keeps an event loop from running while it decodes in a thread. Both
forms an image takes: TF Serving's nested ``instances`` and V2's flat ``data``.

    .venv/bin/python benchmarks/json_decode.py [--repeat 15] [--stall-mib 8 16 60]

Candidates: today's orjson + numpy.asarray; orjson + numpy.array with the dtype;
msgspec + numpy.array (if installed); pysimdjson's as_buffer on the array alone (no
validation: the floor); numpy's text parser on the bracket-stripped array; and
servekit's strictjson.loads_tensors (pysimdjson plus every check). Repetitions are
interleaved (one of each candidate per round) and medians reported, since the machine
is shared. The stall part decodes a large body in a worker thread while the loop
ticks every millisecond, and reports the longest gap between ticks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import simdjson

from servekit.server.strictjson import loads_strict, loads_tensors

try:
    import msgspec
except ImportError:
    msgspec = None

_BRACKETS = bytes.maketrans(b"[]", b"  ")


# The two forms a 224x224x3 image takes in JSON: TF Serving's nested rows (float32
# values, as orjson writes numpy), and V2's flat ``data`` (float64 reprs, 17 digits, as
# benchmarks/run.py sends), and where each keeps the numbers.
FORMS = ("v1_nested", "v2_flat")


def body_of(form: str, shape: tuple[int, ...], seed: int = 0) -> tuple[bytes, np.ndarray]:
    image = np.random.default_rng(seed).random(shape, dtype=np.float32)
    if form == "v1_nested":
        return orjson.dumps({"instances": image}, option=orjson.OPT_SERIALIZE_NUMPY), image
    tensor = {"name": "image", "shape": list(shape), "datatype": "FP32"}
    data = image.astype(np.float64).ravel()
    body = orjson.dumps({"inputs": [{**tensor, "data": data}]}, option=orjson.OPT_SERIALIZE_NUMPY)
    return body, image


def numbers_of(form: str, doc: Any) -> Any:
    return doc["instances"] if form == "v1_nested" else doc["inputs"][0]["data"]


def candidates(form: str) -> dict[str, Callable[[bytes], np.ndarray]]:
    def orjson_asarray(body: bytes) -> np.ndarray:  # what servekit did before
        return np.asarray(numbers_of(form, loads_strict(body))).astype(np.float32)

    def orjson_array_dtype(body: bytes) -> np.ndarray:
        return np.array(numbers_of(form, orjson.loads(body)), dtype=np.float32)

    def simdjson_buffer(body: bytes) -> np.ndarray:  # the floor: no checks at all
        doc = simdjson.Parser().parse(body)
        buf = numbers_of(form, doc).as_buffer(of_type="d")
        return np.frombuffer(buf, dtype=np.float64).astype(np.float32)

    def numpy_text(body: bytes) -> np.ndarray:  # numpy's own text parser, no checks
        start = body.index(b"[", body.index(b'"data"') if form == "v2_flat" else 0)
        end = body.index(b"]", start) + 1 if form == "v2_flat" else body.rindex(b"]") + 1
        text = body[start:end].translate(_BRACKETS).decode()
        return np.fromstring(text, dtype=np.float32, sep=",")

    def servekit_loads_tensors(body: bytes) -> np.ndarray:
        return np.asarray(numbers_of(form, loads_tensors(body))).astype(np.float32)

    found: dict[str, Callable[[bytes], np.ndarray]] = {
        "orjson + numpy.asarray (before)": orjson_asarray,
        "orjson + numpy.array(dtype)": orjson_array_dtype,
    }
    if msgspec is not None:
        decoder = msgspec.json.Decoder()

        def msgspec_array(body: bytes) -> np.ndarray:
            return np.array(numbers_of(form, decoder.decode(body)), dtype=np.float32)

        found["msgspec + numpy.array(dtype)"] = msgspec_array
    found["pysimdjson as_buffer, no checks (floor)"] = simdjson_buffer
    found["numpy text parser, no checks"] = numpy_text
    found["servekit loads_tensors (pysimdjson + checks)"] = servekit_loads_tensors
    return found


def speed(form: str, repeat: int) -> dict[str, Any]:
    body, image = body_of(form, (1, 224, 224, 3))
    found = candidates(form)
    for name, fn in found.items():  # warm up, and each gives the image back
        assert np.array_equal(fn(body).reshape(image.shape), image), name
    times: dict[str, list[float]] = {name: [] for name in found}
    for _ in range(repeat):
        for name, fn in found.items():
            start = time.perf_counter()
            fn(body)
            times[name].append((time.perf_counter() - start) * 1e3)
    base = statistics.median(times["orjson + numpy.asarray (before)"])
    return {
        "body_bytes": len(body),
        "numbers": image.size,
        "ms": {
            name: {
                "median": round(statistics.median(t), 2),
                "min": round(min(t), 2),
                "max": round(max(t), 2),
                "speedup_vs_before": round(base / statistics.median(t), 2),
            }
            for name, t in times.items()
        },
    }


async def _longest_gap(work: Callable[[], object]) -> tuple[float, float]:
    """(longest gap between 1 ms ticks of the loop, decode seconds) while ``work`` runs
    in a thread."""
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(1) as pool:
        start = time.perf_counter()
        future = loop.run_in_executor(pool, work)
        last, gap = time.perf_counter(), 0.0
        while not future.done():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gap, last = max(gap, now - last), now
        await future
        return gap * 1e3, time.perf_counter() - start


def stalls(sizes_mib: list[int]) -> list[dict[str, Any]]:
    out = []
    for form in FORMS:
        for mib in sizes_mib:
            sample, _ = body_of(form, (1, 1000, 3))
            pixels = int(mib * 2**20 / len(sample) * 1000)
            body, _ = body_of(form, (1, pixels, 3))
            row: dict[str, Any] = {"form": form, "body_mib": round(len(body) / 2**20, 1)}
            for name, fn in (
                ("before", lambda b=body, f=form: np.asarray(numbers_of(f, loads_strict(b)))),
                ("loads_tensors", lambda b=body: loads_tensors(b)),
            ):
                gap, took = asyncio.run(_longest_gap(fn))
                row[name] = {"decode_s": round(took, 3), "longest_loop_gap_ms": round(gap, 1)}
            out.append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--stall-mib", type=int, nargs="*", default=[8, 16, 60])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/json_decode.json"))
    args = parser.parse_args()
    load_before = os.getloadavg()
    result = {
        "when_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "uptime_before": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
        "versions": {
            "numpy": np.__version__,
            "orjson": orjson.__version__,
            "msgspec": getattr(msgspec, "__version__", None),
        },
        "speed_224x224x3": {form: speed(form, args.repeat) for form in FORMS},
        "loop_stall_while_decoding_in_a_thread": stalls(args.stall_mib),
        "uptime_after": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
        "loadavg_before": load_before,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
