"""``/metrics`` and the HTTP metrics, for one server process or several.

HTTP metrics are prometheus-fastapi-instrumentator's default set (requests by method,
status and handler, latency histograms by handler, request and response sizes) plus
requests in progress, recorded by a lean middleware of servekit's own. The handler
label is the route's path template (``/v1/models/{model_name}:predict``), never a raw
URL: requests that match no route are all counted as ``handler="none"``, so random URLs
cannot create new series.

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
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import prometheus_client
from fastapi import FastAPI
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    Summary,
    generate_latest,
    multiprocess,
)
from prometheus_fastapi_instrumentator.routing import get_route_name
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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


class HttpMetrics:
    """prometheus-fastapi-instrumentator's default HTTP metrics (same names, labels,
    help and types, so its dashboards work) plus requests in progress, in ``registry``.

    - ``http_requests_total`` (method, status, handler); ``status`` is the exact code
      ("503") or, with ``http_status_label: class``, its class ("5xx") as the
      instrumentator's ``should_group_status_codes`` (its default) writes it
    - ``http_request_size_bytes``, ``http_response_size_bytes`` (handler): summaries of
      the Content-Length headers
    - ``http_request_duration_highr_seconds`` (no labels) and
      ``http_request_duration_seconds`` (method, handler)
    - ``http_requests_inprogress`` (method, handler)
    """

    def __init__(self, registry: CollectorRegistry, buckets: Sequence[float]) -> None:
        self.total = Counter(
            "http_requests_total",
            "Total number of requests by method, status and handler.",
            ("method", "status", "handler"),
            registry=registry,
        )
        self.in_size = Summary(
            "http_request_size_bytes",
            "Content length of incoming requests by handler. Only value of header is "
            "respected. Otherwise ignored. No percentile calculated. ",
            ("handler",),
            registry=registry,
        )
        self.out_size = Summary(
            "http_response_size_bytes",
            "Content length of outgoing responses by handler. Only value of header is "
            "respected. Otherwise ignored. No percentile calculated. ",
            ("handler",),
            registry=registry,
        )
        self.latency_highr = Histogram(
            "http_request_duration_highr_seconds",
            "Latency with many buckets but no API specific labels. Made for more "
            "accurate percentile calculations. ",
            buckets=buckets,
            registry=registry,
        )
        self.latency = Histogram(
            "http_request_duration_seconds",
            "Latency with only few buckets by handler. Made to be only used if "
            "aggregation by handler is important. ",
            ("method", "handler"),
            buckets=buckets,
            registry=registry,
        )
        self.inprogress = Gauge(
            "http_requests_inprogress",
            "HTTP requests in progress, by method and handler.",
            ("method", "handler"),
            registry=registry,
            multiprocess_mode="livesum",
        )


@dataclass(slots=True)
class _Series:
    """The labelled children one (method, handler) writes to, looked up once."""

    inprogress: Any
    in_size: Any
    out_size: Any
    latency: Any
    handler: str
    total: dict[int, Any] = field(default_factory=dict)  # by status code


class HttpMetricsMiddleware:
    """Pure ASGI middleware recording ``HttpMetrics`` for every request.

    The handler label is only ever a route template or ``none``: resolved with the
    instrumentator's route matcher, and anything that is not one of the app's templates
    (an unmatched URL, or one the router would redirect to add or drop a trailing
    slash) is ``none``, so random URLs cannot create series. The label children are
    looked up once per (method, path): the instrumentator's own middleware builds a
    Request, a Response, an Info and a gather() per request and matches the routes a
    second time, about a fifth of the CPU of a small predict request (py-spy).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: HttpMetrics,
        excluded_handlers: Sequence[str] = (),
        status_class: bool = False,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.status_class = status_class
        self.excluded = [re.compile(p) for p in excluded_handlers]
        self._templates: set[str] = set()
        self._routes_seen = -1
        # By (method, root path, path); None for excluded handlers. Bounded: paths and
        # methods are whatever clients send.
        self._resolved: dict[tuple[str, str, str], _Series | None] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        series = self._series(scope)
        if series is None:
            await self.app(scope, receive, send)
            return
        status = 500  # if the app raises before it answers
        out_size = 0

        async def send_wrapper(message: Message) -> None:
            nonlocal status, out_size
            if message["type"] == "http.response.start":
                status = message["status"]
                out_size = _content_length(message.get("headers", ()))
            await send(message)

        series.inprogress.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            duration = time.perf_counter() - start
            series.inprogress.dec()
            total = series.total.get(status)
            if total is None:
                label = f"{status // 100}xx" if self.status_class else str(status)
                total = series.total[status] = self.metrics.total.labels(
                    scope["method"], label, series.handler
                )
            total.inc()
            series.in_size.observe(_content_length(scope.get("headers", ())))
            series.out_size.observe(out_size)
            self.metrics.latency_highr.observe(duration)
            series.latency.observe(duration)

    def _series(self, scope: Scope) -> _Series | None:
        app = scope.get("app")
        routes = getattr(app, "routes", ())
        if len(routes) != self._routes_seen:
            self._templates = route_templates(routes)
            self._routes_seen = len(routes)
            self._resolved.clear()
        key = (scope["method"], scope.get("root_path", ""), scope["path"])
        try:
            return self._resolved[key]
        except KeyError:
            pass
        if len(self._resolved) >= RESOLVED_HANDLERS_KEPT:
            self._resolved.clear()  # many distinct URLs: start again, never grow
        handler = self._handler(scope)
        found = None
        if not any(p.search(handler) for p in self.excluded):
            m, method = self.metrics, scope["method"]
            found = _Series(
                inprogress=m.inprogress.labels(method, handler),
                in_size=m.in_size.labels(handler),
                out_size=m.out_size.labels(handler),
                latency=m.latency.labels(method, handler),
                handler=handler,
            )
        self._resolved[key] = found
        return found

    def _handler(self, scope: Scope) -> str:
        request = Request(scope)
        name = get_route_name(request, should_include_root_path=False)
        if name is None:
            return UNMATCHED
        name = template(name)
        return name if name in self._templates else UNMATCHED


def _content_length(headers: Iterable[tuple[bytes, bytes]]) -> int:
    """The Content-Length of raw ASGI headers (a request's or a response's); 0 if absent
    or not a number."""
    for key, value in headers:
        if key.lower() == b"content-length":
            return int(value) if value.isdigit() else 0
    return 0


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


def http_metrics(
    app: ASGIApp, metrics: Metrics, *, status_label: str = "code"
) -> HttpMetricsMiddleware:
    """``app`` inside the HTTP metrics middleware (``/metrics`` itself not counted);
    ``status_label``: "code" ("503") or "class" ("5xx")."""
    return HttpMetricsMiddleware(
        app,
        metrics=HttpMetrics(metrics.registry, LATENCY_BUCKETS),
        excluded_handlers=[f"^{re.escape(METRICS_PATH)}$"],
        status_class=status_label == "class",
    )


def install(app: FastAPI, metrics: Metrics, *, serve_route: bool = True) -> None:
    """The ``/metrics`` route (unless metrics have their own port), this process's
    collector and multiprocess housekeeping. (The HTTP metrics: ``http_metrics``.)"""
    # `_created` samples double the series count and no dashboard here uses them.
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    multiproc = multiprocess_dir()
    if multiproc is None:
        # One process: its own CPU, memory and file descriptors. (With several, each
        # scrape would describe whichever worker answered it.)
        ProcessCollector(registry=metrics.registry)

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
