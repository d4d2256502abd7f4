"""KServe's Open Inference Protocol v2 over gRPC (``inference.GRPCInferenceService``),
with Triton's extensions (model configuration, statistics, model repository).

The service stubs are tritonclient's (``tritonclient.grpc.service_pb2[_grpc]``), the
ones Triton's clients are generated from. Inputs come as ``raw_input_contents`` (each
input's bytes in input order, little-endian, BYTES elements length-prefixed: what
tritonclient sends) or typed ``contents``; outputs go back as ``raw_output_contents``,
as Triton answers. ``ModelStreamInfer`` answers each request of the stream in turn.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

from servekit import __version__
from servekit.dataplane import DataPlane
from servekit.errors import BadInput, NotFound, NotReady, ServekitError
from servekit.grpc.calls import Guard, guarded_stream, remaining_s, unary
from servekit.repository import ServedModel
from servekit.server.v2_codec import (
    EXTENSIONS,
    UINT64_MAX,
    batcher_priority,
    decode_binary,
    serialize_bytes,
)
from servekit.tensors import V2_TO_NUMPY, Array, TensorSpec, check_declared_shape

SERVICE = "inference.GRPCInferenceService"

# The typed ``contents`` field of each datatype (FP16 has none: send it raw).
_CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


@dataclass(slots=True)
class GrpcInferRequest:
    """A decoded ModelInferRequest (what the data plane needs, and the outputs asked)."""

    inputs: dict[str, Array]
    outputs: tuple[str, ...] | None
    timeout_s: float | None
    priority: int


def _parameter(p: service_pb2.InferParameter) -> Any:
    which = p.WhichOneof("parameter_choice")
    return None if which is None else getattr(p, which)


def _shape(name: str, dims: Any) -> tuple[int, ...]:
    shape = tuple(int(d) for d in dims)
    check_declared_shape(name, shape)
    return shape


def _typed(name: str, datatype: str, shape: tuple[int, ...], contents: Any) -> Array:
    field = _CONTENTS.get(datatype)
    if field is None:
        raise BadInput(f"input '{name}': {datatype} has no typed contents; send it as raw bytes")
    values = getattr(contents, field)
    count = math.prod(shape)
    if len(values) != count:
        raise BadInput(
            f"input '{name}': {field} has {len(values)} value(s), shape {list(shape)} needs {count}"
        )
    if datatype == "BYTES":
        arr = np.empty(count, dtype=np.object_)
        arr[:] = list(values)
        return arr.reshape(shape)
    dtype = V2_TO_NUMPY[datatype]
    wide = np.asarray(values)
    if dtype.kind in ("i", "u") and count:
        info = np.iinfo(dtype)
        if int(wide.min()) < info.min or int(wide.max()) > info.max:
            raise BadInput(
                f"input '{name}': {field} holds values outside {datatype}'s range "
                f"[{info.min}, {info.max}]"
            )
    return wide.astype(dtype).reshape(shape)


def decode_infer(
    request: service_pb2.ModelInferRequest, model: ServedModel, deadline_s: float | None
) -> GrpcInferRequest:
    specs: Mapping[str, TensorSpec] = {s.name: s for s in model.inputs}
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise BadInput(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} input(s): "
            "send one per input, in input order"
        )
    inputs: dict[str, Array] = {}
    for i, tensor in enumerate(request.inputs):
        name = tensor.name
        if name in inputs:
            raise BadInput(f"input '{name}' is given twice")
        datatype = tensor.datatype
        if datatype not in V2_TO_NUMPY:
            raise BadInput(
                f"input '{name}': unknown datatype {datatype!r}; expected one of "
                f"{', '.join(V2_TO_NUMPY)}"
            )
        spec = specs.get(name)
        if spec is not None and spec.datatype != datatype:
            raise BadInput(f"input '{name}': expected datatype {spec.datatype}, got {datatype}")
        if tensor.parameters:
            raise BadInput(
                f"input '{name}': parameters {sorted(tensor.parameters)} are not supported"
            )
        shape = _shape(name, tensor.shape)
        if raw:
            inputs[name] = decode_binary(name, datatype, shape, raw[i], 0, len(raw[i]))
        elif tensor.HasField("contents"):
            inputs[name] = _typed(name, datatype, shape, tensor.contents)
        else:
            raise BadInput(f"input '{name}': no data: send raw_input_contents or contents")
    params = {k: _parameter(v) for k, v in request.parameters.items()}
    return GrpcInferRequest(
        inputs=inputs,
        outputs=tuple(o.name for o in request.outputs) or None,
        timeout_s=_timeout(params, deadline_s),
        priority=_priority(params),
    )


def _timeout(params: Mapping[str, Any], deadline_s: float | None) -> float | None:
    """The sooner of the call's deadline and ``timeout`` (microseconds; 0: none)."""
    value = params.get("timeout", 0)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= UINT64_MAX:
        raise BadInput(
            f"parameter 'timeout': expected a non-negative integer number of microseconds, "
            f"got {value!r}"
        )
    limits = [t for t in (value / 1e6 if value else None, deadline_s) if t is not None]
    return min(limits) if limits else None


