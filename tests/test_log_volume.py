"""Under overload the log says how many requests were refused, not one line for each.

A model's first 503 (or 504) is logged at once, in full; the ones after it within an
interval are counted and logged as one line per model and status when the interval
ends. The metrics carry the detail.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest

from conftest import MODELS
from servekit.config import ServerSettings
from servekit.errors import DeadlineExceeded, Overloaded
from servekit.server import errors
from servekit.server.app import create_app

LOGGER = errors.log.name
SLOW_ROW = np.linspace(-1, 1, 64).tolist()


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING
    ]


async def test_refusals_are_logged_once_then_counted_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    refusals = errors.RefusalLog(interval_s=0.2)
    full = Overloaded("queue full (8 requests waiting); retry later")
    late = DeadlineExceeded("deadline passed while queued")
    for _ in range(100):
        refusals.record("POST", "/v1/models/a:predict", 503, full)
    for _ in range(50):
        refusals.record("POST", "/v2/models/b/versions/3/infer", 503, full)
    for _ in range(3):
        refusals.record("POST", "/v2/models/a/infer", 504, late)
    # The first of each (model, status) at once, in full.
    assert lines(caplog) == [
        "POST /v1/models/a:predict -> 503: queue full (8 requests waiting); retry later",
        "POST /v2/models/b/versions/3/infer -> 503: queue full (8 requests waiting); retry later",
        "POST /v2/models/a/infer -> 504: deadline passed while queued",
    ]
    caplog.clear()
    await asyncio.sleep(0.35)
    assert sorted(lines(caplog)) == [
        "model 'a': 2 more requests answered 504 in the last 0.2 s "
        "(DeadlineExceeded: deadline passed while queued)",
        "model 'a': 99 more requests answered 503 in the last 0.2 s "
        "(Overloaded: queue full (8 requests waiting); retry later)",
        "model 'b': 49 more requests answered 503 in the last 0.2 s "
        "(Overloaded: queue full (8 requests waiting); retry later)",
    ]
    caplog.clear()
    refusals.record("POST", "/v1/models/a:predict", 503, full)  # still in a window
    await asyncio.sleep(0.5)
    assert lines(caplog) == [
        "model 'a': 1 more requests answered 503 in the last 0.2 s "
        "(Overloaded: queue full (8 requests waiting); retry later)"
    ]
    caplog.clear()
    # A quiet interval closed the window: the next refusal is logged at once again.
    refusals.record("POST", "/v1/models/a:predict", 503, full)
    assert lines(caplog) == [
        "POST /v1/models/a:predict -> 503: queue full (8 requests waiting); retry later"
    ]


async def test_a_window_of_a_closed_loop_does_not_silence_the_next_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    refusals = errors.RefusalLog(interval_s=60)
    full = Overloaded("queue full")

    async def refuse() -> None:
        refusals.record("POST", "/v1/models/a:predict", 503, full)

    await asyncio.get_running_loop().run_in_executor(None, lambda: asyncio.run(refuse()))
    await refuse()  # another loop: the first one's window ended with it
    assert len(lines(caplog)) == 2


async def test_a_real_overload_logs_a_few_lines(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow model with a queue of 2 and 300 requests at once: most are refused."""
    monkeypatch.setattr(errors.refusals, "interval_s", 0.5)
    repo = tmp_path / "repo"
    shutil.copytree(MODELS / "slow" / "slow", repo / "slow")
    (repo / "slow" / "config.yaml").write_text(
        "max_batch_size: 1\ninstances: 1\nmax_queue_size: 2\n"
    )
    app = create_app(ServerSettings(model_path=repo))
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://s", timeout=60) as c,
    ):
        rs = await asyncio.gather(
            *(c.post("/v1/models/slow:predict", json={"instances": [SLOW_ROW]}) for _ in range(300))
        )
        refused = sum(r.status_code == 503 for r in rs)
        assert refused > 100 and all(r.status_code in (200, 503) for r in rs)
        await asyncio.sleep(0.8)
        metrics = (await c.get("/metrics")).text
    logged = lines(caplog)
    assert 2 <= len(logged) <= 4, logged
    counted = [re.match(r"model 'slow': (\d+) more requests answered 503", m) for m in logged]
    assert logged[0].startswith("POST /v1/models/slow:predict -> 503: queue full")
    assert 1 + sum(int(m.group(1)) for m in counted if m) == refused, logged
    # The metrics have every one of them.
    m = re.search(
        r'^http_requests_total\{handler="/v1/models/\{model_name\}:predict",method="POST",'
        r'status="503"\} (\S+)$',
        metrics,
        re.MULTILINE,
    )
    assert m and float(m.group(1)) == refused
