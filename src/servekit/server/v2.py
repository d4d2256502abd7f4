"""Open Inference Protocol v2 (KServe / Triton): metadata, readiness, infer.

JSON and the binary tensor data extension, both directions; the wire format lives in
``v2_codec``. Validation, batching and the instance pool are the core's, shared with
the TF Serving API. The health endpoints (``/v2/health/...``) are in ``health``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel
from starlette.responses import Response

from servekit import __version__
from servekit.dataplane import DataPlane
from servekit.errors import ServekitError
from servekit.repository import ServedModel
from servekit.server import v2_codec
from servekit.server.encoding import json_response
from servekit.server.inference import (
    InferenceCall,
    InferenceRoute,
    call_from_request,
    parse_off_loop,
)
from servekit.server.schemas import (
    ErrorResponse,
    V2InferRequest,
    V2InferResponse,
    V2ModelMetadataResponse,
    V2ModelReadyResponse,
    V2ServerMetadataResponse,
)
from servekit.tensors import TensorSpec

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Bad input"},
    404: {"model": ErrorResponse, "description": "Unknown model or version"},
    413: {"model": ErrorResponse, "description": "Body over the size limit"},
    503: {"model": ErrorResponse, "description": "Not ready or overloaded (see Retry-After)"},
    504: {"model": ErrorResponse, "description": "Deadline passed"},
}

_BINARY_SCHEMA = {"type": "string", "format": "binary"}


def _inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """A model's JSON schema with its ``$defs`` inlined (for ``openapi_extra``)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return walk(defs[ref.removeprefix("#/$defs/")])
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    result: dict[str, Any] = walk(schema)
    return result


INFER = "/v2/models/{model_name}/infer"
INFER_VERSION = "/v2/models/{model_name}/versions/{version}/infer"


def _plane(request: Request) -> DataPlane:
    plane: DataPlane = request.app.state.dataplane
    return plane


def _tensor(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}


def _metadata(plane: DataPlane, model: ServedModel) -> dict[str, Any]:
    meta = model.metadata()
    return {
        "name": model.name,
        "versions": [str(m.version) for m in plane.versions(model.name) if m.ready],
        "platform": meta["platform"],
        "inputs": [_tensor(s) for s in model.inputs],
        "outputs": [_tensor(s) for s in model.outputs],
        "parameters": {"batching": meta["batching"], "runtime": meta["runtime"]},
    }


def _model_ready(plane: DataPlane, name: str, version: str | None) -> Response:
    """200 ``{"name", "ready": true}``, or 400 with ``ready: false``.

    The protocol answers model readiness by status: 200 is true and a 4xx is false
    (Triton sends 400); tritonclient's ``is_model_ready`` checks for 200.
    """
    ready = plane.is_ready(name, version)
    return json_response({"name": name, "ready": ready}, status=200 if ready else 400)


async def handle_infer(call: InferenceCall) -> Response:
    """An infer request (JSON or binary), whichever router matched it."""
    headers = call.headers
    parsed: v2_codec.ParsedBody | None = None
    failed: ServekitError | None = None
    try:
        # A compressed body's size says little of what it decompresses to: off the loop.
        size = len(call.body) if "content-encoding" not in headers else len(call.body) << 10
        parsed = await parse_off_loop(size, _parse, call, headers)
    except ServekitError as e:  # raised once a model is chosen, counted against it
        failed = e

    def decode(model: ServedModel) -> v2_codec.InferRequest:
        if failed is not None:
            raise failed
        assert parsed is not None
        return v2_codec.decode_parsed(
            parsed, inputs=model.inputs, outputs=[s.name for s in model.outputs]
        )

    done = await call.plane.infer(call.model_name, call.version, decode, cancelled=call.cancelled)
    model = done.model
    content, header_length = v2_codec.encode_response(
        model_name=model.name,
        model_version=str(model.version),
        request=done.request,
        outputs=done.outputs,
        order=[s.name for s in model.outputs],
    )
    if header_length is None:
        return Response(content, media_type=v2_codec.JSON_CONTENT_TYPE)
    return Response(
        content,
        media_type=v2_codec.BINARY_CONTENT_TYPE,
        headers={"Inference-Header-Content-Length": str(header_length)},
    )


def _parse(call: InferenceCall, headers: Any) -> v2_codec.ParsedBody:
    """What of an infer body needs no model: decompressed, split, its JSON parsed."""
    body = v2_codec.decompress(call.body, headers.get("content-encoding"), call.max_body_bytes)
    return v2_codec.parse_body(
        body,
        header_length=headers.get(v2_codec.HEADER_LENGTH),
        content_type=headers.get("content-type"),
        max_json_bytes=call.max_json_bytes,
    )


ROUTES = (InferenceRoute(INFER, handle_infer), InferenceRoute(INFER_VERSION, handle_infer))


