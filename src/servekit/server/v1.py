"""TensorFlow Serving REST API: status, metadata and predict (row and columnar)."""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from starlette.responses import Response

from servekit.errors import BadInput
from servekit.repository import ModelRegistry, ServedModel
from servekit.server import paths  # noqa: F401 - registers the 'segment' convertor
from servekit.server.encoding import json_response, read_json_object, to_jsonable
from servekit.server.limits import unless_disconnected
from servekit.server.schemas import (
    ErrorResponse,
    ModelListEntry,
    ModelMetadataResponse,
    ModelStatusResponse,
    PredictRequest,
    PredictResponse,
)
from servekit.tensors import Array, TensorSpec, coerce_json_values, excerpt

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Bad input"},
    404: {"model": ErrorResponse, "description": "Unknown model or version"},
    503: {"model": ErrorResponse, "description": "Not ready or overloaded (see Retry-After)"},
    504: {"model": ErrorResponse, "description": "Deadline passed while queued"},
}

# TF Serving's names for model states.
_TFS_STATE = {"LOADING": "LOADING", "READY": "AVAILABLE", "UNLOADING": "UNLOADING"}


def _registry(request: Request) -> ModelRegistry:
    registry: ModelRegistry = request.app.state.registry
    return registry


def _status(models: list[ServedModel]) -> dict[str, Any]:
    return {
        "model_version_status": [
            {
                "version": str(m.version),
                "state": _TFS_STATE.get(m.state, "END"),
                "status": {
                    "error_code": "OK" if m.ready else "UNAVAILABLE",
                    "error_message": m.reason,
                },
            }
            for m in models
        ]
    }


def _metadata(m: ServedModel) -> dict[str, Any]:
    meta = m.metadata()
    return {
        "model_spec": {"name": m.name, "version": str(m.version), "signature_name": ""},
        "metadata": {
            "signature_def": {
                "signature_def": {
                    m.signature_key or "serving_default": {
                        "inputs": {s.name: s.to_dict() for s in m.inputs},
                        "outputs": {s.name: s.to_dict() for s in m.outputs},
                        "method_name": "tensorflow/serving/predict",
                    }
                }
            },
            "batching": meta["batching"],
            "runtime": meta["runtime"],
        },
    }


def parse_predict(
    body: dict[str, Any], inputs: tuple[TensorSpec, ...]
) -> tuple[dict[str, Array], bool]:
    """Decode a predict body into arrays. Returns the arrays and whether it was row format."""
    sig = body.get("signature_name")
    if sig not in (None, "", "serving_default"):
        raise BadInput(
            f"unknown signature_name {excerpt(sig)}; this model serves 'serving_default'"
        )
    unknown = set(body) - {"signature_name", "instances", "inputs"}
    if unknown:
        raise BadInput(
            f"unknown field(s) {sorted(excerpt(k) for k in unknown)}; "
            "send 'instances' (row format) or 'inputs' (columnar)"
        )
    has_rows, has_cols = "instances" in body, "inputs" in body
    if has_rows == has_cols:
        raise BadInput("send exactly one of 'instances' (row format) or 'inputs' (columnar)")
    names = [s.name for s in inputs]
    by_name = {s.name: s for s in inputs}
    if has_rows:
        rows = body["instances"]
        if not isinstance(rows, list):
            raise BadInput(f"'instances' must be a list, got {type(rows).__name__}")
        if not rows:
            raise BadInput("empty batch: 'instances' has no rows")
        if all(isinstance(r, dict) for r in rows):
            keys = set(rows[0])
            for i, r in enumerate(rows):
                if set(r) != keys:
                    raise BadInput(
                        f"instance {i} has inputs {sorted(r)}, instance 0 has {sorted(keys)}"
                    )
            columns = {k: [r[k] for r in rows] for k in keys}
        elif len(names) == 1 and not any(isinstance(r, dict) for r in rows):
            columns = {names[0]: rows}
        else:
            raise BadInput(
                f"this model takes several inputs {names}: each instance must be an "
                "object with one value per input name"
            )
    else:
        cols = body["inputs"]
        if isinstance(cols, dict):
            columns = cols
        elif len(names) == 1:
            columns = {names[0]: cols}
        else:
            raise BadInput(f"'inputs' must be an object of {names} for this multi-input model")
    arrays: dict[str, Array] = {}
    for k, v in columns.items():
        spec = by_name.get(k)
        if spec is None:
            raise BadInput(f"unknown input {excerpt(k)}; the model takes {names}")
        arrays[k] = coerce_json_values(k, v, spec)
    return arrays, has_rows


