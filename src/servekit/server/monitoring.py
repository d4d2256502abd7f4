"""``/metrics`` and the HTTP metrics, for one server process or several.

HTTP metrics come from prometheus-fastapi-instrumentator's middleware: requests by
method, status and handler, latency histograms by handler, request and response sizes,
and requests in progress. The handler label is the route's path template
(``/v1/models/{model_name}:predict``), never a raw URL: requests that match no route
are all counted as ``handler="none"``, so random URLs cannot create new series.

With ``PROMETHEUS_MULTIPROC_DIR`` set (``servekit serve --workers N`` sets it to a fresh
temporary folder before the workers start), every process writes its values to files
there and ``/metrics`` adds up the files of all of them, whichever worker answers the
scrape. Live gauges of a worker that has exited are removed: at its own shutdown, and,
for a worker that died without one, at the next scrape by a live worker.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import prometheus_client
from fastapi import FastAPI, Request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Gauge,
    ProcessCollector,
    generate_latest,
    multiprocess,
)
from prometheus_fastapi_instrumentator import metrics as http_metrics
from prometheus_fastapi_instrumentator.middleware import PrometheusInstrumentatorMiddleware
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount
from starlette.types import ASGIApp

from servekit.metrics import LATENCY_BUCKETS, Metrics

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
METRICS_PATH = "/metrics"
UNMATCHED = "none"  # the instrumentator's handler label for requests no route matches
RESOLVED_HANDLERS_KEPT = 1024  # URLs whose handler label is remembered

# Files of live gauges: one per process, named after its pid.
_LIVE_GAUGE_FILE = re.compile(r"^gauge_live[a-z]*_(\d+)\.db$")


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


@contextlib.contextmanager
def multiprocess_metrics() -> Iterator[str]:
    """A fresh metrics folder for the worker processes about to start; removed after.

    Set before the workers start, so each imports prometheus_client in multiprocess
    mode. A fresh folder, never a reused one: files left by an earlier run would add
    their old counts to this one's.
    """
    path = tempfile.mkdtemp(prefix="servekit-metrics-")
    previous = os.environ.get(MULTIPROC_ENV)
    os.environ[MULTIPROC_ENV] = path
    try:
        yield path
    finally:
        if previous is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = previous
        shutil.rmtree(path, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_dead_processes(path: str) -> list[int]:
    """Drop the live gauges of processes that are gone (killed workers never say so)."""
    dead: set[int] = set()
    for name in os.listdir(path):
        m = _LIVE_GAUGE_FILE.match(name)
        if m and not _pid_alive(int(m.group(1))):
            dead.add(int(m.group(1)))
    for pid in dead:
        multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]
    return sorted(dead)


_CONVERTOR = re.compile(r"\{(\w+):\w+\}")


def template(path: str) -> str:
    """A route path as a label: ``{model_name:segment}`` → ``{model_name}``."""
    return _CONVERTOR.sub(r"{\1}", path)


def route_templates(routes: Iterable[BaseRoute], prefix: str = "") -> set[str]:
    """Every path template the app serves, routers and mounts flattened."""
    return {template(p) for p in _route_paths(routes, prefix)}


def _route_paths(routes: Iterable[BaseRoute], prefix: str = "") -> set[str]:
    out: set[str] = set()
    for route in routes:
        contexts = getattr(route, "effective_route_contexts", None)
        if callable(contexts):  # FastAPI's included routers
            for ctx in contexts():
                inner = getattr(ctx, "starlette_route", None) or ctx
                if isinstance(inner, Mount):
                    out |= _route_paths(inner.routes, prefix + inner.path)
                    out.add(prefix + inner.path)
                elif isinstance(path := getattr(inner, "path", None), str):
                    out.add(prefix + path)
        elif isinstance(route, Mount):
            out |= _route_paths(route.routes, prefix + route.path)
            out.add(prefix + route.path)
        elif isinstance(path := getattr(route, "path", None), str):
            out.add(prefix + path)
    return out


class HttpMetricsMiddleware(PrometheusInstrumentatorMiddleware):
    """The instrumentator's middleware with two fixes for a server open to any URL.

    - Handler labels are only ever route templates or ``none``. The instrumentator
      labels a request that would be redirected to add or drop a trailing slash
      (``/v1/models/<anything>/``) with its raw path: one new series per URL.
    - Requests in progress go to the app's registry (the instrumentator puts that
      gauge in the global default registry, which ``/metrics`` does not serve).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        registry: CollectorRegistry,
        instrumentations: Sequence[Callable[[http_metrics.Info], None]],
        inprogress: Gauge,
        excluded_handlers: Sequence[str] = (),
    ) -> None:
        super().__init__(
            app,
            registry=registry,
            instrumentations=instrumentations,
            excluded_handlers=excluded_handlers,
            should_group_status_codes=False,
            should_group_untemplated=True,
            should_instrument_requests_inprogress=False,
        )
        self.should_instrument_requests_inprogress = True
        self.inprogress_labels = True
        self.inprogress = inprogress
        self._templates: set[str] = set()
        self._routes_seen = -1
        # Handlers already resolved, by (method, root path, path). Resolving matches the
        # request against every route, a second time after the router: ~15% of the
        # CPU of a small predict request. Bounded: paths are whatever clients send.
        self._resolved: dict[tuple[str, str, str], tuple[str, bool]] = {}

    def _get_handler(self, request: Request) -> tuple[str, bool]:
        routes = request.app.routes
        if len(routes) != self._routes_seen:
            self._templates = route_templates(routes)
            self._routes_seen = len(routes)
            self._resolved.clear()
        scope = request.scope
        key = (scope["method"], scope.get("root_path", ""), scope["path"])
        found = self._resolved.get(key)
        if found is None:
            if len(self._resolved) >= RESOLVED_HANDLERS_KEPT:
                self._resolved.clear()  # many distinct URLs: start again, never grow
            found = self._resolved[key] = self._resolve_handler(request)
        return found

    def _resolve_handler(self, request: Request) -> tuple[str, bool]:
        handler, templated = super()._get_handler(request)
        if not templated:
            return UNMATCHED, False
        handler = template(handler)
        if handler not in self._templates:
            return UNMATCHED, False
        return handler, True


