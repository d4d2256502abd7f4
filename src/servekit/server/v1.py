"""TensorFlow Serving REST API: status, metadata and predict (row and columnar)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from starlette.responses import Response

from servekit.dataplane import DataPlane
from servekit.errors import BadInput
from servekit.repository import ServedModel
from servekit.server import paths  # noqa: F401 - registers the 'segment' convertor
from servekit.server.encoding import json_response, parse_json_object, to_jsonable
from servekit.server.inference import InferenceCall, InferenceRoute, call_from_request
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


PREDICT = "/v1/models/{model_name:segment}:predict"
PREDICT_VERSION = "/v1/models/{model_name:segment}/versions/{version:segment}:predict"


def _plane(request: Request) -> DataPlane:
    plane: DataPlane = request.app.state.dataplane
    return plane


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


@dataclass(frozen=True, slots=True)
class Predict:
    """A decoded predict request."""

    inputs: dict[str, Array]
    row_format: bool  # 'instances' (answered as 'predictions'), else 'inputs' ('outputs')
    timeout_s: float | None = None  # TF Serving's REST API has no per-request deadline
    priority: int = 0


async def handle_predict(call: InferenceCall) -> Response:
    """A predict request, whichever router matched it."""
    body = parse_json_object(call.body)

    def decode(model: ServedModel) -> Predict:
        return Predict(*parse_predict(body, model.inputs))

    done = await call.plane.infer(call.model_name, call.version, decode, cancelled=call.cancelled)
    return json_response(encode_predict(done.outputs, done.request.row_format))


ROUTES = (InferenceRoute(PREDICT, handle_predict), InferenceRoute(PREDICT_VERSION, handle_predict))


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
                for m in _plane(request).models()
            ]
        )

    @router.get(
        "/v1/models/{model_name:segment}",
        response_model=ModelStatusResponse,
        responses=ERRORS,
        summary="Model status (every version)",
    )
    async def model_status(request: Request, model_name: str) -> Response:
        return json_response(_status(_plane(request).versions(model_name)))

    @router.get(
        "/v1/models/{model_name:segment}/versions/{version:segment}",
        response_model=ModelStatusResponse,
        responses=ERRORS,
        summary="Model version status",
    )
    async def version_status(request: Request, model_name: str, version: str) -> Response:
        return json_response(_status([_plane(request).model(model_name, version)]))

    @router.get(
        "/v1/models/{model_name:segment}/metadata",
        response_model=ModelMetadataResponse,
        responses=ERRORS,
        summary="Model metadata (signature, dtypes, shapes)",
    )
    async def metadata(request: Request, model_name: str) -> Response:
        return json_response(_metadata(_plane(request).model(model_name)))

    @router.get(
        "/v1/models/{model_name:segment}/versions/{version:segment}/metadata",
        response_model=ModelMetadataResponse,
        responses=ERRORS,
        summary="Model version metadata",
    )
    async def version_metadata(request: Request, model_name: str, version: str) -> Response:
        return json_response(_metadata(_plane(request).model(model_name, version)))

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

    # Served by servekit's inference router (server/inference.py); FastAPI serves them
    # while its native telemetry records them.
    @router.post(
        PREDICT, summary="Predict (newest version)", operation_id="v1_predict", **predict_doc
    )
    async def predict(request: Request, model_name: str) -> Response:
        return await handle_predict(await call_from_request(request, model_name, None))

    @router.post(
        PREDICT_VERSION,
        summary="Predict (given version)",
        operation_id="v1_predict_version",
        **predict_doc,
    )
    async def predict_version(request: Request, model_name: str, version: str) -> Response:
        return await handle_predict(await call_from_request(request, model_name, version))

    return router