def encode_predict(outputs: dict[str, Array], row_format: bool) -> dict[str, Any]:
    if row_format:
        if len(outputs) == 1:
            return {"predictions": to_jsonable(next(iter(outputs.values())))}
        cols = {k: np.asarray(v).tolist() for k, v in outputs.items()}
        n = len(next(iter(cols.values())))
        return {"predictions": [{k: c[i] for k, c in cols.items()} for i in range(n)]}
    if len(outputs) == 1:
        return {"outputs": to_jsonable(next(iter(outputs.values())))}
    return {"outputs": {k: to_jsonable(v) for k, v in outputs.items()}}


def build_router() -> APIRouter:
    router = APIRouter(tags=["TF Serving REST (v1)"])

    @router.get("/v1/models", response_model=list[ModelListEntry], summary="List served models")
    async def list_models(request: Request) -> Response:
        return json_response(
            [
                {"name": m.name, "version": str(m.version), "state": m.state, "reason": m.reason}
                for m in _registry(request).all()
            ]
        )

    @router.get(
        "/v1/models/{model_name:segment}",
        response_model=ModelStatusResponse,
        responses=ERRORS,
        summary="Model status (every version)",
    )
    async def model_status(request: Request, model_name: str) -> Response:
        reg = _registry(request)
        models = [m for m in reg.all() if m.name == model_name]
        if not models:
            reg.get(model_name)  # raises NotFound with the list of models
        return json_response(_status(models))

    @router.get(
        "/v1/models/{model_name:segment}/versions/{version:segment}",
        response_model=ModelStatusResponse,
        responses=ERRORS,
        summary="Model version status",
    )
    async def version_status(request: Request, model_name: str, version: str) -> Response:
        return json_response(_status([_registry(request).get(model_name, version)]))

    @router.get(
        "/v1/models/{model_name:segment}/metadata",
        response_model=ModelMetadataResponse,
        responses=ERRORS,
        summary="Model metadata (signature, dtypes, shapes)",
    )
    async def metadata(request: Request, model_name: str) -> Response:
        return json_response(_metadata(_registry(request).get(model_name)))

    @router.get(
        "/v1/models/{model_name:segment}/versions/{version:segment}/metadata",
        response_model=ModelMetadataResponse,
        responses=ERRORS,
        summary="Model version metadata",
    )
    async def version_metadata(request: Request, model_name: str, version: str) -> Response:
        return json_response(_metadata(_registry(request).get(model_name, version)))

    predict_doc: dict[str, Any] = {
        "response_model": PredictResponse,
        "responses": ERRORS,
        "openapi_extra": {
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": PredictRequest.model_json_schema()}},
            }
        },
    }

    async def _predict(request: Request, model_name: str, version: str | None) -> Response:
        body = await read_json_object(request)
        # No await between choosing the version and queueing on it: a version that
        # starts draining meanwhile can't be picked, and what it queued completes.
        model = _registry(request).get(model_name, version)
        try:
            arrays, row_format = parse_predict(body, model.inputs)
        except BadInput:
            model.count_invalid()
            raise
        outputs = await unless_disconnected(request, model.submit(arrays))
        return json_response(encode_predict(outputs, row_format))

    @router.post(
        "/v1/models/{model_name:segment}:predict",
        summary="Predict (newest version)",
        operation_id="v1_predict",
        **predict_doc,
    )
    async def predict(request: Request, model_name: str) -> Response:
        return await _predict(request, model_name, None)

    @router.post(
        "/v1/models/{model_name:segment}/versions/{version:segment}:predict",
        summary="Predict (given version)",
        operation_id="v1_predict_version",
        **predict_doc,
    )
    async def predict_version(request: Request, model_name: str, version: str) -> Response:
        return await _predict(request, model_name, version)

    return router
