"""gRPC against HTTP (binary and JSON) on one servekit, measured by Triton's perf_analyzer.

One ``servekit serve`` holds the benchmark models (TFLite, served as ``run.py``'s
batching-on rows serve them) with its KServe v2 gRPC API on a free port. Triton's load
tool perf_analyzer, unmodified (``scripts/get_perf_analyzer.sh``), drives it over

- ``grpc``: KServe v2 gRPC (``-i grpc``);
- ``http_binary``: Open Inference Protocol v2 over HTTP with the binary tensor data
  extension for inputs and outputs (perf_analyzer's default for HTTP);
- ``http_json``: the same in plain JSON (``--input-tensor-format json
  --output-tensor-format json``: tensors as JSON ``data`` lists both ways);

at each concurrency, with zero-filled batch-1 inputs. Each measurement is three
windows of ``--window-ms`` after a few warm-up requests (perf_analyzer's stability
check is opened wide, ``-s 999``, so every point takes the same time; it reports the
three windows together). ``--rounds`` rounds, the protocols' order rotated from one
round to the next; a point's figure is the median of its rounds, with the range.
perf_analyzer shares the 2 cores with the server, like wrk in ``run.py``; its own CPU
and the server's (both averaged over each perf_analyzer run) are recorded too.

Writes ``benchmarks/results/protocols.json`` and ``protocols.md``.

    .venv/bin/python benchmarks/protocols.py                       # ~6 minutes
    .venv/bin/python benchmarks/protocols.py --models tiny --concurrency 1 --rounds 1
"""

from __future__ import annotations

import argparse
import csv
import datetime
import io
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from run import BUILD, CASES, HERE, RESULTS, add_model, cpu_model, cpu_seconds, load_average
from server_process import ROOT, ServerProcess

PROTOCOLS = {
    "grpc": ["-i", "grpc"],
    "http_binary": ["-i", "http"],
    "http_json": ["-i", "http", "--input-tensor-format", "json", "--output-tensor-format", "json"],
}
LABELS = {"grpc": "gRPC", "http_binary": "HTTP binary", "http_json": "HTTP JSON"}


def perf_analyzer() -> str:
    """The perf_analyzer wrapper (installed into .tools/perf_analyzer on first use)."""
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "get_perf_analyzer.sh")],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return done.stdout.strip().splitlines()[-1]


def run_point(
    tool: str, server: ServerProcess, model: str, protocol: str, c: int, window_ms: int
) -> dict[str, Any]:
    host = f"127.0.0.1:{server.grpc_port if protocol == 'grpc' else server.port}"
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.csv"
        command = [tool, "-m", model, "-u", host, *PROTOCOLS[protocol]]
        command += ["--concurrency-range", str(c), "--input-data", "zero"]
        command += ["--measurement-mode", "time_windows", "--measurement-interval", str(window_ms)]
        command += ["--stability-percentage", "999", "--warmup-request-count", str(4 * c)]
        command += ["-f", str(report)]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu0, t0 = cpu_seconds(server.proc.pid), time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        wall = time.perf_counter() - t0
        server_cpu = cpu_seconds(server.proc.pid) - cpu0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0 or not report.is_file():
            tail = (done.stdout + done.stderr)[-1500:]
            raise RuntimeError(f"perf_analyzer {model} {protocol} c={c}: {done.returncode}\n{tail}")
        (row,) = list(csv.DictReader(io.StringIO(report.read_text())))
    client_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "throughput_rps": round(float(row["Inferences/Second"]), 1),
        "p50_ms": float(row["p50 latency"]) / 1000,
        "p90_ms": float(row["p90 latency"]) / 1000,
        "p99_ms": float(row["p99 latency"]) / 1000,
        "server_cpu_cores": round(server_cpu / wall, 2),
        "client_cpu_cores": round(client_cpu / wall, 2),
        "load_avg_1m": round(load_average(), 2),
        "time": datetime.datetime.now(datetime.UTC).strftime("%H:%M:%S"),
    }


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model and concurrency: each protocol's median over its rounds, and gRPC's
    requests/s over each HTTP form's."""
    points: list[dict[str, Any]] = []
    keys = dict.fromkeys((r["model"], r["concurrency"]) for r in runs)
    for model, c in keys:
        point: dict[str, Any] = {"model": model, "concurrency": c}
        for protocol in PROTOCOLS:
            mine = [
                r
                for r in runs
                if (r["model"], r["concurrency"], r["protocol"]) == (model, c, protocol)
            ]
            if not mine:
                continue
            rps = [r["throughput_rps"] for r in mine]
            point[protocol] = {
                "throughput_rps": round(statistics.median(rps), 1),
                "throughput_rps_range": [min(rps), max(rps)],
                "p50_ms": round(statistics.median(r["p50_ms"] for r in mine), 3),
                "p99_ms": round(statistics.median(r["p99_ms"] for r in mine), 3),
                "server_cpu_cores": round(
                    statistics.median(r["server_cpu_cores"] for r in mine), 2
                ),
                "client_cpu_cores": round(
                    statistics.median(r["client_cpu_cores"] for r in mine), 2
                ),
            }
        if "grpc" in point:
            for other in ("http_binary", "http_json"):
                if other in point:
                    point[f"grpc_over_{other}"] = round(
                        point["grpc"]["throughput_rps"] / point[other]["throughput_rps"], 3
                    )
        points.append(point)
    return points