def _priority(params: Mapping[str, Any]) -> int:
    value = params.get("priority", 0)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= UINT64_MAX:
        raise BadInput(
            f"parameter 'priority': expected an integer >= 0 (1 is the highest, 0 the "
            f"default), got {value!r}"
        )
    return batcher_priority(value)


def encode_infer(
    model: ServedModel, request_id: str, asked: tuple[str, ...] | None, outputs: Mapping[str, Array]
) -> service_pb2.ModelInferResponse:
    specs = {s.name: s for s in model.outputs}
    names = asked if asked is not None else tuple(specs)
    unknown = [n for n in names if n not in outputs]
    if unknown:
        raise BadInput(f"unknown output(s) {unknown}; the model gives {list(specs)}")
    response = service_pb2.ModelInferResponse(
        model_name=model.name, model_version=str(model.version), id=request_id
    )
    for name in names:
        arr = outputs[name]
        tensor = response.outputs.add()
        tensor.name = name
        tensor.datatype = specs[name].datatype
        tensor.shape.extend(arr.shape)
        if arr.dtype.kind in ("O", "S", "U"):
            response.raw_output_contents.append(serialize_bytes(arr))
        else:
            le = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
            response.raw_output_contents.append(le.tobytes())
    return response


def _tensor_metadata(spec: TensorSpec) -> service_pb2.ModelMetadataResponse.TensorMetadata:
    return service_pb2.ModelMetadataResponse.TensorMetadata(
        name=spec.name, datatype=spec.datatype, shape=list(spec.shape)
    )


def _version(text: str) -> str | None:
    return text or None


