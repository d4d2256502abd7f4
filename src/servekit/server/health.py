"""Liveness and readiness (the V2 protocol's health endpoints, used by probes)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from servekit.dataplane import DataPlane
from servekit.server.encoding import json_response
from servekit.server.schemas import LiveResponse, ReadyResponse


def build_router() -> APIRouter:
    router = APIRouter(tags=["Health"])

    @router.get("/v2/health/live", response_model=LiveResponse, summary="Server is live")
    async def live() -> Response:
        return json_response({"live": True})

    @router.get(
        "/v2/health/ready",
        response_model=ReadyResponse,
        responses={503: {"model": ReadyResponse, "description": "Not ready (see the summary)"}},
        summary="Ready: start-up loading is over and a model serves (strict_readiness: "
        "every model), and the server is not draining",
    )
    async def ready(request: Request) -> Response:
        plane: DataPlane = request.app.state.dataplane
        ok = plane.ready() and not request.app.state.draining
        return json_response({"ready": ok}, status=200 if ok else 503)

    return router
