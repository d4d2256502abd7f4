"""FastAPI's native OpenTelemetry tracing still sees inference requests.

Predict and infer requests are served by servekit's own router (server/edge.py) unless
FastAPI's native telemetry records them: then they go through FastAPI and get its spans.
This runs the app in-process (the tracer provider is a process global) with a real
OpenTelemetry tracer provider that records the spans FastAPI starts.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.util._once import Once

from conftest import digits_rows
from servekit.config import ServerSettings
from servekit.server import edge
from servekit.server.app import create_app

PREDICT = "/v1/models/digits:predict"
INFER = "/v2/models/digits/infer"


class RecordingTracer(trace.NoOpTracer):
    """Records each span FastAPI starts as (name, URL path or function)."""

    def __init__(self, spans: list[tuple[str, str]]) -> None:
        self.spans = spans

    def start_span(self, name: str, *args: Any, **kwargs: Any) -> trace.Span:
        attributes: Mapping[str, Any] = kwargs.get("attributes") or {}
        where = attributes.get("url.path") or attributes.get("code.function.name", "")
        self.spans.append((name, str(where).rsplit(".", 1)[-1]))
        return trace.INVALID_SPAN


class RecordingProvider(trace.TracerProvider):
    def __init__(self) -> None:
        self.spans: list[tuple[str, str]] = []

    def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
        return RecordingTracer(self.spans)


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The app runs in this process: leave it as it was. OpenTelemetry's provider is set
    once per process, and the app's lifespan sets the switch interval and GC thresholds."""
    for key in [k for k in os.environ if k.startswith("SERVEKIT_")]:
        monkeypatch.delenv(key)
    interval, thresholds = sys.getswitchinterval(), gc.get_threshold()
    yield
    sys.setswitchinterval(interval)
    gc.set_threshold(*thresholds)
    trace._TRACER_PROVIDER = None
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._PROXY_TRACER_PROVIDER = trace.ProxyTracerProvider()


@asynccontextmanager
async def served(clock: Clock | None = None) -> AsyncIterator[httpx.AsyncClient]:
    """The demo app, started and stopped by its own lifespan, and a client for it;
    ``clock``: the one its telemetry watch reads."""
    if edge.get_telemetry_data is None:
        pytest.skip("FastAPI < 0.160 has no native telemetry")
    app = create_app(ServerSettings())
    if clock is not None:
        app.state.native_telemetry.clock = clock
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://servekit") as client,
    ):
        yield client


async def _send(client: httpx.AsyncClient, rows: Sequence[Any]) -> None:
    r = await client.post(PREDICT, json={"instances": rows})
    assert r.status_code == 200, r.text
    body = {"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": rows}]}
    r = await client.post(INFER, json=body)
    assert r.status_code == 200, r.text


# FastAPI's own spans for the two inference requests, as for any route: the request's,
# then its endpoint's.
SPANS = [
    ("POST", PREDICT),
    ("fastapi.dependencies", "predict"),
    ("fastapi.endpoint", "predict"),
    ("POST", INFER),
    ("fastapi.dependencies", "infer"),
    ("fastapi.endpoint", "infer"),
]


async def test_inference_is_traced_with_a_provider_set_at_start() -> None:
    provider = RecordingProvider()
    trace.set_tracer_provider(provider)
    async with served() as client:
        await _send(client, digits_rows(1).tolist())
    assert provider.spans == SPANS


async def test_a_provider_set_later_applies_within_the_recheck_interval() -> None:
    rows = digits_rows(1).tolist()
    provider = RecordingProvider()
    clock = Clock()
    async with served(clock) as client:
        await _send(client, rows)  # FastAPI is asked once (not recording), then not for a while
        trace.set_tracer_provider(provider)
        await _send(client, rows)
        assert provider.spans == []
        clock.now += edge.RECHECK_S
        await _send(client, rows)
        assert provider.spans == SPANS
