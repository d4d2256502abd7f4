"""The FastAPI app factory. The lifespan owns model loading and the graceful drain."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from starlette.types import ASGIApp

from servekit import __version__
from servekit.config import ServerSettings
from servekit.dataplane import DataPlane
from servekit.grpc.server import GrpcServer
from servekit.metrics import Metrics, model_statistics
from servekit.repository import ModelRegistry
from servekit.server import admin, docs, errors, examples, health, monitoring, v1, v2
from servekit.server.edge import Dispatcher, NativeTelemetryWatch, ServekitAPI
from servekit.server.httpserver import HttpLimits
from servekit.server.inference import InferenceRouter
from servekit.server.limits import BodySizeLimit
from servekit.server.security import ModelAccess, declare_api_keys

log = logging.getLogger(__name__)

# The garbage collector's generation thresholds (CPython's default: 700, 10, 10).
# Objects of requests in flight outlive 700 allocations, get promoted, and make the
# collector walk the whole heap every few hundred requests (~50 ms on the event loop).
# A young generation of 20k lets them die young: measured on a small model at 64
# concurrent requests, +30% requests/s and about a third of the p99.
GC_THRESHOLDS = (20_000, 20, 20)

DESCRIPTION = """
Serves TFLite models with dynamic batching. Speaks the **TensorFlow Serving REST API**
(`/v1/...`) and the **Open Inference Protocol v2** (`/v2/...`, KServe / Triton: JSON and
the binary tensor extension), with Triton's model-repository extension for management.

