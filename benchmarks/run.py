"""How close servekit gets to its two limits, measured in one run on one machine.

For each case (a benchmark model built by ``make_bench_models.py`` into
``benchmarks/build``, over one protocol: ``tiny`` v1 JSON, ``wide`` V2 JSON and
``wide_binary``, ``mobilenet_v2`` V2 binary and ``mobilenet_v2_json``), in each runtime
(``--runtimes``: the TFLite file, ``tiny``, and its ONNX export, ``tiny_onnx``, run one
after the other), on each server of ``--variants``:

(a) **raw runtime**: ai-edge-litert (or onnxruntime) in this process, no HTTP, the same
    threads as the server (``instances`` interpreters or sessions, each in its own
    Python thread with ``threads_per_instance`` runtime threads; ONNX sessions with
    servekit's own session options), invoking back to back at every batch size the
    server allocates; the best samples/s is the limit. Also the median time of one
    batch-1 invoke (set_tensor + invoke + get_tensor; ``session.run``) on one
    interpreter: the latency floor. It is measured before the servers and after each,
    and the fastest is kept: on a shared machine a slow spell during a single
    measurement would raise the floor and flatter servekit's latency.
(b) **bare ASGI floor**: ``bare_asgi.py`` under uvicorn with servekit's settings
    (uvloop, httptools, no access log, same ``--workers``): reads the same request
    body and answers with the bytes of a real servekit response to it. Same load
    generator as (c). It depends on the bytes, not the runtime: measured once per
    benchmark model (after its first runtime's servers) and shared by both runtimes.
(c) **servekit with its defaults**: no config.yaml at all, as a new user runs it
    (instances, threads and buckets sized at load: the chosen ones and why are in the
    results, ``served_as``); the same with ``--workers 2`` (``tiny`` and
    ``mobilenet_v2_json``); and servekit's ASGI app under **granian** (``--interface
    asgi``, gRPC off), beside the bare floor under granian.
(c') **servekit tuned** (a config.yaml): batching on (``max_batch_size`` 32, 64 for
    ``wide``, ``max_queue_delay_ms`` 0) and off (``max_batch_size`` 1), the case's
    instances, every other setting its default (gRPC on free ports, idle).
(d) **lean bound**: ``lean_asgi.py``, servekit's core (validation, batcher, instances,
    model metrics) behind the least HTTP code, batching on: the most any Python
    request path on this stack could reach. Reported next to each target.

(b), (c) and (d) are loaded by ``wrk`` (C, epoll, one thread: the cheapest client there is,
so the 2 cores go to the server) with ``wrk_post.lua``, closed loop, at each
concurrency (connections) for ``--duration`` seconds after a ``--warmup``. Throughput
counts 200s only; p50/p99 are wrk's (every completed request); errors are non-2xx
answers plus socket errors and timeouts. Server RSS (all its processes) and CPU time
come from /proc. Before any timing, one request per server is checked against the
raw interpreter's output.

Writes ``benchmarks/results/<model>.json``, ``<model>.png`` (``tiny``, ``tiny_onnx``, ...)
and ``summary.md`` (with a TFLite / ONNX Runtime table when both ran).

    .venv/bin/python benchmarks/run.py --runtimes tflite --duration 4   # ~16 minutes
    .venv/bin/python benchmarks/run.py                      # both runtimes, ~35 minutes
    .venv/bin/python benchmarks/run.py --models tiny --duration 2 --concurrency 1 64

Needs matplotlib, onnxruntime, TensorFlow and tf2onnx (to build the models:
``--tf-python`` names another interpreter for that) and wrk (``apt-get install wrk``;
installed here if missing and running as root).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
from ai_edge_litert.interpreter import Interpreter
from server_process import ChildServer, ServerProcess

from servekit.bench import Fill, InputMeta, Protocol, encode_request, make_arrays
from servekit.cpus import cpu_budget
from servekit.loadgen import RawClient
from servekit.runtime.onnx import session_options

HERE = Path(__file__).resolve().parent
BUILD = HERE / "build"
MODELS = BUILD / "models"
RESULTS = HERE / "results"
WRK_SCRIPT = HERE / "wrk_post.lua"


# Each runtime's model file; a benchmark model's copy in a runtime other than TFLite is
# served as <model>_<runtime> (as make_bench_models.py builds them).
RUNTIMES = {"tflite": "model.tflite", "onnx": "model.onnx"}
RUNTIME_LABELS = {"tflite": "TFLite", "onnx": "ONNX Runtime"}
RAW_LABELS = {"tflite": "raw interpreter", "onnx": "raw ONNX Runtime session"}


@dataclass(frozen=True)
class Case:
    """One benchmark model in one runtime, and how it is served."""

    zoo: str  # the benchmark model (make_bench_models.py)
    input_name: str
    row_shape: tuple[int, ...]
    protocol: Protocol
    max_batch_size: int  # with batching on
    instances: int
    threads_per_instance: int = 1
    runtime: str = "tflite"
    suffix: str = ""  # told apart from the same model over another protocol
    workers_ab: bool = False  # also served with defaults by 2 worker processes

    @property
    def model(self) -> str:
        """The name it is served as: ``tiny``, ``tiny_onnx``."""
        return self.zoo if self.runtime == "tflite" else f"{self.zoo}_{self.runtime}"

    @property
    def key(self) -> str:
        """The name of its results: ``mobilenet_v2``, ``mobilenet_v2_json``."""
        return self.model + self.suffix

    @property
    def path(self) -> Path:
        return MODELS / self.model / "1" / RUNTIMES[self.runtime]

    def buckets(self) -> list[int]:
        return [b for b in (1, 2, 4, 8, 16, 32, 64) if b < self.max_batch_size] + [
            self.max_batch_size
        ]

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, **asdict(self), "protocol": self.protocol.value}


# How each model is served, tuned for a 2-core machine (the ``batching_on`` and
# ``batching_off`` rows; the ``defaults`` rows serve it with no config.yaml at all). The
# dense models get one interpreter thread (the event loop needs the other core).
# MobileNetV2 gets two instances of one thread: measured here against one instance of
# two threads (--instances mobilenet_v2=1:2), ~10% more raw and server samples/s, for
# twice the batch-1 latency. Each runtime serves a model the same way.
MOBILENET = Case("mobilenet_v2", "image", (224, 224, 3), Protocol.v2_binary, 32, instances=2)
WIDE = Case("wide", "x", (512,), Protocol.v2, 64, instances=1)
CASES = {
    "tiny": Case("tiny", "x", (64,), Protocol.v1, 32, instances=1, workers_ab=True),
    "wide": WIDE,
    "wide_binary": replace(WIDE, protocol=Protocol.v2_binary, suffix="_binary"),
    "mobilenet_v2": MOBILENET,
    "mobilenet_v2_json": replace(MOBILENET, protocol=Protocol.v2, suffix="_json", workers_ab=True),
}

# Every kind of server a case may be measured on (``--variants``), in run order.
VARIANTS = (
    "batching_on",  # servekit, the tuned config.yaml
    "batching_off",  # the same with max_batch_size 1
    "defaults",  # servekit with no config.yaml: what a new user gets
    "defaults_workers2",  # the same, --workers 2 (cases with workers_ab)
    "granian",  # servekit with no config.yaml, its ASGI app under granian
    "bare_asgi",  # the bare floor under uvicorn
    "bare_granian",  # the bare floor under granian
    "lean",  # servekit's core behind the least HTTP code
)


# -- machine state -------------------------------------------------------------------


def load_average() -> float:
    return os.getloadavg()[0]


def ensure_wrk() -> str:
    path = shutil.which("wrk")
    if path:
        return path
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("wrk is missing: apt-get install wrk ...", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, env=env)
        if path := shutil.which("wrk"):
            return path
    sys.exit("wrk is needed: apt-get install wrk (Debian/Ubuntu) or brew install wrk")


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (uvicorn --workers forks worker processes)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def rss_mb(pid: int) -> float:
    """Resident memory of the process tree, MB (VmRSS from /proc/<pid>/status)."""
    total = 0
    for p in process_tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return round(total / 1024, 1)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the process tree so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


# -- (a) the raw runtime --------------------------------------------------------------


class RawTflite:
    """One TFLite interpreter, driven as servekit's instances drive theirs."""

    def __init__(self, path: Path, threads: int) -> None:
        self.it = Interpreter(model_path=str(path), num_threads=threads)
        self.index = self.it.get_input_details()[0]["index"]
        self.out_index = self.it.get_output_details()[0]["index"]
        self.x = np.zeros(1, np.float32)

    def set_batch(self, x: np.ndarray) -> None:
        """Allocate for ``x``'s shape and run it once."""
        self.x = x
        self.it.resize_tensor_input(self.index, list(x.shape))
        self.it.allocate_tensors()
        self.invoke()

    def invoke(self) -> None:
        self.it.set_tensor(self.index, self.x)
        self.it.invoke()
        self.it.get_tensor(self.out_index)


