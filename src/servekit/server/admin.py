"""Management API (Triton's model-repository extension), guarded by the admin token.

``SERVEKIT_ADMIN_TOKEN`` unset: the API is disabled (403 saying so). Load and unload are
refused in model control mode ``none``.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any, TypeVar

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError
from starlette.responses import Response

from servekit.config import ServerSettings
from servekit.errors import BadInput, Forbidden, Unauthorized
from servekit.repository import ModelRegistry
from servekit.server.encoding import json_response
from servekit.server.schemas import ErrorResponse, ModelListEntry
from servekit.server.strictjson import loads_strict
from servekit.tensors import excerpt

B = TypeVar("B", bound=BaseModel)

_bearer = HTTPBearer(auto_error=False, description="The admin token (SERVEKIT_ADMIN_TOKEN).")


def require_admin(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    settings: ServerSettings = request.app.state.settings
    disabled = "the management API is disabled: set SERVEKIT_ADMIN_TOKEN to enable it"
    if credentials is None or credentials.scheme.lower() != "bearer":
        # 401 first (no credentials), as clients and OpenAPI tooling expect.
        hint = disabled if settings.admin_token is None else "send 'Authorization: Bearer <token>'"
        raise Unauthorized(f"missing admin token: {hint}")
    if settings.admin_token is None:
        raise Forbidden(disabled)
    want = settings.admin_token.get_secret_value().encode()
    if not hmac.compare_digest(credentials.credentials.encode(), want):
        raise Unauthorized("invalid admin token")


class IndexRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ready: StrictBool | None = Field(
        None, description="Only ready (true) or not-ready (false) ones."
    )


class LoadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    parameters: dict[str, Any] | None = Field(
        None,
        description="`config`: a model config override (object or JSON string), e.g. "
        '{"max_batch_size": 16, "instances": 2}',
    )


ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"model": ErrorResponse} for s in (400, 401, 403, 404)
}


def _registry(request: Request) -> ModelRegistry:
    registry: ModelRegistry = request.app.state.registry
    return registry


def _require_mutable(request: Request) -> None:
    settings: ServerSettings = request.app.state.settings
    if settings.model_control_mode == "none":
        raise Forbidden(
            "model control mode is 'none': start the server with --model-control-mode "
            "explicit (or poll) to load and unload models"
        )


def _body(body: bytes, model: type[B]) -> B:
    """An optional JSON body, validated strictly against its documented model."""
    data = loads_strict(body) if body.strip() else {}
    try:
        return model.model_validate(data, strict=True)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "body"
        raise BadInput(f"{where}: {err['msg']}") from None


def _config_override(body: bytes) -> dict[str, Any] | None:
    params = _body(body, LoadRequest).parameters or {}
    config = params.get("config")
    if config is None:
        return None
    if isinstance(config, str):
        try:
            config = orjson.loads(config)
        except orjson.JSONDecodeError as e:
            raise BadInput(f"parameters.config is not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise BadInput(f"parameters.config must be an object, got {excerpt(config)}")
    return config


def build_router() -> APIRouter:
    router = APIRouter(
        tags=["Model repository (admin)"], dependencies=[Depends(require_admin)], responses=ERRORS
    )

    @router.post(
        "/v2/repository/index",
        response_model=list[ModelListEntry],
        summary="Every model and version in the repository, with state and reason",
        openapi_extra={
            "requestBody": {
                "required": False,
                "content": {"application/json": {"schema": IndexRequest.model_json_schema()}},
            }
        },
    )
    async def index(request: Request) -> Response:
        ready = _body(await request.body(), IndexRequest).ready
        rows = _registry(request).index()
        if ready is not None:
            rows = [r for r in rows if (r["state"] == "READY") == bool(ready)]
        return json_response(rows)

    load_doc: dict[str, Any] = {
        "openapi_extra": {
            "requestBody": {
                "required": False,
                "content": {"application/json": {"schema": LoadRequest.model_json_schema()}},
            }
        }
    }

    @router.post(
        "/v2/repository/models/{model_name}/load",
        summary="Load (or reload) a model: new versions warm up before they take traffic",
        **load_doc,
    )
    async def load(request: Request, model_name: str) -> Response:
        _require_mutable(request)
        override = _config_override(await request.body())
        await _registry(request).load_model(model_name, override)
        return json_response({})

    @router.post(
        "/v2/repository/models/{model_name}/unload",
        summary="Unload a model after it finishes what it has queued",
    )
    async def unload(request: Request, model_name: str) -> Response:
        _require_mutable(request)
        await _registry(request).unload_model(model_name)
        return json_response({})

    return router