def markdown(result: dict[str, Any]) -> str:
    meta = result["meta"]
    lines = [
        f"`benchmarks/protocols.py`, {meta['date']}: one servekit, perf_analyzer "
        f"{meta['perf_analyzer']}, batch-1 zero inputs, {meta['rounds']} round(s) of "
        f"3 x {meta['window_ms']} ms windows per point (median; range in brackets); load "
        f"average {meta['load_avg_start']:.2f} at the start, {meta['load_avg_end']:.2f} at "
        f"the end; {meta['elapsed_s'] / 60:.1f} minutes.",
        "",
        "Requests/s (p50 ms, p99 ms):",
        "",
        "| model | c | gRPC | HTTP binary | HTTP JSON | gRPC / HTTP binary | gRPC / HTTP JSON |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]

    def cell(p: dict[str, Any] | None) -> str:
        if p is None:
            return "-"
        lo, hi = p["throughput_rps_range"]
        spread = f" [{lo:.0f}-{hi:.0f}]" if meta["rounds"] > 1 else ""
        return f"{p['throughput_rps']:.0f}{spread} ({p['p50_ms']:.2f}, {p['p99_ms']:.2f})"

    for p in result["points"]:
        ratios = [
            f"{p[k]:.2f}x" if k in p else "-"
            for k in ("grpc_over_http_binary", "grpc_over_http_json")
        ]
        lines.append(
            f"| {p['model']} | {p['concurrency']} | {cell(p.get('grpc'))} | "
            f"{cell(p.get('http_binary'))} | {cell(p.get('http_json'))} | {' | '.join(ratios)} |"
        )
    lines += [
        "",
        "Server and perf_analyzer CPU, in cores (averaged over each run):",
        "",
        "| model | c | gRPC server / client | HTTP binary server / client | "
        "HTTP JSON server / client |",
        "|---|---:|---|---|---|",
    ]
    for p in result["points"]:
        cells = [
            f"{p[k]['server_cpu_cores']:.2f} / {p[k]['client_cpu_cores']:.2f}" if k in p else "-"
            for k in PROTOCOLS
        ]
        lines.append(f"| {p['model']} | {p['concurrency']} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="*", choices=list(CASES), default=list(CASES))
    parser.add_argument("--concurrency", nargs="*", type=int, default=[1, 8])
    parser.add_argument("--protocols", nargs="*", choices=list(PROTOCOLS), default=list(PROTOCOLS))
    parser.add_argument("--rounds", type=int, default=2, help="measurements per point")
    parser.add_argument("--window-ms", type=int, default=2000, help="perf_analyzer's window")
    parser.add_argument("--out", type=Path, default=RESULTS / "protocols.json")
    parser.add_argument(
        "--tf-python", default=sys.executable, help="a Python with TensorFlow, to build the models"
    )
    args = parser.parse_args()
    t0 = time.monotonic()
    tool = perf_analyzer()
    version = subprocess.run([tool, "--version"], capture_output=True, text=True).stderr.strip()
    build = [args.tf_python, str(HERE / "make_bench_models.py"), "--only", *args.models]
    subprocess.run([*build, "--runtimes", "tflite"], check=True)
    cases = [CASES[m] for m in args.models]
    folder = BUILD / "repos" / "protocols"
    for case in cases:
        add_model(folder, case, case.max_batch_size)
    meta: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "perf_analyzer": "2.60.0 wheel (" + version + ")",
        "rounds": args.rounds,
        "window_ms": args.window_ms,
        "served_as": {c.model: {**c.to_dict(), "batching": "on"} for c in cases},
        "load_avg_start": round(load_average(), 2),
    }
    print(f"load average {meta['load_avg_start']:.2f}", flush=True)
    runs: list[dict[str, Any]] = []
    log = BUILD / "protocols-servekit.log"
    with ServerProcess(folder, "--log-level", "warning", log_path=log) as server:
        for round_ in range(args.rounds):
            shift = round_ % len(args.protocols)
            order = args.protocols[shift:] + args.protocols[:shift]
            for case in cases:
                for c in args.concurrency:
                    for protocol in order:
                        m = run_point(tool, server, case.model, protocol, c, args.window_ms)
                        runs.append(
                            {
                                "round": round_,
                                "model": case.model,
                                "concurrency": c,
                                "protocol": protocol,
                                **m,
                            }
                        )
                        print(
                            f"round {round_} {case.model:12} c={c:<2} {LABELS[protocol]:11} "
                            f"{m['throughput_rps']:>8.1f} req/s  p50 {m['p50_ms']:.3f} ms  "
                            f"p99 {m['p99_ms']:.3f} ms  load {m['load_avg_1m']}",
                            flush=True,
                        )
    meta["load_avg_end"] = round(load_average(), 2)
    meta["elapsed_s"] = round(time.monotonic() - t0, 1)
    result = {"meta": meta, "points": summarize(runs), "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print()
    print(markdown(result))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