class KServeServicer(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    def __init__(
        self,
        plane: DataPlane,
        guard: Guard,
        *,
        draining: Callable[[], bool],
        load: Callable[[str, dict[str, Any] | None], Any],
        unload: Callable[[str], Any],
    ) -> None:
        self.plane = plane
        self.guard = guard
        self._draining = draining
        self._load = load
        self._unload = unload

    # -- health and metadata ---------------------------------------------------------

    @unary("ServerLive", "open")
    async def ServerLive(self, request: Any, context: Any) -> service_pb2.ServerLiveResponse:
        return service_pb2.ServerLiveResponse(live=True)

    @unary("ServerReady", "open")
    async def ServerReady(self, request: Any, context: Any) -> service_pb2.ServerReadyResponse:
        return service_pb2.ServerReadyResponse(ready=self.plane.ready() and not self._draining())

    @unary("ModelReady", "model")
    async def ModelReady(
        self, request: service_pb2.ModelReadyRequest, context: Any
    ) -> service_pb2.ModelReadyResponse:
        try:
            ready = self.plane.is_ready(request.name, _version(request.version))
        except NotFound:
            ready = False
        return service_pb2.ModelReadyResponse(ready=ready)

    @unary("ServerMetadata", "model")
    async def ServerMetadata(
        self, request: Any, context: Any
    ) -> service_pb2.ServerMetadataResponse:
        return service_pb2.ServerMetadataResponse(
            name="servekit", version=__version__, extensions=list(EXTENSIONS)
        )

    @unary("ModelMetadata", "model")
    async def ModelMetadata(
        self, request: service_pb2.ModelMetadataRequest, context: Any
    ) -> service_pb2.ModelMetadataResponse:
        model = self.plane.ready_model(request.name, _version(request.version))
        return service_pb2.ModelMetadataResponse(
            name=model.name,
            versions=[str(m.version) for m in self.plane.versions(model.name) if m.ready],
            platform=model.backend.platform,
            inputs=[_tensor_metadata(s) for s in model.inputs],
            outputs=[_tensor_metadata(s) for s in model.outputs],
        )

    @unary("ModelConfig", "model")
    async def ModelConfig(
        self, request: service_pb2.ModelConfigRequest, context: Any
    ) -> service_pb2.ModelConfigResponse:
        config = self.plane.model_config(request.name, _version(request.version))
        message = json_format.ParseDict(
            config, model_config_pb2.ModelConfig(), ignore_unknown_fields=True
        )
        return service_pb2.ModelConfigResponse(config=message)

    @unary("ModelStatistics", "model")
    async def ModelStatistics(
        self, request: service_pb2.ModelStatisticsRequest, context: Any
    ) -> service_pb2.ModelStatisticsResponse:
        stats = self.plane.statistics(request.name or None, _version(request.version))
        return json_format.ParseDict(
            {"model_stats": stats},
            service_pb2.ModelStatisticsResponse(),
            ignore_unknown_fields=True,
        )

    # -- inference -------------------------------------------------------------------

    async def _infer(
        self, request: service_pb2.ModelInferRequest, context: Any
    ) -> service_pb2.ModelInferResponse:
        if self._draining():
            raise NotReady("the server is shutting down; no new requests")
        deadline = remaining_s(context)
        done = await self.plane.infer(
            request.model_name,
            _version(request.model_version),
            lambda model: decode_infer(request, model, deadline),
        )
        return encode_infer(done.model, request.id, done.request.outputs, done.outputs)

    @unary("ModelInfer", "model")
    async def ModelInfer(
        self, request: service_pb2.ModelInferRequest, context: Any
    ) -> service_pb2.ModelInferResponse:
        return await self._infer(request, context)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[service_pb2.ModelInferRequest], context: Any
    ) -> AsyncIterator[service_pb2.ModelStreamInferResponse]:
        async def responses() -> AsyncIterator[service_pb2.ModelStreamInferResponse]:
            async for request in request_iterator:
                try:
                    answer = await self._infer(request, context)
                except ServekitError as e:  # this request's error; the stream goes on
                    yield service_pb2.ModelStreamInferResponse(error_message=str(e))
                    continue
                yield service_pb2.ModelStreamInferResponse(infer_response=answer)

        async for response in guarded_stream(self.guard, context, "ModelStreamInfer", responses()):
            yield response

    # -- the model repository (Triton's extension; the admin token) ----------------

    @unary("RepositoryIndex", "admin")
    async def RepositoryIndex(
        self, request: service_pb2.RepositoryIndexRequest, context: Any
    ) -> service_pb2.RepositoryIndexResponse:
        rows = self.plane.registry.index()
        if request.ready:
            rows = [r for r in rows if r["state"] == "READY"]
        return service_pb2.RepositoryIndexResponse(
            models=[service_pb2.RepositoryIndexResponse.ModelIndex(**row) for row in rows]
        )

    @unary("RepositoryModelLoad", "admin")
    async def RepositoryModelLoad(
        self, request: service_pb2.RepositoryModelLoadRequest, context: Any
    ) -> service_pb2.RepositoryModelLoadResponse:
        override = None
        if "config" in request.parameters:
            text = request.parameters["config"].string_param
            try:
                override = json.loads(text) if text else None
            except ValueError as e:
                raise BadInput(f"parameter 'config' is not valid JSON: {e}") from None
            if override is not None and not isinstance(override, dict):
                raise BadInput("parameter 'config' must be a JSON object")
        await self._load(request.model_name, override)
        return service_pb2.RepositoryModelLoadResponse()

    @unary("RepositoryModelUnload", "admin")
    async def RepositoryModelUnload(
        self, request: service_pb2.RepositoryModelUnloadRequest, context: Any
    ) -> service_pb2.RepositoryModelUnloadResponse:
        await self._unload(request.model_name)
        return service_pb2.RepositoryModelUnloadResponse()


def add_to_server(server: grpc.aio.Server, servicer: KServeServicer) -> None:
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
