"""FastAPI's native OpenTelemetry tracing still sees inference requests.

Predict and infer requests skip FastAPI's layers (server/fastpath.py) unless its native
telemetry is on: then they go through FastAPI and get its server span. This runs the
app in-process (the tracer provider is a process global) with a real OpenTelemetry
tracer provider that records the spans FastAPI starts.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.util._once import Once

from conftest import digits_rows
from servekit.config import ServerSettings
from servekit.server import fastpath
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


@pytest.fixture()
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(fastpath, "_clock", c)
    return c


@pytest.fixture()
def unset_provider() -> Iterator[None]:
    """OpenTelemetry sets its global provider once per process: undo it afterwards."""
    yield
    trace._TRACER_PROVIDER = None
    trace._TRACER_PROVIDER_SET_ONCE = Once()


async def _send(client: httpx.AsyncClient, rows: Sequence[Any]) -> None:
    r = await client.post(PREDICT, json={"instances": rows})
    assert r.status_code == 200, r.text
    body = {"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": rows}]}
    r = await client.post(INFER, json=body)
    assert r.status_code == 200, r.text


@pytest.mark.usefixtures("unset_provider")
async def test_inference_is_traced_once_a_provider_is_set(clock: Clock) -> None:
    rows = digits_rows(1).tolist()
    provider = RecordingProvider()
    app = create_app(ServerSettings())
    assert hasattr(app, "_native_telemetry"), "this FastAPI has no native telemetry"
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://servekit") as client,
    ):
        await _send(client, rows)
        assert provider.spans == []  # no provider anywhere yet
        trace.set_tracer_provider(provider)
        await _send(client, rows)
        # Still the direct path: the answer is kept for TELEMETRY_RECHECK_S.
        assert provider.spans == []
        clock.now += fastpath.TELEMETRY_RECHECK_S
        await _send(client, rows)
        # FastAPI's own spans, as for any route: the request's, then its endpoint's.
        assert provider.spans == [
            ("POST", PREDICT),
            ("fastapi.dependencies", "predict"),
            ("fastapi.endpoint", "predict"),
            ("POST", INFER),
            ("fastapi.dependencies", "infer"),
            ("fastapi.endpoint", "infer"),
        ]
