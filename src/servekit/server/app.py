"""The FastAPI app factory. The lifespan owns model loading and the graceful drain."""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from prometheus_fastapi_instrumentator import Instrumentator

from servekit import __version__
from servekit.config import ServerSettings
from servekit.metrics import Metrics
from servekit.repository import ModelRegistry
from servekit.server import errors, examples, health, v1
from servekit.server.limits import BodySizeLimit

log = logging.getLogger(__name__)

DESCRIPTION = """
Serves TFLite models with dynamic batching. Speaks the **TensorFlow Serving REST API**
(`/v1/...`) and the **Open Inference Protocol v2** health endpoints (`/v2/health/...`).

Every error is `{"error": "..."}` naming what was wrong. A full queue answers 503 with
`Retry-After`. Prometheus metrics at `/metrics`.
"""


def demo_model_path() -> Path:
    """The bundled demo: a digits classifier trained by scripts/make_models.py."""
    return Path(str(resources.files("servekit.demo") / "digits.tflite"))


def create_app(settings: ServerSettings | None = None) -> FastAPI:
    settings = settings or ServerSettings()
    metrics = Metrics()
    registry = ModelRegistry(metrics, settings.default_model_config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Worker threads wait for the GIL at most this long after invoke returns.
        sys.setswitchinterval(settings.switch_interval_s)
        await registry.load_path(settings.model_path or demo_model_path())
        yield
        app.state.draining = True
        await registry.close(settings.drain_timeout_s)

    app = FastAPI(
        title="servekit",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.registry = registry
    app.state.metrics = metrics
    app.state.draining = False

    errors.install(app)
    app.include_router(health.build_router())
    app.include_router(v1.build_router())
    Instrumentator(
        registry=metrics.registry,
        excluded_handlers=["/metrics"],
        should_group_status_codes=False,
    ).instrument(app).expose(app, endpoint="/metrics", tags=["Monitoring"])
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)

    def openapi() -> dict[str, Any]:
        # Not cached: the examples follow the models loaded right now.
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        return examples.inject(schema, registry)

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def create_app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory` and for each of several worker processes."""
    return create_app(ServerSettings())
