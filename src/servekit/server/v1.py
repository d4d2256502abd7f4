"""TensorFlow Serving REST API: status, metadata and predict (row and columnar).

Status and metadata answer in TF Serving's own schema (``server/tfs.py`` builds it, for
the gRPC API too); servekit's own details of a model (runtime, batching, quantization)
are under a separate ``servekit`` key of the metadata. Non-finite numbers are read and
written as TF Serving does (``NaN``, ``Infinity``, ``-Infinity``). TF Serving's
Classify and Regress APIs and version labels are not served: their paths answer an
error that says what to use instead.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from starlette.responses import Response

from servekit.dataplane import DataPlane
from servekit.errors import BadInput
from servekit.repository import ServedModel
from servekit.server import paths, tfs  # noqa: F401 - paths registers the 'segment' convertor
from servekit.server.encoding import json_response
from servekit.server.errors import error_response
from servekit.server.inference import (
    InferenceCall,
    InferenceRoute,
    call_from_request,
    check_json_size,
    parse_off_loop,
)
from servekit.server.schemas import (
    ErrorResponse,
    ModelListEntry,
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

PREDICT = "/v1/models/{model_name:segment}:predict"
PREDICT_VERSION = "/v1/models/{model_name:segment}/versions/{version:segment}:predict"


def _plane(request: Request) -> DataPlane:
    plane: DataPlane = request.app.state.dataplane
    return plane


class ModelMetadataResponse(BaseModel):
    """TF Serving's model metadata, and servekit's own details beside it."""

    model_spec: dict[str, str] = Field(
        description="name, signature_name (always ''), version (a string)."
    )
    metadata: dict[str, Any] = Field(
        description="{'signature_def': TF Serving's SignatureDefMap}: the model's signature "
        "(serving_default), inputs and outputs each with dtype (DT_FLOAT, ...), tensor_shape "
        "({dim: [{size, name}], unknown_rank}; sizes are strings, -1 the batch) and name."
    )
    servekit: dict[str, Any] = Field(
        description="servekit's own: platform, runtime, signature, inputs and outputs "
        "(datatype, dtype, shape, quantization), batching."
    )


def _status(models: list[ServedModel]) -> dict[str, Any]:
    return {"model_version_status": [tfs.version_status(m) for m in models]}


def _metadata(m: ServedModel) -> dict[str, Any]:
    mine = {k: v for k, v in m.metadata().items() if k not in ("name", "version")}
    return {
        "model_spec": tfs.model_spec(m),
        "metadata": {"signature_def": tfs.signature_def_map(m)},
        "servekit": mine,
    }


def parse_predict(body: dict[str, Any], model: ServedModel) -> tuple[dict[str, Array], bool]:
    """Decode a predict body into arrays. Returns the arrays and whether it was row format."""
    sig = body.get("signature_name")
    if sig is not None:
        if not isinstance(sig, str):
            raise BadInput(f"'signature_name' must be a string, got {excerpt(sig)}")
        tfs.check_signature(sig, model)
    inputs = model.inputs
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
        if isinstance(rows, np.ndarray):  # numbers read straight into numpy
            return _one_input(rows, names, by_name), True
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


def _one_input(rows: Array, names: list[str], by_name: dict[str, TensorSpec]) -> dict[str, Array]:
    """Row-format instances read as one numeric array: a one-input model's input."""
    if len(names) != 1:
        raise BadInput(
            f"this model takes several inputs {names}: each instance must be an "
            "object with one value per input name"
        )
    return {names[0]: coerce_json_values(names[0], rows, by_name[names[0]])}


@dataclass(frozen=True, slots=True)
class Predict:
    """A decoded predict request."""

    inputs: dict[str, Array]
    row_format: bool  # 'instances' (answered as 'predictions'), else 'inputs' ('outputs')
    timeout_s: float | None = None  # TF Serving's REST API has no per-request deadline
    priority: int = 0


def parse_body(body: bytes) -> dict[str, Any]:
    """A predict body: a JSON object (``NaN`` and ``Infinity`` allowed, as TF Serving)."""
    data = tfs.loads(body)
    if not isinstance(data, dict):
        raise BadInput(f"expected a JSON object, got {type(data).__name__}: {excerpt(data)}")
    return data


