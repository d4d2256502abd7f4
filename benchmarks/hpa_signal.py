"""Which per-pod signal should the HorizontalPodAutoscaler scale on? A recorded run.

A real servekit (the digits model with the limits of a production config: a deadline,
and a bounded queue or large batches), a real Prometheus scraping it every second with the labels a
ServiceMonitor adds (namespace, pod), and ``servekit bench`` as the load: first a light
load, then an overload well past what one server answers within the deadline. Every
two seconds Prometheus evaluates each candidate signal as prometheus-adapter would ask
it for the HPA (the adapter's metricsQuery, rendered for one pod); the run records each
one's value under light load and under overload.

The candidates:

- ``pending``: the old signal, requests queued and not yet in a batch;
- ``inflight_per_instance``: the shipped signal, requests inside servekit (queued or
  computing; Little's law over the request-time counters) per interpreter instance;
- ``queue_wait_s``: the mean time a request waited in the queue;
- ``http_inflight``: HTTP inference requests in progress (HTTP only, not gRPC);
- ``failure_rps``: requests refused (503) or past their deadline (504) per second.

    .venv/bin/python benchmarks/hpa_signal.py            # writes results/hpa_signal.json

Each phase lasts --seconds (60 by default); the whole run about 5 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import yaml
from server_process import ROOT, ServerProcess, free_port

ADAPTER_CONFIG = ROOT / "deploy" / "kubernetes" / "prometheus-adapter" / "configmap.yaml"
RESULTS = ROOT / "benchmarks" / "results" / "hpa_signal.json"
DIGITS = ROOT / "tests" / "models" / "repo" / "digits" / "1" / "model.tflite"
NAMESPACE, POD = "servekit", "servekit-7d9f-abcde"
# Two overloads of a 1-instance, 1-thread server (the base's 1-CPU pod), each with a
# 250 ms deadline: "queue" has a bounded queue, so the overload refuses (503) and passes
# deadlines (504); "big_batches" lets a batch take up to 256 queued requests, so each
# batch empties the queue and the queue-depth gauge reads low while requests wait.
ONE_CPU = "instances: 1\nthreads_per_instance: 1\n"
SCENARIOS = {
    "queue": ONE_CPU + "max_batch_size: 32\nmax_queue_size: 256\ntimeout_ms: 250\n",
    "big_batches": ONE_CPU + "max_batch_size: 256\nmax_queue_size: 1024\ntimeout_ms: 250\n",
}
MATCHERS = f'namespace="{NAMESPACE}",pod=~"{POD}"'

# The older signal and the others considered, as the adapter would render them.
CANDIDATES = {
    "pending": (
        f"sum by (namespace, pod) (avg_over_time(servekit_pending_requests{{{MATCHERS}}}[1m]))"
    ),
    "queue_wait_s": (
        f"sum by (namespace, pod) (rate(servekit_queue_duration_seconds_sum{{{MATCHERS}}}[1m]))"
        f" / sum by (namespace, pod) "
        f"(rate(servekit_queue_duration_seconds_count{{{MATCHERS}}}[1m]))"
    ),
    "http_inflight": (
        f"sum by (namespace, pod) (avg_over_time(http_requests_inprogress"
        f'{{{MATCHERS},handler=~".+(:predict|/infer)"}}[1m]))'
    ),
    "failure_rps": (
        f"sum by (namespace, pod) (rate(servekit_requests_total"
        f'{{{MATCHERS},outcome="failure",reason=~"rejected|timeout"}}[1m]))'
    ),
}


def adapter_queries() -> dict[str, str]:
    """The shipped adapter rules' metricsQuery for our pod, by the metric name they serve."""
    configmap = yaml.safe_load(ADAPTER_CONFIG.read_text())
    rules = yaml.safe_load(configmap["data"]["config.yaml"])["rules"]
    out = {}
    for rule in rules:
        series = rule["seriesQuery"].split("{")[0]
        out[rule["name"]["as"]] = (
            rule["metricsQuery"]
            .replace("<<.Series>>", series)
            .replace("<<.LabelMatchers>>", MATCHERS)
            .replace("<<.GroupBy>>", "namespace,pod")
        )
    return out


