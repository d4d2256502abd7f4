"""Triton's perf_analyzer runs here, unmodified, and the helpers around it agree with it.

scripts/get_perf_analyzer.sh installs it on first use: 4-8 s here, 14 s on a fresh
Debian 12 without pip; 0.1 s once installed."""

from __future__ import annotations

import re
from pathlib import Path

from perf_analyzer_support import (
    ERROR_EXIT,
    parse_perf_csv,
    perf_analyzer_args,
    perf_analyzer_path,
    run_perf_analyzer,
)


def test_perf_analyzer_reports_its_version() -> None:
    assert perf_analyzer_path().is_file()
    done = run_perf_analyzer(["--version"], timeout=30)
    assert done.returncode == 0, done.stderr
    # It prints the version to stderr. The 2.60.0 wheel's binary says 0.0.0.
    assert re.fullmatch(
        r"Perf Analyzer Version \S+ \(commit [0-9a-f]+\)\s*", done.stdout + done.stderr
    ), (done.stdout, done.stderr)


def test_perf_analyzer_usage_has_the_flags_the_helpers_use() -> None:
    # With no model it prints its usage and stops with its error status.
    done = run_perf_analyzer([], timeout=30)
    usage = done.stdout + done.stderr
    assert done.returncode == ERROR_EXIT, usage
    # argv[0] is how it was called: the wrapper's path.
    assert re.match(r"Usage: \S*perf_analyzer \[options\]\n", usage), usage[:200]
    assert "Failed to parse -m (model name). The value must be specified." in usage
    for option in ("-i", "-u", "-m", "-f", "--service-kind", "--shape", "-b"):
        assert f"\n\t{option} <" in usage, option
    for flag in perf_analyzer_args(
        "http://127.0.0.1:8000", "digits", protocol="grpc", csv_path=None
    ):
        if flag.startswith("-"):
            assert re.search(rf"(^|\s){re.escape(flag)}[\s:=]", usage), flag
    assert '--input-data <"zero"|"random"|<path>>' in usage
    assert '--measurement-mode <"time_windows"|"count_windows">' in usage


def test_perf_analyzer_args_spell_a_concurrency_sweep(tmp_path: Path) -> None:
    args = perf_analyzer_args(
        "http://127.0.0.1:8123/",
        "digits",
        protocol="grpc",
        concurrency=(1, 4),
        measurement_ms=500,
        csv_path=tmp_path / "out.csv",
        extra=["--shape", "pixels:64"],
    )
    assert args == [
        "-m", "digits", "-u", "127.0.0.1:8123", "-i", "grpc",
        "--concurrency-range", "1:4", "--measurement-mode", "time_windows",
        "--measurement-interval", "500", "--input-data", "zero",
        "-f", str(tmp_path / "out.csv"), "--shape", "pixels:64",
    ]  # fmt: skip


def test_parse_perf_csv_reads_the_report_layout(tmp_path: Path) -> None:
    # The layout perf_analyzer's report writer uses with server statistics: rows in
    # order of throughput, times in microseconds.
    report = tmp_path / "report.csv"
    report.write_text(
        "Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,"
        "Server Compute Input,Server Compute Infer,Server Compute Output,Client Recv,"
        "p50 latency,p90 latency,p95 latency,p99 latency\n"
        "1,812.5,20,310,15,8,840,6,11,1190,1402,1480,1650\n"
        "2,1450.25,22,380,120,9,1010,7,12,1340,1620,1730,2001\n"
    )
    # Reordered by concurrency here, as a throughput sort could put them either way.
    rows = parse_perf_csv(report.read_text().replace("1,812.5", "3,812.5"))
    assert [r["Concurrency"] for r in rows] == [2.0, 3.0]
    rows = parse_perf_csv(report)
    assert [r["Concurrency"] for r in rows] == [1.0, 2.0]
    assert rows[1]["Inferences/Second"] == 1450.25
    assert rows[0]["p99 latency"] == 1650.0
    assert parse_perf_csv("Concurrency,Inferences/Second,Client Send,Client Recv\n") == []