Every error is `{"error": "..."}` naming what was wrong. A full queue answers 503 with
`Retry-After`. Prometheus metrics at `/metrics`.
"""


def demo_model_path() -> Path:
    """The bundled demo: a digits classifier trained by scripts/make_models.py."""
    return Path(str(resources.files("servekit.demo") / "digits.tflite"))


def create_app(settings: ServerSettings | None = None) -> ServekitAPI:
    settings = settings or ServerSettings()
    metrics = Metrics()
    registry = ModelRegistry(
        metrics,
        settings.default_model_config,
        drain_timeout_s=settings.drain_timeout_s,
        strict_readiness=settings.strict_readiness,
        exit_on_error=settings.exit_on_error,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Worker threads wait for the GIL at most this long after invoke returns.
        sys.setswitchinterval(settings.switch_interval_s)
        gc.set_threshold(*GC_THRESHOLDS)
        metrics_server = None
        if settings.metrics_port is not None and monitoring.multiprocess_dir() is None:
            # One process: its own port. (With several workers the CLI's parent serves it.)
            metrics_server = monitoring.serve_metrics_port(
                settings.host, settings.metrics_port, metrics.registry
            )
        await registry.start(
            settings.model_path or demo_model_path(),
            load_models=settings.load_models,
            mode=settings.model_control_mode,
        )
        poller = None
        if settings.model_control_mode == "poll" and registry.root is not None:
            poller = asyncio.create_task(registry.poll_forever(settings.poll_interval_s))
        grpc_server = GrpcServer(
            plane,
            settings,
            metrics,
            lambda: bool(app.state.draining),
            several_processes=monitoring.multiprocess_dir() is not None,
        )
        try:
            await grpc_server.start()
        except BaseException:
            await registry.close(0)
            raise
        app.state.grpc_ports = grpc_server.ports
        yield
        app.state.draining = True
        # New calls are refused from here; those in flight get the drain timeout.
        await grpc_server.stop(settings.drain_timeout_s)
        if poller is not None:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
        await registry.close(settings.drain_timeout_s)
        if metrics_server is not None:
            await asyncio.to_thread(metrics_server.shutdown)
            metrics_server.server_close()

    app = ServekitAPI(
        title="servekit",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # docs.install serves /docs and /redoc from bundled assets
        redoc_url=None,
    )
    plane = DataPlane(
        registry,
        lambda versions: model_statistics(monitoring.scrape_registry(metrics.registry), versions),
    )
    telemetry = NativeTelemetryWatch()
    app.state.settings = settings
    app.state.registry = registry
    app.state.dataplane = plane
    app.state.native_telemetry = telemetry
    app.state.metrics = metrics
    app.state.draining = False

    serve_metrics = settings.metrics_port is None  # else on its own port
    errors.install(app)
    docs.install(
        app,
        lambda name, api: (
            None
            if (model := examples.find_model(registry, name)) is None
            else examples.full_example(model, api)
        ),
        metrics_url=monitoring.METRICS_PATH if serve_metrics else None,
    )
    app.include_router(health.build_router())
    app.include_router(v1.build_router())
    app.include_router(v2.build_router())
    app.include_router(admin.build_router())
    monitoring.install(app, metrics, serve_route=serve_metrics)

    # servekit's HTTP layers (server/edge.py), innermost first. The dispatcher sends
    # the inference POSTs to servekit's router, everything else to FastAPI.
    router = InferenceRouter(
        [*v1.ROUTES, *v2.ROUTES], plane, settings.max_body_bytes, settings.max_json_bytes
    )
    edge: ASGIApp = Dispatcher(router, app.fastapi, telemetry)
    edge = BodySizeLimit(edge, max_bytes=settings.max_body_bytes)
    # With API keys, what names the models needs a key too, unless made public.
    guarded: set[str] = set()
    if settings.api_keys and not settings.docs_public:
        guarded |= {app.openapi_url or "", examples.EXAMPLES_URL + "/"} - {""}
    if settings.api_keys and serve_metrics and not settings.metrics_public:
        guarded.add(monitoring.METRICS_PATH)
    if settings.api_keys or settings.max_inflight_requests:  # nothing to do otherwise
        edge = ModelAccess(
            edge,
            api_keys=[k.get_secret_value().encode() for k in settings.api_keys],
            max_inflight=settings.max_inflight_requests,
            guarded_paths=frozenset(guarded),
        )
    if settings.cors_origins:  # off unless configured
        edge = CORSMiddleware(
            edge,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=[
                "Authorization",
                "X-API-Key",
                "Content-Type",
                "Inference-Header-Content-Length",
            ],
            expose_headers=["Inference-Header-Content-Length", "Retry-After"],
        )
    # HTTP metrics outermost, so they count the 413s of BodySizeLimit too.
    app.edge = monitoring.http_metrics(edge, metrics, status_label=settings.http_status_label)
    app.limits = HttpLimits.from_settings(settings)

    def openapi() -> dict[str, Any]:
        # Not cached: the examples follow the models loaded right now.
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        schema = examples.inject(_no_422(schema), registry)
        if settings.api_keys:  # so Swagger UI's "Authorize" can send a key
            schema = declare_api_keys(schema, frozenset(guarded))
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _no_422(schema: dict[str, Any]) -> dict[str, Any]:
    """FastAPI documents a 422 on every operation with parameters, but servekit answers
    validation errors with 400 {"error": ...} (server/errors.py): say so instead."""
    error_ref = {"$ref": "#/components/schemas/ErrorResponse"}
    for ops in schema.get("paths", {}).values():
        for op in ops.values():
            responses = op.get("responses", {})
            if responses.pop("422", None) is not None and "400" not in responses:
                responses["400"] = {
                    "description": "Bad input",
                    "content": {"application/json": {"schema": error_ref}},
                }
    components = schema.get("components", {}).get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    components.setdefault(
        "ErrorResponse",
        {
            "type": "object",
            "required": ["error"],
            "properties": {"error": {"type": "string", "title": "Error"}},
            "title": "ErrorResponse",
        },
    )
    return schema


def create_app_from_env() -> ServekitAPI:
    """Factory for `uvicorn --factory` and for each of several worker processes."""
    return create_app(ServerSettings())