class Prometheus:
    def __init__(self, target: str, workdir: Path) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            sys.exit("prometheus not found (Debian: apt-get install prometheus)")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {
                    "job_name": "servekit",
                    "static_configs": [
                        {"targets": [target], "labels": {"namespace": NAMESPACE, "pod": POD}}
                    ],
                }
            ],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self._log = (workdir / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                f"--storage.tsdb.path={workdir / 'data'}",
                "--log.level=warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def query(self, expr: str) -> float | None:
        r = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = r.json()
        if body.get("status") != "success":
            raise RuntimeError(f"{expr}: {body}")
        result = body["data"]["result"]
        if not result:
            return None
        (sample,) = result
        value = float(sample["value"][1])
        return None if value != value else value  # NaN (0/0): no data

    def wait_scraped(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.query('up{job="servekit"} == 1') is not None:
                    return
            except (httpx.TransportError, RuntimeError, ValueError):
                pass
            time.sleep(0.5)
        raise TimeoutError("prometheus never scraped servekit")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self._log.close()


def bench(url: str, concurrency: int, seconds: float) -> dict[str, Any]:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "servekit",
            "bench",
            url,
            "-m",
            "digits",
            "-c",
            str(concurrency),
            "-d",
            str(seconds),
            "--protocol",
            "v1",
            "--timeout",
            "5",
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 120,
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def sample_while(
    prometheus: Prometheus, queries: dict[str, str], stop: threading.Event, out: list[Any]
) -> None:
    start = time.monotonic()
    while not stop.is_set():
        row: dict[str, Any] = {"t_s": round(time.monotonic() - start, 1)}
        for name, expr in queries.items():
            row[name] = prometheus.query(expr)
        out.append(row)
        stop.wait(2.0)


def phase(
    prometheus: Prometheus,
    url: str,
    queries: dict[str, str],
    concurrency: int,
    seconds: float,
) -> dict[str, Any]:
    samples: list[dict[str, Any]] = []
    stop = threading.Event()
    sampler = threading.Thread(target=sample_while, args=(prometheus, queries, stop, samples))
    sampler.start()
    try:
        load = bench(url, concurrency, seconds)
    finally:
        stop.set()
        sampler.join()
    summary = {}
    for name in queries:
        seen = [s[name] for s in samples if s[name] is not None]
        tail = [s[name] for s in samples if s[name] is not None and s["t_s"] >= seconds / 2]
        summary[name] = {
            "max": round(max(seen), 4) if seen else None,
            "mean_second_half": round(sum(tail) / len(tail), 4) if tail else None,
        }
    return {
        "concurrency": concurrency,
        "seconds": seconds,
        "bench": {k: load[k] for k in ("requests", "ok", "throughput_rps", "latency_ms", "errors")},
        "signals": summary,
        "samples": samples,
    }


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--light", type=int, default=2, help="concurrency of the light load")
    parser.add_argument("--overload", type=int, default=512, help="concurrency of the overload")
    parser.add_argument("--seconds", type=float, default=60, help="seconds of each phase")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    queries = {**adapter_queries(), **CANDIDATES}
    load_before = load_average()
    scenarios = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, config in SCENARIOS.items():
            workdir = Path(tmp) / name
            repo = workdir / "repo"
            (repo / "digits" / "1").mkdir(parents=True)
            shutil.copy(DIGITS, repo / "digits" / "1" / "model.tflite")
            (repo / "digits" / "config.yaml").write_text(config)
            with ServerProcess(repo, log_path=workdir / "server.log") as server:
                prometheus = Prometheus(f"127.0.0.1:{server.port}", workdir)
                try:
                    prometheus.wait_scraped()
                    light = phase(prometheus, server.url, queries, args.light, args.seconds)
                    # The [1m] windows forget the light phase before the overload's
                    # second half, which is what the summary's mean reads.
                    overload = phase(prometheus, server.url, queries, args.overload, args.seconds)
                finally:
                    prometheus.stop()
            scenarios[name] = {
                "model_config": config.strip().split("\n"),
                "light": light,
                "overload": overload,
            }
    # The commit of the servekit measured: this checkout's, unless PYTHONPATH points at
    # another copy (a `git archive` of a commit), named by HPA_SIGNAL_COMMIT.
    commit = (
        os.environ.get("HPA_SIGNAL_COMMIT")
        or subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()
    )
    record = {
        "what": "HPA scaling signals under light load and overload, evaluated by a real "
        "Prometheus as prometheus-adapter renders them (benchmarks/hpa_signal.py)",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_before": load_before,
            "load_average_after": load_average(),
        },
        "servekit": {
            "commit": commit,
            "source": os.environ.get("PYTHONPATH") or str(ROOT / "src"),
        },
        "server": {
            "model": "digits (tests/models/repo), 1 instance x 1 thread, execution auto",
            "load": "servekit bench, TF Serving v1 JSON, 1 row per request, closed loop",
        },
        "queries": queries,
        "scenarios": scenarios,
    }
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    for scenario, result in scenarios.items():
        print(f"{scenario}:")
        for name in queries:
            light, overload = result["light"]["signals"][name], result["overload"]["signals"][name]
            print(
                f"  {name:32} light max {light['max']!s:>10}   overload max "
                f"{overload['max']!s:>10}   mean (2nd half) {overload['mean_second_half']!s:>10}"
            )
        print(f"  light:    {result['light']['bench']}")
        print(f"  overload: {result['overload']['bench']}")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