def _metrics_response(registry: CollectorRegistry) -> Response:
    return Response(content=generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def scrape_registry(own: CollectorRegistry | None) -> CollectorRegistry:
    """What a scrape reads: this process's registry, or with several worker processes
    the sum of all their files."""
    path = multiprocess_dir()
    if path is None:
        assert own is not None, "single process: pass the app's registry"
        return own
    remove_dead_processes(path)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path)  # type: ignore[no-untyped-call]
    return registry


def serve_metrics_port(host: str, port: int, own: CollectorRegistry | None) -> ThreadingHTTPServer:
    """``GET /metrics`` alone on its own port, in a daemon thread (keeps metrics off the
    API's port, e.g. to expose them only to the cluster's Prometheus)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] != METRICS_PATH:
                self.send_error(404)
                return
            body = generate_latest(scrape_registry(own))
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE_LATEST)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # scrapes every few seconds would flood the log

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics-port", daemon=True).start()
    return server


def install(app: FastAPI, metrics: Metrics, *, serve_route: bool = True) -> None:
    """HTTP metrics middleware, the ``/metrics`` route (unless metrics have their own
    port) and multiprocess housekeeping."""
    # `_created` samples double the series count and no dashboard here uses them.
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    multiproc = multiprocess_dir()
    if multiproc is None:
        # One process: its own CPU, memory and file descriptors. (With several, each
        # scrape would describe whichever worker answered it.)
        ProcessCollector(registry=metrics.registry)

    instrumentation = http_metrics.default(
        latency_highr_buckets=LATENCY_BUCKETS,
        latency_lowr_buckets=LATENCY_BUCKETS,
        registry=metrics.registry,
    )
    # Made here, not in the middleware: Starlette may build its middleware stack again.
    inprogress = Gauge(
        "http_requests_inprogress",
        "HTTP requests in progress, by method and handler.",
        ("method", "handler"),
        registry=metrics.registry,
        multiprocess_mode="livesum",
    )
    app.add_middleware(
        HttpMetricsMiddleware,
        registry=metrics.registry,
        inprogress=inprogress,
        excluded_handlers=[f"^{re.escape(METRICS_PATH)}$"],
        instrumentations=[instrumentation] if instrumentation else [],
    )

    if not serve_route:
        return  # /metrics is served on its own port (serve_metrics_port)

    @app.get(
        METRICS_PATH,
        tags=["Monitoring"],
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}, "description": "Metrics, text format"}},
    )
    def prometheus_metrics() -> Response:
        """Every servekit and HTTP metric in Prometheus' text format; with several
        worker processes, the sum over all of them."""
        return _metrics_response(scrape_registry(metrics.registry))

    if multiproc is not None:
        _mark_dead_at_shutdown(app)


def _mark_dead_at_shutdown(app: FastAPI) -> None:
    """Wrap the app's lifespan: once this worker has shut down, its live gauges go."""
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a: Any) -> AsyncIterator[Any]:
        try:
            async with inner(a) as state:
                yield state
        finally:
            path = multiprocess_dir()
            if path is not None:
                multiprocess.mark_process_dead(os.getpid(), path)  # type: ignore[no-untyped-call]

    app.router.lifespan_context = lifespan
