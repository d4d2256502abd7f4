"""How an HTTP request enters the app: servekit's own layers, then a dispatcher.

::

    ServekitAPI (what uvicorn runs)
      lifespan → FastAPI's (models load, drain)
      http     → HttpMetricsMiddleware → (CORS) → (ModelAccess) → BodySizeLimit
                   → Dispatcher ─┬─ the four inference POSTs → InferenceRouter
                                 └─ everything else          → FastAPI

servekit's middleware is pure ASGI and wraps the dispatcher, so every request meets the
same instances (one metrics series per route template, one in-flight count). FastAPI
declares every route, inference included (OpenAPI, Swagger UI, 405 to other methods),
and serves all but the inference POSTs. Nothing here reads a private attribute of
FastAPI or Starlette: ``ServekitAPI`` overrides the ASGI entry of a FastAPI subclass,
and hands requests back to FastAPI through that entry.

FastAPI's native OpenTelemetry (FastAPI >= 0.160) records the requests it serves when
a provider is set. OpenTelemetry's API cannot say whether one is, so FastAPI is asked,
through its public ``get_telemetry_data()``, on inference requests it serves:
``NativeTelemetryWatch`` sends them to FastAPI while it records them, and otherwise one
request every ``RECHECK_S`` to ask again (a provider set later applies within that).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from servekit.server.inference import InferenceRouter

try:  # FastAPI >= 0.160
    from fastapi.telemetry import get_telemetry_data
except ImportError:  # no native telemetry: nothing to record inference requests
    get_telemetry_data = None  # type: ignore[assignment]

RECHECK_S = 1.0


class NativeTelemetryWatch:
    """Whether FastAPI's native telemetry records inference requests, as FastAPI says."""

    def __init__(
        self, recheck_s: float = RECHECK_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.available = get_telemetry_data is not None
        self.recheck_s = recheck_s
        self.clock = clock
        self.recording = False  # FastAPI recorded the last inference request it served
        self._next_probe = -float("inf")

    def to_fastapi(self) -> bool:
        """Whether this inference request goes to FastAPI: while FastAPI records them,
        and once every ``recheck_s`` to find out."""
        if self.recording:
            return True
        if not self.available:
            return False
        now = self.clock()
        if now < self._next_probe:
            return False
        self._next_probe = now + self.recheck_s
        return True

    def observe(self) -> None:
        """Called by an inference endpoint that FastAPI runs, within its request."""
        if get_telemetry_data is not None:
            self.recording = get_telemetry_data() is not None


class Dispatcher:
    """The innermost of servekit's layers: POSTs to the inference routes go to
    servekit's router (or to FastAPI while its telemetry records them), every other
    request to FastAPI."""

    def __init__(
        self, inference: InferenceRouter, fastapi: ASGIApp, telemetry: NativeTelemetryWatch
    ) -> None:
        self.inference = inference
        self.fastapi = fastapi
        self.telemetry = telemetry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            found = self.inference.match(scope)
            if found is not None and not self.telemetry.to_fastapi():
                await self.inference.serve(*found, scope, receive, send)
                return
        await self.fastapi(scope, receive, send)


class ServekitAPI(FastAPI):
    """The app uvicorn runs: FastAPI (routes, documentation, lifespan), entered by HTTP
    requests through servekit's own layers (``edge``, set by ``create_app``)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.edge: ASGIApp | None = None  # None: FastAPI's own entry, as a plain FastAPI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        edge = self.edge
        if edge is None or scope["type"] != "http":  # the lifespan is FastAPI's
            await super().__call__(scope, receive, send)
            return
        if self.root_path:  # as FastAPI does: the edge matches paths below it
            scope["root_path"] = self.root_path
        scope["app"] = self  # as Starlette does: route names for the metrics' labels
        await edge(scope, receive, send)

    async def fastapi(self, scope: Scope, receive: Receive, send: Send) -> None:
        """FastAPI's own handling of a request: its telemetry, middleware and router."""
        await super().__call__(scope, receive, send)
