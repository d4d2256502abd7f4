"""`servekit bench`, the locust file and the benchmark's lean bound, each against a real
server (the bundled demo)."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from conftest import ROOT, ServerProcess, digits_rows, free_port
from servekit.bench import Protocol, encode_request


def bench(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "servekit", "bench", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


@pytest.mark.parametrize("protocol", ["v1", "v2", "v2-binary"])
def test_bench_measures_each_protocol(demo_server: ServerProcess, protocol: str) -> None:
    rows = "1" if protocol == "v1" else "3"
    r = bench(
        demo_server.url,
        *("--model", "digits", "--protocol", protocol, "--rows", rows),
        *("--concurrency", "4", "--duration", "1", "--json"),
    )
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["protocol"] == protocol and s["rows"] == int(rows) and s["concurrency"] == 4
    assert s["ok"] > 10 and s["ok"] == s["requests"], s
    assert s["errors"] == {}
    assert s["throughput_rps"] > 10
    assert s["rows_per_s"] == pytest.approx(s["throughput_rps"] * int(rows), rel=0.01)
    lat = s["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"], lat


def test_bench_prints_a_table(demo_server: ServerProcess) -> None:
    r = bench(demo_server.url, "-m", "digits", "-c", "2", "-d", "0.5", "--data", "zeros")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "digits over v2" in out and "2 concurrent" in out
    for label in ("throughput", "req/s", "latency p50", "latency p90", "latency p99", "errors"):
        assert label in out, out


def test_bench_counts_error_statuses(tmp_path: Path) -> None:
    """A server that refuses past one request in flight: 503s show up by status."""
    server = ServerProcess(env={"SERVEKIT_MAX_INFLIGHT_REQUESTS": "1"}, name="bench-503")
    server.wait_ready()
    try:
        r = bench(server.url, "-m", "digits", "-c", "16", "-d", "1", "--json")
    finally:
        assert server.stop() == 0, server.log()
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["ok"] > 0
    assert s["errors"].get("HTTP 503", 0) > 0, s
    assert s["requests"] == s["ok"] + sum(s["errors"].values())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--model", "nope"), "model 'nope': the server answered 404: unknown model 'nope'"),
        # Past max_request_rows (4,096 by default; larger than max_batch_size is split).
        (("--model", "digits", "--rows", "5000"), "the server refused the request: 400"),
        (("--model", "digits", "--concurrency", "0"), "Invalid value for '--concurrency'"),
        (("--model", "digits", "--protocol", "v3"), "Invalid value for '--protocol'"),
    ],
)
def test_bench_bad_input_is_one_line(
    demo_server: ServerProcess, args: tuple[str, ...], message: str
) -> None:
    r = bench(demo_server.url, *args, "-d", "0.5")
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (f"http://127.0.0.1:{free_port()}", "cannot reach http://127.0.0.1:"),
        ("https://127.0.0.1:1", "only http:// URLs are supported"),
    ],
)
def test_bench_unreachable_server_is_one_line(url: str, message: str) -> None:
    r = bench(url, "--model", "digits", "-d", "0.5")
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr


def test_locustfile_runs_without_failures(demo_server: ServerProcess, tmp_path: Path) -> None:
    prefix = tmp_path / "locust"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(ROOT / "benchmarks" / "locustfile.py"),
            "--headless",
            "-u",
            "4",
            "-r",
            "4",
            "-t",
            "5s",
            "--host",
            demo_server.url,
            "--only-summary",
            "--csv",
            str(prefix),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    with (tmp_path / "locust_stats.csv").open() as f:
        stats = {row["Name"]: row for row in csv.DictReader(f)}
    tasks = {"v1 predict", "v2 infer json", "v2 infer binary", "v2 infer raw"}
    assert tasks <= set(stats), stats.keys()
    for name in (*tasks, "Aggregated"):
        assert int(stats[name]["Request Count"]) > 0, stats[name]
        assert int(stats[name]["Failure Count"]) == 0, (r.stdout + r.stderr)[-3000:]


def _outputs(protocol: Protocol, body: bytes, headers: httpx.Headers) -> np.ndarray:
    if protocol is Protocol.v1:
        return np.asarray(json.loads(body)["predictions"], dtype=np.float32)
    if protocol is Protocol.v2:
        (out,) = json.loads(body)["outputs"]
        return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])
    n = int(headers["inference-header-content-length"])
    (out,) = json.loads(body[:n])["outputs"]
    return np.frombuffer(body[n:], dtype="<f4").reshape(out["shape"])


def test_lean_bound_answers_like_servekit(demo_server: ServerProcess) -> None:
    """benchmarks/lean_asgi.py (the benchmark's lean bound) computes what servekit does,
    in each protocol's plain form, on the same model."""
    lean = ServerProcess(
        *("--app-dir", str(ROOT / "benchmarks"), "--host", "127.0.0.1", "--log-level", "warning"),
        command=(sys.executable, "-m", "uvicorn", "lean_asgi:app"),
        name="lean",
    ).wait_ready()
    try:
        for protocol in Protocol:
            rows = 1 if protocol is Protocol.v1 else 3
            request = encode_request("digits", {"pixels": digits_rows(rows)}, protocol)
            answers = []
            for server in (demo_server.url, lean.url):
                r = httpx.post(
                    server + request.path,
                    content=request.body,
                    headers={"content-type": request.content_type, **request.headers},
                )
                assert r.status_code == 200, (protocol, server, r.text)
                answers.append(_outputs(protocol, r.content, r.headers))
            assert answers[1].shape == (rows, 10), protocol
            np.testing.assert_allclose(answers[1], answers[0], rtol=1e-6, err_msg=protocol)
    finally:
        # uvicorn re-raises the SIGTERM it handled once it has shut down.
        assert lean.stop() in (0, -signal.SIGTERM), lean.log()
