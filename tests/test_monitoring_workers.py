"""`servekit serve --workers 2`: one scrape reports the sum over both worker processes,
and a worker that dies leaves no live gauges behind."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from conftest import ServerProcess, digits_rows
from monitoring_support import make_model_repo

pytestmark = pytest.mark.timeout(120)

ROW = digits_rows(1).tolist()
DIGITS = {"model": "digits", "version": "1"}


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """One GET /metrics on a fresh connection, parsed by prometheus_client's parser."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(
    metrics: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return metrics.get((name, frozenset(labels.items())), float("nan"))


def per_process(metrics_dir: Path, name: str, **labels: str) -> dict[int, float]:
    """A counter's value in each process's own file (what that worker alone counted)."""
    out = {}
    for path in metrics_dir.glob("counter_*.db"):
        pid = int(path.stem.split("_")[1])
        for family in MultiProcessCollector.merge([str(path)], accumulate=True):
            for s in family.samples:
                if s.name == name and s.labels == labels:
                    out[pid] = s.value
    return out


def predict_fresh_connection(url: str) -> int:
    r = httpx.post(f"{url}/v1/models/digits:predict", json={"instances": ROW}, timeout=30)
    return r.status_code


@pytest.fixture()
def workers(tmp_path: Path) -> Iterator[tuple[ServerProcess, Path]]:
    repo = make_model_repo(tmp_path / "repo", {"digits": "max_batch_size: 32\n"})
    tmp = tmp_path / "tmp"  # the CLI makes its metrics folder here (tempfile honours TMPDIR)
    tmp.mkdir()
    server = ServerProcess(str(repo), "--workers", "2", env={"TMPDIR": str(tmp)}, name="workers")
    try:
        server.wait_ready()
        (metrics_dir,) = tmp.glob("servekit-metrics-*")
        yield server, metrics_dir
    finally:
        code = server.stop()
    assert code == 0, server.log()
    assert not list(tmp.iterdir()), "the metrics folder outlived the server"


def test_one_scrape_reports_the_sum_of_both_workers(workers: tuple[ServerProcess, Path]) -> None:
    server, metrics_dir = workers
    sent = 0
    with ThreadPoolExecutor(8) as pool:
        # Fresh connections from 8 threads: the kernel hands them to either worker.
        for _ in range(10):
            codes = list(pool.map(predict_fresh_connection, [server.url] * 24))
            assert codes == [200] * len(codes)
            sent += len(codes)
            by_worker = per_process(metrics_dir, "servekit_inferences_total", **DIGITS)
            if len(by_worker) == 2 and all(by_worker.values()):
                break
    by_worker = per_process(metrics_dir, "servekit_inferences_total", **DIGITS)
    assert len(by_worker) == 2 and all(by_worker.values()), (
        f"one worker did everything: {by_worker}"
    )
    assert sum(by_worker.values()) == sent

    # Whichever worker answers a scrape, it reports the sum over both.
    for _ in range(12):
        m = scrape(server.url)
        assert sample(m, "servekit_inferences_total", **DIGITS) == sent
        assert sample(m, "servekit_requests_total", **DIGITS, outcome="success", reason="") == sent
        assert sample(m, "servekit_executions_total", **DIGITS) <= sent
        assert sample(m, "servekit_request_duration_seconds_count", **DIGITS) == sent
        # Live gauges: the sum over the two processes alive now.
        assert sample(m, "servekit_instances", **DIGITS) == 2
        assert sample(m, "servekit_queue_capacity", **DIGITS) == 2 * 1024
        assert sample(m, "servekit_model_state", **DIGITS, state="READY") == 2
        assert sample(m, "servekit_busy_instances", **DIGITS) == 0
        handler = "/v1/models/{model_name}:predict"
        assert (
            sample(m, "http_requests_total", handler=handler, method="POST", status="200") == sent
        )


def test_a_killed_worker_leaves_no_live_gauges(workers: tuple[ServerProcess, Path]) -> None:
    server, metrics_dir = workers
    # Ready means one worker answers; the other may still be loading its model (seconds
    # on a busy machine) and writes its gauges once it has.
    deadline, sent = time.monotonic() + 60, 0
    while True:
        assert predict_fresh_connection(server.url) == 200
        sent += 1
        pids = {int(p.stem.split("_")[-1]) for p in metrics_dir.glob("gauge_livesum_*.db")}
        if len(pids) == 2:
            break
        assert time.monotonic() < deadline, f"one worker's gauges only: {pids}\n{server.log()}"
        time.sleep(0.1)
    victim = min(pids)
    os.kill(victim, signal.SIGKILL)  # no shutdown: it cannot clean up after itself

    # uvicorn starts a replacement; until then and after, scrapes add up live workers only.
    deadline = time.monotonic() + 60
    while True:
        m = scrape(server.url)
        live = {int(p.stem.split("_")[-1]) for p in metrics_dir.glob("gauge_livesum_*.db")}
        if (
            victim not in live
            and len(live) == 2
            and sample(m, "servekit_model_state", **DIGITS, state="READY") == 2
        ):
            break
        assert sample(m, "servekit_instances", **DIGITS) <= 2
        assert time.monotonic() < deadline, f"no clean replacement: {live}\n{server.log()}"
        time.sleep(0.2)
    for _ in range(6):
        m = scrape(server.url)
        assert sample(m, "servekit_instances", **DIGITS) == 2  # not 3: the dead one's is gone
        assert sample(m, "servekit_model_state", **DIGITS, state="READY") == 2
        # Counters keep what the dead worker counted: totals never go back.
        assert sample(m, "servekit_inferences_total", **DIGITS) == sent
