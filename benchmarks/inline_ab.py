"""Do servekit's inline special cases pay? ``execution: auto`` against ``thread``, A/B.

``auto`` (the default) runs a small one-instance model's batches on the event loop
(``tiny``: inline small models) and gives a larger one a thread but runs a request
that is alone in the server on the loop (``wide``: lone batches inline);
``execution: thread`` does neither: every batch is handed to the instance's thread.
``servekit/pool.py`` has both rules.

Both servers run side by side for the whole run (one per variant, each with the tiny
and wide models as the benchmark of record serves them, batching on), and only one is
loaded at a time: wrk (as in ``run.py``) at each concurrency for ``--duration``
seconds after a ``--warmup``, the two variants back to back with their order swapped
from one pair to the next, every model and concurrency once per pair before the next
pair starts, so the pairs of a point are spread over the run. Each variant's mode is
read back from the server (``GET /v1/models/<m>/metadata``) before anything is timed.

Writes ``benchmarks/results/inline_ab.json``: every measurement, and per point the
gain of ``auto`` over ``thread`` (requests/s, and p50 the other way round) for each
pair, with the median and the range. The project's rule: keep a special case only if
it gains at least 10% somewhere in one run.

    .venv/bin/python benchmarks/inline_ab.py                  # ~5 minutes
    .venv/bin/python benchmarks/inline_ab.py --pairs 3 --concurrency 1 8
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from run import (
    BUILD,
    CASES,
    HERE,
    RESULTS,
    Case,
    add_model,
    check_response,
    cpu_model,
    cpu_seconds,
    ensure_wrk,
    load_average,
    reference_output,
    run_wrk,
    send_once,
)
from server_process import ServerProcess

from servekit.bench import Fill, InputMeta, encode_request, make_arrays

VARIANTS = {"auto": "", "thread": "execution: thread\n"}
# What each model's A/B is about: the special case ``auto`` takes for it.
SPECIAL_CASE = {"tiny": "inline small models", "wide": "lone batches inline"}
KEEP_AT = 0.10  # the project's rule: a gain of at least 10%


def repo(variant: str, cases: list[Case]) -> Path:
    folder = BUILD / "repos" / f"inline_ab-{variant}"
    for case in cases:
        add_model(folder, case, case.max_batch_size, VARIANTS[variant])
    return folder


def mode(url: str, model: str) -> dict[str, Any]:
    r = httpx.get(f"{url}/v1/models/{model}/metadata", timeout=10, trust_env=False)
    r.raise_for_status()
    meta = r.json()
    batching = (meta.get("servekit") or meta["metadata"])["batching"]
    return {"execution": batching["execution"]}


def measure(
    wrk: str, server: ServerProcess, req: dict[str, Any], c: int, seconds: float, warmup: float
) -> dict[str, Any]:
    args = (wrk, server.url + req["path"], req["body_file"], req["content_type"], req["hl"], c)
    if warmup > 0:
        run_wrk(*args, warmup)
    cpu0 = cpu_seconds(server.proc.pid)
    r = run_wrk(*args, seconds)
    secs = r["duration_us"] / 1e6
    cpu = cpu_seconds(server.proc.pid) - cpu0
    ok = r["requests"] - r["errors"]["status"]
    return {
        "throughput_rps": round(ok / secs, 1),
        "p50_ms": r["latency_us"]["p50"] / 1000,
        "p99_ms": r["latency_us"]["p99"] / 1000,
        "errors": sum(r["errors"].values()),
        "server_cpu_cores": round(cpu / secs, 2),
        "load_avg_1m": round(load_average(), 2),
        "time": datetime.datetime.now(datetime.UTC).strftime("%H:%M:%S"),
    }


def gains(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per pair: auto's requests/s over thread's, and thread's p50 over auto's, minus 1."""
    by_pair: dict[int, dict[str, dict[str, Any]]] = {}
    for run in runs:
        by_pair.setdefault(run["pair"], {})[run["variant"]] = run
    rps, p50 = [], []
    for pair in by_pair.values():
        a, t = pair["auto"], pair["thread"]
        rps.append(round(a["throughput_rps"] / t["throughput_rps"] - 1, 3))
        p50.append(round(t["p50_ms"] / a["p50_ms"] - 1, 3))
    return {
        "throughput_gain_by_pair": rps,
        "throughput_gain_median": round(statistics.median(rps), 3),
        "throughput_gain_range": [min(rps), max(rps)],
        "p50_gain_by_pair": p50,
        "p50_gain_median": round(statistics.median(p50), 3),
        "p50_gain_range": [min(p50), max(p50)],
        "auto_rps_median": statistics.median(
            r["throughput_rps"] for r in runs if r["variant"] == "auto"
        ),
        "thread_rps_median": statistics.median(
            r["throughput_rps"] for r in runs if r["variant"] == "thread"
        ),
        "auto_p50_ms_median": statistics.median(
            r["p50_ms"] for r in runs if r["variant"] == "auto"
        ),
        "thread_p50_ms_median": statistics.median(
            r["p50_ms"] for r in runs if r["variant"] == "thread"
        ),
    }