class RawOnnx:
    """One ONNX Runtime session, with the options servekit gives its instances."""

    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime

        self.session = onnxruntime.InferenceSession(
            str(path),
            sess_options=session_options(threads, "all"),
            providers=["CPUExecutionProvider"],
        )
        self.input_name = self.session.get_inputs()[0].name
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.feed = {self.input_name: np.zeros(1, np.float32)}

    def set_batch(self, x: np.ndarray) -> None:
        self.feed = {self.input_name: x}
        self.invoke()

    def invoke(self) -> None:
        self.session.run(self.outputs, self.feed)


RawModel = RawTflite | RawOnnx


def raw_model(case: Case) -> RawModel:
    cls = RawOnnx if case.runtime == "onnx" else RawTflite
    return cls(case.path, case.threads_per_instance)


def _invoke_loop(
    model: RawModel, seconds: float, start: threading.Barrier, counts: list[int], i: int
) -> None:
    """Invoke back to back for ``seconds`` (at least twice, so slow batches count too)."""
    invoke = model.invoke
    start.wait()
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop or counts[i] < 2:
        invoke()
        counts[i] += 1


def _run_batch(models: list[RawModel], x: np.ndarray, seconds: float) -> float:
    """Samples/s of every instance invoking ``x`` back to back in its own thread."""
    for m in models:
        m.set_batch(x)
    counts = [0] * len(models)
    start = threading.Barrier(len(models) + 1)
    threads = [
        threading.Thread(target=_invoke_loop, args=(m, seconds, start, counts, i))
        for i, m in enumerate(models)
    ]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return sum(counts) * len(x) / (time.perf_counter() - t0)


def raw_limit(case: Case, seconds: float, rounds: int = 3) -> dict[str, Any]:
    """Best samples/s over the server's batch sizes, and the batch-1 invoke time.

    Each batch size is measured ``rounds`` times, the rounds interleaved across batch
    sizes, and its median kept: the best of single noisy samples would overstate the
    limit on a shared machine.
    """
    models = [raw_model(case) for _ in range(case.instances)]
    rng = np.random.default_rng(0)
    inputs = {b: rng.random((b, *case.row_shape), dtype=np.float32) for b in case.buckets()}
    samples: dict[int, list[float]] = {b: [] for b in inputs}
    for _ in range(rounds):
        for batch, x in inputs.items():
            samples[batch].append(_run_batch(models, x, seconds / rounds))
    by_batch = {b: statistics.median(v) for b, v in samples.items()}
    best = max(by_batch, key=lambda b: by_batch[b])
    return {
        "runtime": case.runtime,
        "threads": case.instances * case.threads_per_instance,
        "samples_per_s_by_batch": {str(b): round(v, 1) for b, v in by_batch.items()},
        "rounds_per_batch": rounds,
        "best_batch": best,
        "samples_per_s": round(by_batch[best], 1),
    }


class Batch1Invoke:
    """The latency floor: one interpreter (session), batch 1, the median of
    back-to-back invokes over ``seconds``, measured each time it is called."""

    def __init__(self, case: Case, seconds: float = 1.0) -> None:
        self.model = raw_model(case)
        self.model.set_batch(np.random.default_rng(0).random((1, *case.row_shape), np.float32))
        self.seconds = seconds
        self.medians_ms: list[float] = []

    def measure(self) -> float:
        invoke, times = self.model.invoke, list[float]()
        deadline = time.perf_counter() + self.seconds
        while time.perf_counter() < deadline or len(times) < 5:
            t = time.perf_counter()
            invoke()
            times.append(time.perf_counter() - t)
        self.medians_ms.append(round(statistics.median(times) * 1000, 4))
        return self.medians_ms[-1]


