"""Triton's load tool perf_analyzer, unmodified, for tests that drive servekit with it.

`perf_analyzer_path()` installs it once per session with scripts/get_perf_analyzer.sh
(the pinned PyPI wheel's binary, run with Debian 13's loader and libraries; a few seconds
the first time, well under a second once .tools/perf_analyzer holds it) and returns the
wrapper that runs it. `run_perf_analyzer()` runs it; `perf_analyzer_args()` spells the
usual flags; `parse_perf_csv()` reads the report it writes with `-f`.

What perf_analyzer asks of a Triton-protocol server, in order (the first two seen in
servekit's access log, the rest read in perf_analyzer's source): the model's metadata
(`GET /v2/models/{m}`), its configuration (`GET /v2/models/{m}/config`: it stops with
"failed to get model config" without it), the server's metadata (`GET /v2`, whose
`extensions` list must be there; server-side statistics are read only when it holds
"statistics"), then the model's statistics (`GET /v2/models/{m}/stats`) around each
measurement window. Over gRPC the same are ModelMetadata, ModelConfig, ServerMetadata
and ModelStatistics.
"""

from __future__ import annotations

import csv
import functools
import io
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from conftest import ROOT

SCRIPT = ROOT / "scripts" / "get_perf_analyzer.sh"
INSTALL_DIR = ROOT / ".tools" / "perf_analyzer"
# perf_analyzer exits with 99 for any error it reports (bad flags, a failed request).
ERROR_EXIT = 99


@functools.cache
def perf_analyzer_path() -> Path:
    """The wrapper that runs perf_analyzer, installed into .tools/perf_analyzer on first
    use (once per session; the script itself is a no-op when the install is current)."""
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        pytest.skip(f"perf_analyzer ships for Linux x86-64 only, not {platform.machine()}")
    done = subprocess.run(
        ["bash", str(SCRIPT), str(INSTALL_DIR)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"{SCRIPT.name} failed ({done.returncode}):\n{done.stderr}\n{done.stdout}"
        )
    wrapper = Path(done.stdout.strip().splitlines()[-1])
    if not wrapper.is_file():
        raise RuntimeError(f"{SCRIPT.name} printed {wrapper}, which is not a file")
    return wrapper


def run_perf_analyzer(
    args: Sequence[str], timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    """Run perf_analyzer with ``args``; output captured as text, the exit status not
    checked (perf_analyzer writes its errors, and its --version, to stderr). A run that
    outlives ``timeout`` seconds is killed and raises subprocess.TimeoutExpired."""
    return subprocess.run(
        [str(perf_analyzer_path()), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def perf_analyzer_args(
    url: str,
    model: str,
    *,
    protocol: str = "http",
    concurrency: tuple[int, int] = (1, 1),
    measurement_ms: int = 1000,
    csv_path: Path | None = None,
    input_data: str = "zero",
    extra: Sequence[str] = (),
) -> list[str]:
    """Arguments for a concurrency sweep of ``model`` at ``url`` (``http://host:port`` or
    ``host:port``; perf_analyzer takes no scheme): ``protocol`` "http" or "grpc",
    concurrency levels ``concurrency[0]`` to ``concurrency[1]``, time windows of
    ``measurement_ms``, zero-filled inputs by default (random float data can hold NaN or
    Inf, which servekit rejects with 400), the CSV report to ``csv_path``."""
    host = url.split("://", 1)[-1].rstrip("/")
    args = [
        "-m",
        model,
        "-u",
        host,
        "-i",
        protocol,
        "--concurrency-range",
        f"{concurrency[0]}:{concurrency[1]}",
        "--measurement-mode",
        "time_windows",
        "--measurement-interval",
        str(measurement_ms),
        "--input-data",
        input_data,
    ]
    if csv_path is not None:
        args += ["-f", str(csv_path)]
    return [*args, *extra]


def parse_perf_csv(source: Path | str) -> list[dict[str, float | str]]:
    """The rows of perf_analyzer's ``-f`` report (a path, or the text itself), one per
    load level, as {column: value}: numbers as floats (latencies and times in
    microseconds), anything else kept as text. perf_analyzer writes its rows in order of
    throughput; they come back ordered by the first column (``Concurrency`` or
    ``Request Rate``). Columns: ``Concurrency``/``Request Rate``, ``Inferences/Second``,
    ``Client Send``, the server-side ones when the server reports statistics
    (``Network+Server Send/Recv``, ``Server Queue``, ``Server Compute Input``,
    ``Server Compute Infer``, ``Server Compute Output``), ``Client Recv``,
    ``p50 latency`` .. ``p99 latency``, and with ``--verbose-csv`` a few more."""
    text = source.read_text() if isinstance(source, Path) else source
    reader = csv.DictReader(io.StringIO(text))
    rows: list[dict[str, float | str]] = []
    for raw in reader:
        row: dict[str, float | str] = {}
        for column, value in raw.items():
            if column is None:  # more values than the header has columns
                raise ValueError(f"perf_analyzer CSV row longer than its header: {raw}")
            try:
                row[column] = float(value)
            except (TypeError, ValueError):
                row[column] = value
        if any(v != "" for v in row.values()):
            rows.append(row)
    if not rows:
        return rows
    first = next(iter(rows[0]))
    return sorted(rows, key=lambda r: r[first] if isinstance(r[first], float) else 0.0)