def verdicts(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per special case: the point where ``auto`` gained most (median over its pairs, of
    requests/s or p50, whichever is larger), and keep or remove by the 10% rule."""
    out = []
    for model, name in SPECIAL_CASE.items():
        mine = [p for p in points if p["model"] == model]
        if not mine:
            continue

        def best_of(p: dict[str, Any]) -> float:
            return float(max(p["throughput_gain_median"], p["p50_gain_median"]))

        best = max(mine, key=best_of)
        metric = (
            "throughput" if best["throughput_gain_median"] >= best["p50_gain_median"] else "p50"
        )
        out.append(
            {
                "special_case": name,
                "model": model,
                "best_concurrency": best["concurrency"],
                "best_metric": metric,
                "best_gain_median": best[f"{metric}_gain_median"],
                "best_gain_range": best[f"{metric}_gain_range"],
                "verdict": "keep" if best_of(best) >= KEEP_AT else "remove",
            }
        )
    return out


def markdown(result: dict[str, Any]) -> str:
    meta = result["meta"]
    lines = [
        f"`benchmarks/inline_ab.py`, {meta['date']}: {meta['pairs']} pairs per point, "
        f"{meta['duration_s']:g} s each after {meta['warmup_s']:g} s warm-up, wrk; load "
        f"average {meta['load_avg_start']:.2f} at the start, {meta['load_avg_end']:.2f} at "
        f"the end; {meta['elapsed_s'] / 60:.1f} minutes.",
        "",
        "| model (auto's special case) | c | auto req/s | thread req/s | req/s gain, median "
        "(range) | auto p50 ms | thread p50 ms | p50 gain, median (range) |",
        "|---|---:|---:|---:|---|---:|---:|---|",
    ]
    for p in result["points"]:
        lo, hi = p["throughput_gain_range"]
        plo, phi = p["p50_gain_range"]
        lines.append(
            f"| {p['model']} ({SPECIAL_CASE[p['model']]}) | {p['concurrency']} | "
            f"{p['auto_rps_median']:.0f} | {p['thread_rps_median']:.0f} | "
            f"{p['throughput_gain_median']:+.1%} ({lo:+.1%} to {hi:+.1%}) | "
            f"{p['auto_p50_ms_median']:.2f} | {p['thread_p50_ms_median']:.2f} | "
            f"{p['p50_gain_median']:+.1%} ({plo:+.1%} to {phi:+.1%}) |"
        )
    lines += ["", "| special case | best point | gain there, median (range) | verdict |"]
    lines += ["|---|---|---|---|"]
    for v in result["verdicts"]:
        lo, hi = v["best_gain_range"]
        lines.append(
            f"| {v['special_case']} | {v['model']}, c={v['best_concurrency']}, "
            f"{v['best_metric']} | {v['best_gain_median']:+.1%} ({lo:+.1%} to {hi:+.1%}) | "
            f"{v['verdict']} (rule: ≥ {KEEP_AT:.0%}) |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="*", choices=list(SPECIAL_CASE), default=["tiny", "wide"])
    parser.add_argument("--concurrency", nargs="*", type=int, default=[1, 8, 64])
    parser.add_argument("--pairs", type=int, default=4, help="A/B pairs per point (≥ 3)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    parser.add_argument("--out", type=Path, default=RESULTS / "inline_ab.json")
    parser.add_argument(
        "--tf-python", default=sys.executable, help="a Python with TensorFlow, to build the models"
    )
    args = parser.parse_args()
    t0 = time.monotonic()
    wrk = ensure_wrk()
    build = [args.tf_python, str(HERE / "make_bench_models.py"), "--only", *args.models]
    subprocess.run([*build, "--runtimes", "tflite"], check=True)
    cases = [CASES[m] for m in args.models]
    requests: dict[str, dict[str, Any]] = {}
    for case in cases:
        x = np.random.default_rng(1).random((1, *case.row_shape), dtype=np.float32)
        arrays = make_arrays(
            [InputMeta(case.input_name, "FP32", (-1, *case.row_shape))], 1, Fill.random
        )
        arrays[case.input_name] = x
        request = encode_request(case.model, arrays, case.protocol)
        body_file = BUILD / f"request-{case.model}.bin"
        body_file.write_bytes(request.body)
        requests[case.model] = {
            "request": request,
            "path": request.path,
            "body_file": body_file,
            "content_type": request.content_type,
            "hl": request.headers.get("Inference-Header-Content-Length"),
            "want": reference_output(case, x),
        }
    meta: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "pairs": args.pairs,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "load_generator": "wrk -t1 (benchmarks/wrk_post.lua)",
        "served_as": {c.model: {**c.to_dict(), "batching": "on"} for c in cases},
        "load_avg_start": round(load_average(), 2),
    }
    print(f"load average {meta['load_avg_start']:.2f}", flush=True)
    log = "--log-level", "warning"
    servers = {
        v: ServerProcess(repo(v, cases), *log, log_path=BUILD / f"inline_ab-{v}.log")
        for v in VARIANTS
    }
    runs: list[dict[str, Any]] = []
    try:
        for server in servers.values():
            server.wait_ready()
        modes: dict[str, dict[str, Any]] = {}
        for v, server in servers.items():
            for case in cases:
                req = requests[case.model]
                r = req["request"]
                status, body, headers = asyncio.run(
                    send_once(server.url, r.path, r.body, r.content_type, r.headers)
                )
                if status != 200:
                    raise RuntimeError(f"{case.model} {v}: {status} {body[:300]!r}")
                check_response(case, body, headers, req["want"])
                modes[f"{case.model}/{v}"] = mode(server.url, case.model)
        print(f"modes: {modes}", flush=True)
        meta["modes"] = modes
        for pair in range(args.pairs):
            order = list(VARIANTS) if pair % 2 == 0 else list(reversed(VARIANTS))
            for case in cases:
                for c in args.concurrency:
                    for v in order:
                        m = measure(
                            wrk, servers[v], requests[case.model], c, args.duration, args.warmup
                        )
                        runs.append(
                            {"pair": pair, "model": case.model, "concurrency": c, "variant": v, **m}
                        )
                        print(
                            f"pair {pair} {case.model:5} c={c:<3} {v:6} "
                            f"{m['throughput_rps']:>8.1f} req/s  p50 {m['p50_ms']:.3f} ms  "
                            f"load {m['load_avg_1m']}",
                            flush=True,
                        )
    finally:
        for server in servers.values():
            server.stop()
    points = []
    for case in cases:
        for c in args.concurrency:
            mine = [r for r in runs if r["model"] == case.model and r["concurrency"] == c]
            points.append({"model": case.model, "concurrency": c, **gains(mine)})
    meta["load_avg_end"] = round(load_average(), 2)
    meta["elapsed_s"] = round(time.monotonic() - t0, 1)
    result = {"meta": meta, "points": points, "verdicts": verdicts(points), "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print()
    print(markdown(result))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