def reference_output(case: Case, x: np.ndarray) -> np.ndarray:
    if case.runtime == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(case.path), providers=["CPUExecutionProvider"])
        (out,) = session.run(None, {case.input_name: x})
        return np.asarray(out)
    runner = Interpreter(model_path=str(case.path)).get_signature_runner("serving_default")
    (out,) = runner(**{case.input_name: x}).values()
    return np.asarray(out)


# -- (b), (c) HTTP servers -----------------------------------------------------------


def add_model(folder: Path, case: Case, max_batch_size: int, extra: str = "") -> None:
    """``case``'s model in the repository ``folder`` (file hard-linked), with a
    config.yaml of ``max_batch_size``, the case's instances and ``extra`` lines."""
    version = folder / case.model / "1"
    version.mkdir(parents=True, exist_ok=True)
    target = version / case.path.name
    if target.exists():
        target.unlink()
    try:
        os.link(case.path, target)
    except OSError:
        shutil.copyfile(case.path, target)
    (folder / case.model / "config.yaml").write_text(
        f"max_batch_size: {max_batch_size}\nmax_queue_delay_ms: 0\n"
        f"instances: {case.instances}\nthreads_per_instance: {case.threads_per_instance}\n" + extra
    )


def variant_repo(case: Case, variant: str, max_batch_size: int) -> Path:
    """A one-model repository with the variant's config.yaml."""
    folder = BUILD / "repos" / f"{case.model}-{variant}"
    add_model(folder, case, max_batch_size)
    return folder


def defaults_repo(case: Case) -> Path:
    """A one-model repository with no config.yaml: servekit's defaults."""
    folder = BUILD / "repos" / f"{case.model}-defaults"
    version = folder / case.model / "1"
    version.mkdir(parents=True, exist_ok=True)
    (folder / case.model / "config.yaml").unlink(missing_ok=True)
    target = version / case.path.name
    if target.exists():
        target.unlink()
    try:
        os.link(case.path, target)
    except OSError:
        shutil.copyfile(case.path, target)
    return folder


