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

import asyncio
import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from servekit.server.encoding import send_error
from servekit.server.errors import LOGGED
from servekit.server.httpserver import REFUSED, HttpLimits, head_refusal
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


def _one_line(e: BaseException) -> str:
    """An exception as one line: servekit's own errors as their message, others with
    their type (a start-up failure that is not servekit's is a bug worth naming)."""
    from servekit.errors import ServekitError

    text = " ".join(str(e).split()) or type(e).__name__
    return text if isinstance(e, ServekitError) else f"{type(e).__name__}: {text}"


class ServekitAPI(FastAPI):
    """The app uvicorn runs: FastAPI (routes, documentation, lifespan), entered by HTTP
    requests through servekit's own layers (``edge``, set by ``create_app``)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.edge: ASGIApp | None = None  # None: FastAPI's own entry, as a plain FastAPI
        # The request-head limits, checked here whatever HTTP parser runs (httptools
        # refuses earlier, in server/httpserver.py; h11 bounds only the head's bytes).
        self.limits = HttpLimits()
        # Why start-up failed, in one line (the CLI prints it). ``report_startup_failure``
        # off: the server is not told (the CLI says it instead, once).
        self.startup_error: str | None = None
        self.report_startup_failure = True
        self.on_started: Callable[[], None] | None = None  # called once models are loaded

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        edge = self.edge
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if edge is None or scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        refused = scope.get("extensions", {}).get(REFUSED)
        if refused is not None:  # by the HTTP server (server/httpserver.py)
            await send_error(
                send, 503, refused, [(b"retry-after", b"1"), (b"connection", b"close")]
            )
            return
        refusal = head_refusal(scope, self.limits)
        if refusal is not None:
            await send_error(send, *refusal)
            return
        if self.root_path:  # as FastAPI does: the edge matches paths below it
            scope["root_path"] = self.root_path
        scope["app"] = self  # as Starlette does: route names for the metrics' labels
        started = False

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await edge(scope, receive, tracked_send)
        except asyncio.CancelledError:
            # The server gave up on this request: at shutdown, uvicorn cancels what
            # the drain timeout cut. Its result, if any, is lost: say so with a 503
            # the client may retry (elsewhere), not a 500 and a traceback.
            if started:
                raise
            await send_error(
                send,
                503,
                "server shutting down: the request was stopped before it finished",
                [(b"retry-after", b"1"), (b"connection", b"close")],
            )
        except Exception as e:
            # Starlette answers an unexpected exception through servekit's handler (which
            # logs it) and raises it again for the server, which would log it once more.
            if started and getattr(e, LOGGED, False):
                return
            raise

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """FastAPI's lifespan, but a failed start-up is reported in one line: Starlette
        sends the server a whole traceback, which uvicorn prints as an error."""
        failed = False

        async def one_line_failure(message: Message) -> None:
            nonlocal failed
            if message["type"] == "lifespan.startup.failed":
                failed = True  # sent below, once the exception is known
                return
            if message["type"] == "lifespan.startup.complete" and self.on_started is not None:
                self.on_started()
            await send(message)

        try:
            await super().__call__(scope, receive, one_line_failure)
        except BaseException as e:
            if not failed:
                raise
            self.startup_error = _one_line(e)
            message = self.startup_error if self.report_startup_failure else ""
            await send({"type": "lifespan.startup.failed", "message": message})
            raise

    async def fastapi(self, scope: Scope, receive: Receive, send: Send) -> None:
        """FastAPI's own handling of a request: its telemetry, middleware and router."""
        await super().__call__(scope, receive, send)