def build_router() -> APIRouter:
    router = APIRouter(tags=["Open Inference Protocol (v2)"])

    @router.get("/v2", response_model=V2ServerMetadataResponse, summary="Server metadata")
    async def server_metadata() -> Response:
        return json_response(
            {"name": "servekit", "version": __version__, "extensions": list(v2_codec.EXTENSIONS)}
        )

    stats_doc: dict[str, Any] = {
        "responses": ERRORS,
        "description": "Triton's statistics extension: per model version, inference and "
        "execution counts, and count and cumulative ns of successes, failures, queueing "
        "and compute (input, infer, output), summed over every server process.",
    }

    # Before /v2/models/{model_name}, which would take "stats" for a model name.
    @router.get("/v2/models/stats", summary="Statistics of every loaded model", **stats_doc)
    async def all_stats(request: Request) -> Response:
        return json_response({"model_stats": _plane(request).statistics()})

    @router.get(
        "/v2/models/{model_name}",
        response_model=V2ModelMetadataResponse,
        responses=ERRORS,
        summary="Model metadata (newest ready version)",
    )
    async def model_metadata(request: Request, model_name: str) -> Response:
        plane = _plane(request)
        return json_response(_metadata(plane, plane.ready_model(model_name)))

    @router.get(
        "/v2/models/{model_name}/versions/{version}",
        response_model=V2ModelMetadataResponse,
        responses=ERRORS,
        summary="Model version metadata",
    )
    async def version_metadata(request: Request, model_name: str, version: str) -> Response:
        plane = _plane(request)
        return json_response(_metadata(plane, plane.ready_model(model_name, version)))

    # Triton's extensions that its clients read first: model configuration (perf_analyzer
    # stops without it) and statistics.
    @router.get(
        "/v2/models/{model_name}/config",
        responses=ERRORS,
        summary="Model configuration, as Triton's (newest ready version)",
    )
    async def model_config(request: Request, model_name: str) -> Response:
        return json_response(_plane(request).model_config(model_name))

    @router.get(
        "/v2/models/{model_name}/versions/{version}/config",
        responses=ERRORS,
        summary="Model version configuration, as Triton's",
    )
    async def version_config(request: Request, model_name: str, version: str) -> Response:
        return json_response(_plane(request).model_config(model_name, version))

    @router.get(
        "/v2/models/{model_name}/stats", summary="Statistics of a model's versions", **stats_doc
    )
    async def model_stats(request: Request, model_name: str) -> Response:
        return json_response({"model_stats": _plane(request).statistics(model_name)})

    @router.get(
        "/v2/models/{model_name}/versions/{version}/stats",
        summary="Statistics of a model version",
        **stats_doc,
    )
    async def version_stats(request: Request, model_name: str, version: str) -> Response:
        return json_response({"model_stats": _plane(request).statistics(model_name, version)})

    ready_doc: dict[str, Any] = {
        "response_model": V2ModelReadyResponse,
        "responses": {
            400: {"model": V2ModelReadyResponse, "description": "Not ready (ready: false)"},
            404: ERRORS[404],
        },
    }

    @router.get("/v2/models/{model_name}/ready", summary="Model ready", **ready_doc)
    async def model_ready(request: Request, model_name: str) -> Response:
        return _model_ready(_plane(request), model_name, None)

    @router.get(
        "/v2/models/{model_name}/versions/{version}/ready",
        summary="Model version ready",
        **ready_doc,
    )
    async def version_ready(request: Request, model_name: str, version: str) -> Response:
        return _model_ready(_plane(request), model_name, version)

    infer_doc: dict[str, Any] = {
        "response_model": V2InferResponse,
        "responses": {
            200: {
                "description": "JSON, or with binary outputs the JSON header followed by "
                "their bytes (Inference-Header-Content-Length gives the header's length).",
                "content": {v2_codec.BINARY_CONTENT_TYPE: {"schema": _BINARY_SCHEMA}},
            },
            **ERRORS,
        },
        "openapi_extra": {
            "requestBody": {
                "required": True,
                "description": "A JSON infer request; with the binary tensor data extension "
                "the JSON header (Inference-Header-Content-Length bytes) followed by the "
                "inputs' bytes; with a header length of 0 on a single-input model, just "
                "the input's raw bytes.",
                "content": {
                    v2_codec.JSON_CONTENT_TYPE: {"schema": _inline_schema(V2InferRequest)},
                    v2_codec.BINARY_CONTENT_TYPE: {"schema": _BINARY_SCHEMA},
                },
            }
        },
    }

    # Served by servekit's inference router (server/inference.py); FastAPI serves them
    # while its native telemetry records them.
    @router.post(
        INFER, summary="Infer (newest ready version)", operation_id="v2_infer", **infer_doc
    )
    async def infer(request: Request, model_name: str) -> Response:
        return await handle_infer(await call_from_request(request, model_name, None))

    @router.post(
        INFER_VERSION,
        summary="Infer (given version)",
        operation_id="v2_infer_version",
        **infer_doc,
    )
    async def infer_version(request: Request, model_name: str, version: str) -> Response:
        return await handle_infer(await call_from_request(request, model_name, version))

    return router