def granian_app(
    target: str, env: dict[str, str], log_name: str, workers: int, ready_path: str
) -> ChildServer:
    """An ASGI app under granian (Rust HTTP server; uvloop, no access log, no websockets,
    same workers). ``target`` ending in ``()`` is a factory."""
    factory = target.endswith("()")
    command = [sys.executable, "-m", "granian", "--interface", "asgi", "--host", "127.0.0.1"]
    command += ["--loop", "uvloop", "--http", "1", "--no-ws"]  # wrk speaks HTTP/1.1 only
    command += ["--log-level", "warning", "--no-access-log"]
    command += ["--workers", str(workers)] + (["--factory"] if factory else [])
    command.append(target.removesuffix("()"))
    env = {**env, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    log_path = BUILD / f"{log_name}.log"
    return ChildServer(command, env=env, log_path=log_path, ready_path=ready_path)


def granian_servekit(name: str, repo: Path, workers: int) -> ChildServer:
    """servekit's ASGI app (``create_app_from_env``) on ``repo`` under granian; its
    gRPC ports off (idle in the uvicorn rows, they cost nothing there either)."""
    env = {"SERVEKIT_MODEL_PATH": str(repo), "SERVEKIT_LOG_LEVEL": "warning"}
    env |= {"SERVEKIT_GRPC_PORT": "0", "SERVEKIT_TFS_GRPC_PORT": "0"}
    if workers > 1:
        env["SERVEKIT_WORKERS"] = str(workers)
    target = "servekit.server.app:create_app_from_env()"
    return granian_app(target, env, f"granian-{name}", workers, "/v2/health/ready")


def uvicorn_app(
    target: str, env: dict[str, str], log_name: str, workers: int, ready_path: str
) -> ChildServer:
    """An ASGI app of this folder under uvicorn, configured like ``servekit serve``
    (uvloop, httptools, no access log, same ``--workers``)."""
    command = [sys.executable, "-m", "uvicorn", target, "--app-dir", str(HERE)]
    command += ["--host", "127.0.0.1", "--loop", "uvloop", "--http", "httptools"]
    command += ["--log-level", "warning", "--no-access-log"]
    if workers > 1:
        command += ["--workers", str(workers)]
    log_path = BUILD / f"{log_name}.log"
    return ChildServer(command, env=env, log_path=log_path, ready_path=ready_path)


def bare_server(
    name: str,
    response: bytes,
    content_type: str,
    header_length: str | None,
    workers: int,
    granian: bool = False,
) -> ChildServer:
    """``bare_asgi:app`` answering every request with ``response``, under uvicorn (or
    granian)."""
    BUILD.mkdir(exist_ok=True)
    body_file = BUILD / f"bare-response-{name}.bin"
    body_file.write_bytes(response)
    env = {"BARE_RESPONSE_FILE": str(body_file), "BARE_CONTENT_TYPE": content_type}
    if header_length:
        env["BARE_HEADER_LENGTH"] = header_length
    if granian:
        return granian_app("bare_asgi:app", env, f"bare-granian-{name}", workers, "/")
    return uvicorn_app("bare_asgi:app", env, f"bare-{name}", workers, "/")


def lean_server(name: str, repo: Path, workers: int) -> ChildServer:
    """``lean_asgi:app`` on ``repo`` (servekit's core behind the least HTTP code)."""
    env = {"SERVEKIT_MODEL_PATH": str(repo), "SERVEKIT_LOG_LEVEL": "warning"}
    env |= {"SERVEKIT_GRPC_PORT": "0", "SERVEKIT_TFS_GRPC_PORT": "0"}  # HTTP only
    return uvicorn_app("lean_asgi:app", env, f"lean-{name}", workers, "/v2/health/ready")


async def send_once(
    url: str, path: str, body: bytes, content_type: str, headers: dict[str, str]
) -> tuple[int, bytes, dict[str, str]]:
    client = RawClient(url, headers)
    try:
        r = await client.request("POST", path, body, content_type)
    finally:
        await client.close()
    return r.status, r.body, r.headers


def run_wrk(
    wrk: str,
    url: str,
    body_file: Path,
    content_type: str,
    header_length: str | None,
    concurrency: int,
    seconds: float,
) -> dict[str, Any]:
    env = {**os.environ, "WRK_BODY": str(body_file), "WRK_CONTENT_TYPE": content_type}
    if header_length:
        env["WRK_HEADER_LENGTH"] = header_length
    command = [
        wrk,
        "-t1",
        f"-c{concurrency}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "30s",
        "-s",
        str(WRK_SCRIPT),
        url,
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next(x for x in done.stdout.splitlines() if x.startswith("WRKJSON "))
    out = dict(json.loads(line.removeprefix("WRKJSON ")))
    # The load generator's own CPU: it shares the machine with the server.
    out["client_cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return out


def measure_points(
    wrk: str,
    server_url: str,
    path: str,
    pid: int,
    body_file: Path,
    content_type: str,
    header_length: str | None,
    concurrencies: list[int],
    seconds: float,
    warmup: float,
) -> list[dict[str, Any]]:
    points = []
    for c in concurrencies:
        args = (wrk, server_url + path, body_file, content_type, header_length, c)
        if warmup > 0:
            run_wrk(*args, warmup)
        cpu0 = cpu_seconds(pid)
        r = run_wrk(*args, seconds)
        cpu = cpu_seconds(pid) - cpu0
        secs = r["duration_us"] / 1e6
        errors = sum(r["errors"].values())
        ok = r["requests"] - r["errors"]["status"]
        lat = r["latency_us"]
        point = {
            "concurrency": c,
            "requests": r["requests"],
            "errors": errors,
            "error_kinds": {k: v for k, v in r["errors"].items() if v},
            "throughput_rps": round(ok / secs, 1),
            "p50_ms": lat["p50"] / 1000,
            "p90_ms": lat["p90"] / 1000,
            "p99_ms": lat["p99"] / 1000,
            "mean_ms": round(lat["mean"] / 1000, 3),
            "server_cpu_cores": round(cpu / secs, 2),
            "client_cpu_cores": round(r["client_cpu_s"] / secs, 2),
            "server_rss_mb": rss_mb(pid),
            "load_avg_1m": round(load_average(), 2),
        }
        print(
            f"    c={c:<3} {point['throughput_rps']:>9.1f} req/s  p50 {point['p50_ms']:8.3f} ms"
            f"  p99 {point['p99_ms']:8.3f} ms  errors {errors}  cpu {point['server_cpu_cores']}"
            f"  rss {point['server_rss_mb']} MB",
            flush=True,
        )
        points.append(point)
    return points


def bench_model(
    case: Case,
    wrk: str,
    concurrencies: list[int],
    seconds: float,
    warmup: float,
    workers: int,
    variants: list[str],
    floors: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Every row of one case; ``floors``: the bare floors measured for the same request
    in another runtime (else measured here)."""
    print(
        f"== {case.key} ({RUNTIME_LABELS[case.runtime]}, {case.protocol.value}, tuned: "
        f"{case.instances} instance(s) x {case.threads_per_instance} thread(s), "
        f"{workers} worker(s))",
        flush=True,
    )
    raw = raw_limit(case, max(1.5, seconds / 2))
    batch1 = Batch1Invoke(case, min(1.0, seconds / 2))
    print(
        f"  raw {RUNTIME_LABELS[case.runtime]}: {raw['samples_per_s']:.1f} samples/s at batch "
        f"{raw['best_batch']}; batch-1 invoke {batch1.measure():.3f} ms",
        flush=True,
    )

    x = np.random.default_rng(1).random((1, *case.row_shape), dtype=np.float32)
    inputs = [InputMeta(case.input_name, "FP32", (-1, *case.row_shape))]
    arrays = make_arrays(inputs, 1, Fill.random)
    arrays[case.input_name] = x
    request = encode_request(case.model, arrays, case.protocol)
    header_length = request.headers.get("Inference-Header-Content-Length")
    body_file = BUILD / f"request-{case.key}.bin"
    body_file.write_bytes(request.body)
    want = reference_output(case, x)
    log_level = ["--log-level", "warning"]
    serve_args = log_level + (["--workers", str(workers)] if workers > 1 else [])

    def measure(server_url: str, pid: int) -> list[dict[str, Any]]:
        """This model's request at every concurrency against one server."""
        return measure_points(
            wrk,
            server_url,
            request.path,
            pid,
            body_file,
            request.content_type,
            header_length,
            concurrencies,
            seconds,
            warmup,
        )

    result: dict[str, Any] = {"raw": raw}
    response: tuple[bytes, str, str | None] | None = None

    def checked(server: ChildServer, label: str) -> None:
        """One request answered as the raw runtime answers it; keeps the response."""
        nonlocal response
        status, body, headers = asyncio.run(
            send_once(server.url, request.path, request.body, request.content_type, request.headers)
        )
        if status != 200:
            raise RuntimeError(f"{case.key} {label}: {status} {body[:300]!r}")
        check_response(case, body, headers, want)
        response = (
            body,
            headers["content-type"],
            headers.get("inference-header-content-length"),
        )

    for variant in variants:
        if variant == "defaults_workers2" and (not case.workers_ab or workers > 1):
            continue
        if variant in ("bare_asgi", "bare_granian"):
            if floors is not None and variant in floors:
                result[variant] = floors[variant]
                print(f"  {variant}: {floors[variant]['measured_for']}'s", flush=True)
                continue
            assert response is not None, "a servekit variant runs before the floors"
            print(f"  {variant.replace('_', ' ')}:", flush=True)
            granian = variant == "bare_granian"
            with bare_server(case.key, *response, workers=workers, granian=granian) as floor:
                result[variant] = {
                    "measured_for": case.key,
                    "response_bytes": len(response[0]),
                    "points": measure(floor.url, floor.proc.pid),
                }
        elif variant == "lean":
            print("  lean bound (servekit's core, least HTTP code; batching on):", flush=True)
            repo = variant_repo(case, "batching_on", case.max_batch_size)
            with lean_server(case.key, repo, workers) as lean:
                checked(lean, variant)
                result["lean"] = {"points": measure(lean.url, lean.proc.pid)}
        else:
            server: ChildServer
            log = BUILD / f"servekit-{case.key}-{variant}.log"
            entry: dict[str, Any] = {}
            if variant in ("batching_on", "batching_off"):
                mbs = case.max_batch_size if variant == "batching_on" else 1
                entry["max_batch_size"] = mbs
                server = ServerProcess(variant_repo(case, variant, mbs), *serve_args, log_path=log)
            elif variant == "defaults":
                server = ServerProcess(defaults_repo(case), *serve_args, log_path=log)
            elif variant == "defaults_workers2":
                entry["workers"] = 2
                server = ServerProcess(
                    defaults_repo(case), *log_level, "--workers", "2", log_path=log
                )
            else:  # granian
                server = granian_servekit(case.key, defaults_repo(case), workers)
            with server:
                checked(server, variant)
                entry["served_as"] = served_as(server.url, case.model)
                print(f"  servekit, {variant.replace('_', ' ')}: {entry['served_as']}", flush=True)
                entry["startup_rss_mb"] = rss_mb(server.proc.pid)
                entry["points"] = measure(server.url, server.proc.pid)
            result[variant] = entry
        print(f"  raw batch-1 invoke again: {batch1.measure():.3f} ms", flush=True)
        if variant in result and "points" in result[variant]:
            result[variant]["invoke_around_ms"] = batch1.medians_ms[-2:]
    assert response is not None
    raw["invoke_batch1_ms_runs"] = batch1.medians_ms
    raw["invoke_batch1_ms"] = min(batch1.medians_ms)
    return {
        "model": case.key,
        "case": case.to_dict(),
        "request_bytes": len(request.body),
        "response_bytes": len(response[0]),
        **result,
    }


def served_as(url: str, model: str) -> dict[str, Any]:
    """How the server serves ``model`` (its metadata's batching part): instances,
    threads, buckets, execution and why."""
    r = httpx.get(f"{url}/v2/models/{model}", timeout=10, trust_env=False)
    batching = r.json().get("parameters", {}).get("batching", {})
    keys = ("instances", "threads_per_instance", "buckets", "execution", "sizing")
    return {k: batching.get(k) for k in keys}


def check_response(case: Case, body: bytes, headers: dict[str, str], want: np.ndarray) -> None:
    """servekit's answer equals the interpreter's, before anything is timed."""
    if case.protocol is Protocol.v1:
        got = np.asarray(orjson.loads(body)["predictions"], dtype=np.float32)
    elif case.protocol is Protocol.v2:
        out = orjson.loads(body)["outputs"][0]
        got = np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])
    else:
        n = int(headers["inference-header-content-length"])
        out = orjson.loads(body[:n])["outputs"][0]
        got = np.frombuffer(body[n:], dtype="<f4").reshape(out["shape"])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6, err_msg=case.model)


# -- report ----------------------------------------------------------------------------


def point(result: dict[str, Any], variant: str, concurrency: int) -> dict[str, Any] | None:
    for p in result.get(variant, {}).get("points", []):
        if p["concurrency"] == concurrency:
            return dict(p)
    return None


def cpu_bound(result: dict[str, Any], concurrency: int, cpus: int) -> float | None:
    """The throughput ratio to the raw interpreter that ``cpus`` cores allow at best.

    On a machine with no spare core the interpreters, the event loop and the load
    generator share the CPUs. Each request needs its compute (the raw interpreter's CPU
    per sample: its threads, all busy, over its samples/s) plus at least what the bare
    floor's server and wrk spent per request at this concurrency, moving the same bytes
    and doing nothing else. So even a server that cost no more than the floor would
    answer at most ``cpus`` over that sum per second.
    """
    raw, bare = result["raw"], point(result, "bare_asgi", concurrency)
    if bare is None or not bare["throughput_rps"]:
        return None
    samples_per_s = float(raw["samples_per_s"])
    compute = int(raw["threads"]) / samples_per_s
    cores = float(bare["server_cpu_cores"] + bare["client_cpu_cores"])
    transport = cores / float(bare["throughput_rps"])
    return round(cpus / (compute + transport) / samples_per_s, 3)


# Issue 23's table, servekit with its defaults before it (another run, same machine):
# MobileNetV2 over JSON at 8 connections, the tiny model over JSON at 64.
MOBILENET_JSON_C8_BEFORE = 36.0
TINY_JSON_C64_BEFORE = 7557.0


def ratio(
    a: dict[str, Any] | None, b: dict[str, Any] | None, key: str = "throughput_rps"
) -> float | None:
    return round(a[key] / b[key], 3) if a and b and b[key] else None


def targets(results: dict[str, dict[str, Any]], cpus: int) -> list[dict[str, Any]]:
    """The issue's targets, as ratios from this run: servekit with its defaults (no
    config.yaml) first, then the tuned rows' and the bounds (lean bound, what the CPUs
    allow). Each runtime's copy of a benchmark model gets its model's rows."""
    rows: list[dict[str, Any]] = []

    def add(name: str, value: float | None, goal: float, text: str, higher: bool = True) -> None:
        met = None if value is None else (value >= goal if higher else value <= goal)
        rows.append({"target": name, "value": value, "goal": goal, "met": met, "how": text})

    def info(name: str, value: float | None, goal: float | None = None) -> None:
        rows.append({"target": name, "value": value, "goal": goal, "met": None, "how": "(bound)"})

    def of(zoo: str, protocol: str | None = None) -> list[tuple[str, dict[str, Any]]]:
        return [
            (name, r)
            for name, r in results.items()
            if r["case"]["zoo"] == zoo and protocol in (None, r["case"]["protocol"])
        ]

    # -- issue 23: servekit as a new user runs it ----------------------------------------
    for name, r in of("mobilenet_v2", "v2"):
        d = point(r, "defaults", 8)
        add(
            f"{name} (JSON), c=8, defaults: req/s / {MOBILENET_JSON_C8_BEFORE:g} (before)",
            round(d["throughput_rps"] / MOBILENET_JSON_C8_BEFORE, 3) if d else None,
            2.0,
            "≥ 2x",
        )
        info(f"{name} (JSON), c=8: defaults / tuned", ratio(d, point(r, "batching_on", 8)))
    for name, r in of("mobilenet_v2", "v2-binary"):
        label = RAW_LABELS[r["raw"]["runtime"]]
        d = point(r, "defaults", 8)
        add(
            f"{name} (binary V2), c=8, defaults: servekit / {label} "
            f"({r['raw']['threads']} threads)",
            round(d["throughput_rps"] / r["raw"]["samples_per_s"], 3) if d else None,
            0.9,
            "≥ 90%",
        )
        info(
            f"{name}, c=8: the most the CPUs allow (raw compute + the floor's server "
            f"and wrk CPU per request) / {label}",
            cpu_bound(r, 8, cpus),
            0.9,
        )
    for name, r in of("tiny"):
        d = point(r, "defaults", 64)
        add(
            f"{name} (JSON), c=64, defaults / tuned (the defaults before: one inline instance)",
            ratio(d, point(r, "batching_on", 64)),
            1.0,
            "≥ 1x",
        )
        info(
            f"{name} (JSON), c=64, defaults: req/s / {TINY_JSON_C64_BEFORE:,.0f} (before, "
            "another run)",
            round(d["throughput_rps"] / TINY_JSON_C64_BEFORE, 3) if d else None,
        )
        info(
            f"{name} (JSON), c=64, defaults / bare floor (uvicorn)",
            ratio(d, point(r, "bare_asgi", 64)),
        )
        info(
            f"{name} (JSON), c=64, servekit under granian / bare floor (granian)",
            ratio(point(r, "granian", 64), point(r, "bare_granian", 64)),
        )
        rss = max(
            (p["server_rss_mb"] for p in r.get("defaults", {}).get("points", [])), default=None
        )
        add(f"{name}, defaults: RSS (MB) at its largest", rss, 120.0, "≤ 120 MB", False)
        w2 = r.get("defaults_workers2", {}).get("points", [])
        if w2:
            info(
                f"{name}, 2 workers: RSS (MB) per worker",
                round(max(p["server_rss_mb"] for p in w2) / 2, 1),
            )
    for name, r in results.items():
        if r["case"]["zoo"] == "mobilenet_v2":
            continue  # its target is the tuned binary row's below
        one = point(r, "defaults", 1)
        if one is not None:
            add(
                f"{name}, c=1, defaults: p50 - raw batch-1 invoke (ms)",
                round(one["p50_ms"] - r["raw"]["invoke_batch1_ms"], 3),
                1.0,
                "≤ 1 ms",
                False,
            )
            # The machine's speed drifts over a run (the raw invoke's medians spread by a
            # fifth on the wide model): the invokes measured right before and after this
            # server, the faster kept, separate that drift from servekit's own cost.
            around = r["defaults"].get("invoke_around_ms")
            if around:
                info(
                    f"{name}, c=1, defaults: p50 - the faster raw batch-1 invoke measured "
                    "just before and after that server (ms)",
                    round(one["p50_ms"] - min(around), 3),
                )
            lean = point(r, "lean", 1)
            if lean is not None:
                info(
                    f"{name}, c=1: defaults p50 - lean bound p50 (ms)",
                    round(one["p50_ms"] - lean["p50_ms"], 3),
                )
    # -- several worker processes, and granian, against the defaults ----------------------
    for name, r in results.items():
        for p in r.get("defaults_workers2", {}).get("points", []):
            c = p["concurrency"]
            info(
                f"{name}, c={c}: 2 workers / 1 (req/s, defaults)", ratio(p, point(r, "defaults", c))
            )
        for p in r.get("granian", {}).get("points", []):
            c = p["concurrency"]
            info(
                f"{name}, c={c}: granian / uvicorn (req/s, defaults)",
                ratio(p, point(r, "defaults", c)),
            )
        for p in r.get("bare_granian", {}).get("points", []):
            c = p["concurrency"]
            info(
                f"{name}, c={c}: bare floor, granian / uvicorn", ratio(p, point(r, "bare_asgi", c))
            )

    # -- the tuned rows (the earlier issues' targets) --------------------------------------
    for name, r in of("wide"):
        add(
            f"{name}, c=64: batching on / off throughput",
            ratio(point(r, "batching_on", 64), point(r, "batching_off", 64)),
            4.0,
            "≥ 4x",
        )
    for name, r in of("mobilenet_v2", "v2-binary"):
        # Both: batching does not pay for conv nets (padding to a bucket costs compute).
        for variant in ("batching_on", "batching_off"):
            p = point(r, variant, 8)
            add(
                f"{name} (binary V2), c=8, tuned, {variant.replace('_', ' ')}: "
                f"servekit / {RAW_LABELS[r['raw']['runtime']]}",
                round(p["throughput_rps"] / r["raw"]["samples_per_s"], 3) if p else None,
                0.9,
                "≥ 90%",
            )
        lean = point(r, "lean", 8)
        info(
            f"{name}, c=8: lean bound / {RAW_LABELS[r['raw']['runtime']]}",
            round(lean["throughput_rps"] / r["raw"]["samples_per_s"], 3) if lean else None,
            0.9,
        )
    for name, r in of("tiny"):
        add(
            f"{name} (JSON), c=64, tuned: servekit / bare ASGI floor requests/s",
            ratio(point(r, "batching_on", 64), point(r, "bare_asgi", 64)),
            0.5,
            "≥ 50%",
        )
        info(
            f"{name} (JSON), c=64: lean bound / bare ASGI floor requests/s",
            ratio(point(r, "lean", 64), point(r, "bare_asgi", 64)),
            0.5,
        )
    for name, r in results.items():
        one, bare = point(r, "batching_on", 1), point(r, "bare_asgi", 1)
        if one is None or (r["case"]["protocol"] == "v2" and r["case"]["zoo"] == "mobilenet_v2"):
            continue
        invoke = r["raw"]["invoke_batch1_ms"]
        excess = one["p50_ms"] - invoke
        add(
            f"{name}, c=1, tuned: p50 - raw batch-1 invoke (ms)",
            round(excess, 3),
            1.0,
            "≤ 1 ms",
            False,
        )
        if (lean := point(r, "lean", 1)) is not None:
            value = round(lean["p50_ms"] - invoke, 3)
            info(f"{name}, c=1: lean bound p50 - raw batch-1 invoke (ms)", value)
        if bare is not None:  # what moving the bytes alone takes at one connection
            info(f"{name}, c=1: bare ASGI floor p50 (ms)", bare["p50_ms"])
    return rows


def runtime_rows(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each benchmark model served from both runtimes: the raw limits and servekit with
    batching on, ONNX Runtime over TFLite."""
    by_zoo: dict[str, dict[str, dict[str, Any]]] = {}
    for r in results.values():
        by_zoo.setdefault(r["case"]["zoo"], {})[r["case"]["runtime"]] = r
    rows: list[dict[str, Any]] = []
    for zoo, pair in by_zoo.items():
        if set(pair) != {"tflite", "onnx"}:
            continue
        lite, onnx = pair["tflite"], pair["onnx"]
        # (what, TFLite's value, ONNX Runtime's, whether higher is better)
        measures: list[tuple[str, float | None, float | None, bool]] = [
            (
                "raw samples/s (best batch)",
                lite["raw"]["samples_per_s"],
                onnx["raw"]["samples_per_s"],
                True,
            ),
            (
                "raw batch-1 invoke (ms)",
                lite["raw"]["invoke_batch1_ms"],
                onnx["raw"]["invoke_batch1_ms"],
                False,
            ),
        ]
        for p in lite.get("batching_on", {}).get("points", []):
            c = p["concurrency"]
            q = point(onnx, "batching_on", c) or {}
            measures.append(
                (
                    f"servekit, batching on, c={c}: req/s",
                    p["throughput_rps"],
                    q.get("throughput_rps"),
                    True,
                )
            )
            if c == 1:
                measures.append(
                    ("servekit, batching on, c=1: p50 (ms)", p["p50_ms"], q.get("p50_ms"), False)
                )
        for what, a, b, higher in measures:
            ratio = round(b / a, 3) if a and b is not None else None
            faster = None if ratio is None else ("onnx" if (ratio > 1) == higher else "tflite")
            rows.append(
                {
                    "model": zoo,
                    "measure": what,
                    "tflite": a,
                    "onnx": b,
                    "onnx_over_tflite": ratio,
                    "faster": faster,
                }
            )
    return rows


def fmt_ratio(row: dict[str, Any]) -> str:
    v = row["value"]
    if v is None:
        return "n/a"
    if "(ms)" in row["target"]:
        return f"{v:.3f} ms"
    if "(MB)" in row["target"]:
        return f"{v:.0f} MB"
    if row["goal"] is None:
        return f"{v:.2f}x"
    return f"{v:.2f}x" if row["goal"] >= 1 else f"{v * 100:.1f}%"


def summary_markdown(results: dict[str, dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        "# servekit benchmark summary",
        "",
        f"One run of `benchmarks/run.py` on {meta['date']}: {meta['cpus']} CPUs "
        f"({meta['cpu_model']}), Python {meta['python']}, {meta['workers']} server "
        f"process(es), {meta['duration_s']:g} s per point after {meta['warmup_s']:g} s "
        f"warm-up, load generator wrk (1 thread). 1-minute load average "
        f"{meta['load_avg_start']:.2f} at the start, {meta['load_avg_end']:.2f} at the end.",
        "",
        f"Took {meta['elapsed_s'] / 60:.1f} minutes.",
        "",
        "Throughput is requests/s (one row each) answered 200; the raw runtime's is "
        "samples/s at its best batch size with the server's threads. Latencies are wrk's. "
        "Models named `*_onnx` are the same models exported by tf2onnx, served and run raw "
        "with ONNX Runtime; they share the bare ASGI floor measured for the TFLite copy "
        "(same request, a response of the same size). "
        "The raw batch-1 invoke is the fastest of the measurements spread over each "
        "model's run (before the servers and after each): "
        + "; ".join(
            f"{name} "
            + ", ".join(f"{v:.3f}" for v in r["raw"].get("invoke_batch1_ms_runs", []))
            + " ms"
            for name, r in results.items()
        )
        + ".",
        "",
        "Tuned (config.yaml): "
        + "; ".join(
            f"{name} {RUNTIME_LABELS[r['case']['runtime']]}, {r['case']['instances']} "
            f"instance(s) x {r['case']['threads_per_instance']} thread(s), {r['case']['protocol']}"
            for name, r in results.items()
        )
        + ".",
        "",
        f"Defaults (no config.yaml; {meta.get('usable_cpus', '')}): "
        + "; ".join(
            f"{name}: {d.get('instances')} instance(s) x {d.get('threads_per_instance')} "
            f"thread(s), execution {d.get('execution')}, buckets {d.get('buckets')} "
            f"({d.get('sizing')})"
            for name, r in results.items()
            if (d := r.get("defaults", {}).get("served_as"))
        )
        + ".",
        "",
        "| model | protocol | server | c | req/s | p50 ms | p99 ms | errors | RSS MB |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        proto = r["case"]["protocol"]
        raw = r["raw"]
        floor_of = r.get("bare_asgi", {}).get("measured_for", name)
        shared = f" (measured for {floor_of})" if floor_of != name else ""
        lines.append(
            f"| {name} | - | {RAW_LABELS[raw['runtime']]} ({raw['threads']} thread(s), batch "
            f"{raw['best_batch']}) | - | {raw['samples_per_s']:.0f} | "
            f"{raw['invoke_batch1_ms']:.3f} (batch-1 invoke) | - | - | - |"
        )
        for variant, label in (
            ("bare_asgi", "bare ASGI floor, uvicorn" + shared),
            ("bare_granian", "bare ASGI floor, granian" + shared),
            ("defaults", "**servekit, defaults** (no config.yaml)"),
            ("defaults_workers2", "servekit, defaults, 2 workers"),
            ("granian", "servekit, defaults, under granian"),
            ("batching_on", f"servekit, tuned, batching on ({r['case']['max_batch_size']})"),
            ("batching_off", "servekit, tuned, batching off (1)"),
            ("lean", "lean bound (servekit's core, least HTTP code)"),
        ):
            for p in r.get(variant, {}).get("points", []):
                lines.append(
                    f"| {name} | {proto} | {label} | {p['concurrency']} | "
                    f"{p['throughput_rps']:.0f} | {p['p50_ms']:.2f} | {p['p99_ms']:.2f} | "
                    f"{p['errors']} | {p['server_rss_mb']:.0f} |"
                )
    lines += ["", "## Targets", "", "| target | goal | measured | met |", "|---|---|---:|---|"]
    for t in meta["targets"]:
        met = {True: "yes", False: "**no**", None: "-"}[t["met"]]
        lines.append(f"| {t['target']} | {t['how']} | {fmt_ratio(t)} | {met} |")
    if meta.get("runtimes"):
        lines += [
            "",
            "## TFLite and ONNX Runtime",
            "",
            "The same model and weights in each runtime, same instances and threads.",
            "",
            "| model | measure | TFLite | ONNX Runtime | ONNX / TFLite | faster |",
            "|---|---|---:|---:|---:|---|",
        ]
        for row in meta["runtimes"]:
            ratio = row["onnx_over_tflite"]
            lines.append(
                f"| {row['model']} | {row['measure']} | {fmt_number(row['tflite'])} | "
                f"{fmt_number(row['onnx'])} | {'n/a' if ratio is None else f'{ratio:.2f}'} | "
                f"{RUNTIME_LABELS.get(row['faster'] or '', '-')} |"
            )
    lines.append("")
    return "\n".join(lines)


def fmt_number(v: float | None) -> str:
    if v is None:
        return "n/a"
    return f"{v:.3f}" if v < 10 else f"{v:,.0f}"


def plot(result: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_l) = plt.subplots(1, 2, figsize=(12, 4.5))
    styles = {
        "batching_on": ("servekit, tuned, batching on", "tab:blue", "o-"),
        "batching_off": ("servekit, tuned, batching off", "tab:orange", "s-"),
        "defaults": ("servekit, defaults", "tab:red", "D-"),
        "defaults_workers2": ("servekit, defaults, 2 workers", "tab:brown", "v--"),
        "granian": ("servekit, defaults, granian", "tab:olive", "P-"),
        "lean": ("lean bound (least HTTP code)", "tab:purple", "^:"),
    }
    for variant, (label, color, style) in styles.items():
        pts = result.get(variant, {}).get("points", [])
        cs = [p["concurrency"] for p in pts]
        ax_t.plot(cs, [p["throughput_rps"] for p in pts], style, color=color, label=label)
        ax_l.plot(cs, [p["p99_ms"] for p in pts], style, color=color, label=f"{label} p99")
    raw = result["raw"]
    bare = result.get("bare_asgi", {}).get("points") or [{"concurrency": 1, "p99_ms": 0.0}]
    best_bare = max(p.get("throughput_rps", 0.0) for p in bare)
    ax_t.axhline(
        raw["samples_per_s"],
        color="tab:green",
        ls="--",
        label=f"{RAW_LABELS[raw['runtime']]} (batch {raw['best_batch']}): "
        f"{raw['samples_per_s']:.0f}/s",
    )
    ax_t.axhline(best_bare, color="tab:gray", ls=":", label=f"bare ASGI floor: {best_bare:.0f}/s")
    ax_l.axhline(
        raw["invoke_batch1_ms"],
        color="tab:green",
        ls="--",
        label=f"raw batch-1 invoke: {raw['invoke_batch1_ms']:.3f} ms",
    )
    ax_l.axhline(
        min(p["p99_ms"] for p in bare),
        color="tab:gray",
        ls=":",
        label=f"bare ASGI floor p99 (best): {min(p['p99_ms'] for p in bare):.2f} ms",
    )
    for ax, ylabel in ((ax_t, "requests/s (samples/s)"), (ax_l, "p99 latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks([p["concurrency"] for p in bare])
        ax.set_xticklabels([str(p["concurrency"]) for p in bare])
        ax.set_xlabel("concurrency (connections)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    case = result["case"]
    fig.suptitle(
        f"{result['model']} ({RUNTIME_LABELS[case['runtime']]}): {case['protocol']}, "
        f"{case['instances']} instance(s) x "
        f"{case['threads_per_instance']} thread(s)"
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


# -- main --------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="*", choices=list(CASES), default=list(CASES))
    parser.add_argument(
        "--runtimes",
        nargs="*",
        choices=list(RUNTIMES),
        default=list(RUNTIMES),
        help="serve and run each model's file in these runtimes (its ONNX copy: <model>_onnx)",
    )
    parser.add_argument("--concurrency", nargs="*", type=int, default=[1, 8, 64])
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per point")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    parser.add_argument("--workers", type=int, default=1, help="server processes (both servers)")
    parser.add_argument(
        "--tf-python", default=sys.executable, help="a Python with TensorFlow, to build the models"
    )
    parser.add_argument(
        "--instances",
        nargs="*",
        default=[],
        metavar="MODEL=I:T",
        help="serve MODEL with I instances of T threads (raw limit too), e.g. mobilenet_v2=1:2",
    )
    parser.add_argument(
        "--variants",
        nargs="*",
        choices=VARIANTS,
        default=list(VARIANTS),
        help="the servers to measure each case on (the floors need a servekit variant first)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.variants = [v for v in VARIANTS if v in args.variants]  # in run order
    cases = dict(CASES)
    for spec in args.instances:
        name, _, it = spec.partition("=")
        instances, _, threads = it.partition(":")
        cases[name] = replace(
            cases[name], instances=int(instances), threads_per_instance=int(threads or 1)
        )

    t0 = time.monotonic()
    wrk = ensure_wrk()
    zoos = list(dict.fromkeys(cases[m].zoo for m in args.models))
    build = [args.tf_python, str(HERE / "make_bench_models.py"), "--only", *zoos]
    subprocess.run([*build, "--runtimes", *args.runtimes], check=True)
    sys.setswitchinterval(0.001)  # as servekit's server does (its threads get the GIL back)
    meta: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "usable_cpus": cpu_budget().reason,
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "workers": args.workers,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "load_generator": "wrk -t1 (benchmarks/wrk_post.lua)",
        "load_avg_start": round(load_average(), 2),
    }
    print(f"load average {meta['load_avg_start']:.2f}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    # The floors depend on the bytes, not the runtime: shared by a case's runtimes.
    floors: dict[tuple[str, str], dict[str, Any]] = {}
    for case in (replace(cases[m], runtime=r) for m in args.models for r in args.runtimes):
        name = case.key
        same_bytes = (case.zoo, case.protocol.value)
        result = bench_model(
            case,
            wrk,
            args.concurrency,
            args.duration,
            args.warmup,
            args.workers,
            args.variants,
            floors.get(same_bytes),
        )
        floors.setdefault(
            same_bytes, {v: result[v] for v in ("bare_asgi", "bare_granian") if v in result}
        )
        results[name] = result
        (args.out / f"{name}.json").write_text(
            json.dumps({"meta": meta, **result}, indent=2) + "\n"
        )
        plot(result, args.out / f"{name}.png")
    meta["load_avg_end"] = round(load_average(), 2)
    meta["elapsed_s"] = round(time.monotonic() - t0, 1)
    meta["targets"] = targets(results, meta["cpus"])
    meta["runtimes"] = runtime_rows(results)
    for name, result in results.items():  # the final meta (targets, load at the end) in each
        (args.out / f"{name}.json").write_text(
            json.dumps({"meta": meta, **result}, indent=2) + "\n"
        )
    (args.out / "summary.md").write_text(summary_markdown(results, meta))
    print()
    print((args.out / "summary.md").read_text())
    print(f"took {meta['elapsed_s']:.0f} s; wrote {args.out}/")


if __name__ == "__main__":
    main()