async def handle_predict(call: InferenceCall) -> Response:
    """A predict request, whichever router matched it."""
    check_json_size(len(call.body), call.max_json_bytes)
    body = await parse_off_loop(len(call.body), parse_body, call.body)

    def decode(model: ServedModel) -> Predict:
        return Predict(*parse_predict(body, model))

    done = await call.plane.infer(call.model_name, call.version, decode, cancelled=call.cancelled)
    return json_response(encode_predict(done.outputs, done.request.row_format))


ROUTES = (InferenceRoute(PREDICT, handle_predict), InferenceRoute(PREDICT_VERSION, handle_predict))


def encode_predict(outputs: dict[str, Array], row_format: bool) -> dict[str, Any]:
    cols = {k: tfs.jsonable(v) for k, v in outputs.items()}
    if len(cols) == 1:
        return {"predictions" if row_format else "outputs": next(iter(cols.values()))}
    if not row_format:
        return {"outputs": cols}
    n = len(next(iter(outputs.values())))
    return {"predictions": [{k: _row(c, i) for k, c in cols.items()} for i in range(n)]}


def _row(column: Any, i: int) -> Any:
    """Row ``i`` of an output; a numpy scalar (a 1-D output's row) as a Python value,
    since orjson writes numpy arrays but not every numpy scalar type (np.longlong)."""
    value = column[i]
    return value.item() if isinstance(value, np.generic) else value


# -- what TF Serving has and servekit does not ------------------------------------------

UNSUPPORTED_VERBS = ("classify", "regress")


def _unsupported_verb(verb: str, model_name: str, version: str | None) -> Response:
    where = f"/v1/models/{model_name[:128]}" + (f"/versions/{version[:32]}" if version else "")
    return error_response(
        501,
        f"TF Serving's {verb.capitalize()} API (POST {where}:{verb}) is not supported: "
        f"servekit serves Predict only. Send the model's inputs to POST {where}:predict "
        "('instances' or 'inputs') and read its outputs (the class scores or values) there",
    )


def _no_labels(plane: DataPlane, model_name: str, label: str, rest: str) -> BadInput:
    versions = [m.version for m in plane.versions(model_name)]  # NotFound first
    return BadInput(
        f"servekit has no version labels: label {excerpt(label)} names no version of model "
        f"'{model_name}'. Address a version by number: /v1/models/{model_name}/versions/"
        f"<version>{rest} (versions: {versions}), or leave it out for the newest"
    )


def _add_unsupported_routes(router: APIRouter) -> None:
    """TF Serving's paths servekit does not serve, answered with what to use instead
    (not in the OpenAPI document): Classify and Regress (501), version labels (400)."""

    def no_label(rest: str) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            params = request.path_params
            raise _no_labels(_plane(request), params["model_name"], params["label"], rest)

        return endpoint

    def not_served(verb: str) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            params = request.path_params  # a label is not a version: name none in the answer
            return _unsupported_verb(verb, params["model_name"], params.get("version"))

        return endpoint

    base = "/v1/models/{model_name:segment}"
    label = base + "/labels/{label:segment}"
    for path, endpoint, method in (
        (label, no_label(""), "GET"),
        (label + "/metadata", no_label("/metadata"), "GET"),
        (label + ":predict", no_label(":predict"), "POST"),
        *((label + f":{verb}", not_served(verb), "POST") for verb in UNSUPPORTED_VERBS),
        *((base + f":{verb}", not_served(verb), "POST") for verb in UNSUPPORTED_VERBS),
        *(
            (base + "/versions/{version:segment}" + f":{verb}", not_served(verb), "POST")
            for verb in UNSUPPORTED_VERBS
        ),
    ):
        router.add_api_route(path, endpoint, methods=[method], include_in_schema=False)


def build_router() -> APIRouter:
    router = APIRouter(tags=["TF Serving REST (v1)"])

    @router.get("/v1/models", response_model=list[ModelListEntry], summary="List served models")
    async def list_models(request: Request) -> Response:
        # The loaded versions, and the models that have nothing to load, with why.
        return json_response(_plane(request).registry.model_list())

    @router.get(
        "/v1/models/{model_name:segment}",
        response_model=ModelStatusResponse,
        responses=ERRORS,
        summary="Model status (every version)",
    )
    async def model_status(request: Request, model_name: str) -> Response:
        return json_response(_status(_plane(request).versions(model_name)))

    _add_unsupported_routes(router)

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
