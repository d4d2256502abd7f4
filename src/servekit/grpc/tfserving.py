"""TF Serving's gRPC API: ``tensorflow.serving.PredictionService`` (Predict,
GetModelMetadata) and ``tensorflow.serving.ModelService`` (GetModelStatus).

The messages are servekit's own (``servekit/grpc/tfs/tfserving.proto``, a subset of
TF Serving's protos with the same field numbers and types), so the server needs neither
TensorFlow nor tensorflow-serving-api; the handlers are registered under TF Serving's
service and method names, which is all a client puts on the wire. Classify, Regress,
MultiInference and HandleReloadConfigRequest answer UNIMPLEMENTED, saying what to call
instead.

Predict takes each input as ``tensor_content`` (row-major, little-endian bytes: what
``tf.make_tensor_proto`` sends for numbers) or in the dtype's typed field
(``float_val``, ``int_val``, ``half_val`` for DT_HALF, ``string_val`` for DT_STRING,
...): as many values as the shape holds, or a single one that fills the shape (what
``tf.make_tensor_proto(value, shape=...)`` sends for a scalar). Outputs go back as
``tensor_content`` (``string_val`` for strings). Version labels are not served: servekit
has none (INVALID_ARGUMENT, as TF Serving answers a label it does not know).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
from google.protobuf import any_pb2, json_format

from servekit.dataplane import DataPlane
from servekit.errors import BadInput, NotReady
from servekit.grpc.calls import Guard, remaining_s, unary
from servekit.grpc.tfs import tfserving_pb2 as pb
from servekit.repository import ServedModel
from servekit.server import tfs
from servekit.tensors import V2_TO_NUMPY, Array, TensorSpec, check_declared_shape, excerpt

PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
MODEL_SERVICE = "tensorflow.serving.ModelService"
SIGNATURE_DEF_MAP_URL = "type.googleapis.com/tensorflow.serving.SignatureDefMap"
SIGNATURE_DEF = "signature_def"  # the one metadata field TF Serving (and servekit) serves

# TF's DataType enum values servekit serves, both ways (by Open Inference datatype).
DT_OF_V2: dict[str, pb.DataType] = {
    v2: pb.DataType.Value(name) for v2, name in tfs.DT_NAMES.items()
}
V2_OF_DT: dict[int, str] = {dt: v2 for v2, dt in DT_OF_V2.items()}

# The typed field of each dtype (TensorProto keeps the narrow integers in int_val, and a
# DT_HALF element's 16 bits in half_val).
_FIELD: dict[str, str] = {
    "FP32": "float_val",
    "FP64": "double_val",
    "INT32": "int_val",
    "INT16": "int_val",
    "INT8": "int_val",
    "UINT8": "int_val",
    "UINT16": "int_val",
    "INT64": "int64_val",
    "UINT32": "uint32_val",
    "UINT64": "uint64_val",
    "BOOL": "bool_val",
    "FP16": "half_val",
    "BYTES": "string_val",
}
# The most memory one value may fill (a single float_val with a huge tensor_shape);
# the default body limit, so filling allocates no more than sending every value could.
FILL_MAX_BYTES = 64 * 2**20
# Every typed value field of TensorProto, read from the message itself.
_VALUE_FIELDS = tuple(f.name for f in pb.TensorProto.DESCRIPTOR.fields if f.name.endswith("_val"))


def dt_name(dtype: int) -> str:
    try:
        return str(pb.DataType.Name(dtype))
    except ValueError:
        return f"DataType {dtype}"


@dataclass(slots=True)
class TfsPredict:
    """A decoded PredictRequest (what the data plane needs, and the outputs asked)."""

    inputs: dict[str, Array]
    outputs: tuple[str, ...]  # the output_filter, in the model's output order
    timeout_s: float | None
    priority: int = 0


# -- decoding --------------------------------------------------------------------------


def _shape(name: str, shape: pb.TensorShapeProto) -> tuple[int, ...]:
    if shape.unknown_rank:
        raise BadInput(f"input '{name}': tensor_shape has unknown_rank set; send its dimensions")
    dims = tuple(int(d.size) for d in shape.dim)
    check_declared_shape(name, dims)
    return dims


def decode_tensor(name: str, tensor: pb.TensorProto, spec: TensorSpec | None) -> Array:
    """One input TensorProto as an array of its dtype (checked against ``spec``)."""
    datatype = V2_OF_DT.get(tensor.dtype)
    if datatype is None:
        raise BadInput(
            f"input '{name}': dtype {dt_name(tensor.dtype)} is not served; servekit takes "
            f"{', '.join(tfs.DT_NAMES.values())}"
        )
    if spec is not None and spec.datatype != datatype:
        raise BadInput(
            f"input '{name}': expected dtype {tfs.DT_NAMES[spec.datatype]}, "
            f"got {tfs.DT_NAMES[datatype]}"
        )
    shape = _shape(name, tensor.tensor_shape)
    count = math.prod(shape)
    field = _FIELD[datatype]
    given = [f for f in _VALUE_FIELDS if len(getattr(tensor, f))]
    wrong = [f for f in given if f != field]
    if wrong:
        raise BadInput(
            f"input '{name}': {tfs.DT_NAMES[datatype]} values go in {field} or tensor_content, "
            f"got {wrong[0]}"
        )
    content = tensor.tensor_content
    if content:
        if datatype == "BYTES":
            raise BadInput(f"input '{name}': DT_STRING values go in string_val")
        if given:
            raise BadInput(f"input '{name}': send tensor_content or {field}, not both")
        dtype = V2_TO_NUMPY[datatype].newbyteorder("<")
        if len(content) != count * dtype.itemsize:
            raise BadInput(
                f"input '{name}': tensor_content has {len(content)} bytes; shape {list(shape)} "
                f"of {tfs.DT_NAMES[datatype]} needs {count * dtype.itemsize}"
            )
        return np.frombuffer(content, dtype=dtype).reshape(shape)
    values = getattr(tensor, field)
    if len(values) != count and not (len(values) == 1 and count > 1):
        raise BadInput(
            f"input '{name}': {field} has {len(values)} value(s); shape {list(shape)} needs "
            f"{count} (or one, to fill the shape)"
        )
    if len(values) != count:  # one value fills the shape, as TensorFlow reads it
        if spec is not None:
            spec.check_shape(shape)  # before allocating what the shape declares
        if count * V2_TO_NUMPY[datatype].itemsize > FILL_MAX_BYTES:
            raise BadInput(
                f"input '{name}': one value fills at most {FILL_MAX_BYTES} bytes; shape "
                f"{excerpt(list(shape))} asks for more: send every value"
            )
    arr = _typed(name, datatype, field, values)
    if arr.size != count:
        arr = np.repeat(arr, count)
    return arr.reshape(shape)


def _typed(name: str, datatype: str, field: str, values: Any) -> Array:
    if datatype == "BYTES":
        arr = np.empty(len(values), dtype=np.object_)
        arr[:] = list(values)
        return arr
    if datatype == "FP16":
        bits = np.asarray(values, dtype=np.int64)
        if bits.size and (int(bits.min()) < 0 or int(bits.max()) > 0xFFFF):
            raise BadInput(f"input '{name}': half_val holds values outside 16 bits")
        return bits.astype(np.uint16).view(np.float16)
    dtype = V2_TO_NUMPY[datatype]
    wide = np.asarray(values)
    if field == "int_val" and wide.size:
        info = np.iinfo(dtype)
        if int(wide.min()) < info.min or int(wide.max()) > info.max:
            raise BadInput(
                f"input '{name}': int_val holds values outside {tfs.DT_NAMES[datatype]}'s range "
                f"[{info.min}, {info.max}]"
            )
    return wide.astype(dtype)


def decode_predict(
    request: pb.PredictRequest, model: ServedModel, deadline_s: float | None
) -> TfsPredict:
    tfs.check_signature(request.model_spec.signature_name, model)
    specs: Mapping[str, TensorSpec] = {s.name: s for s in model.inputs}
    inputs = {
        name: decode_tensor(name, tensor, specs.get(name))
        for name, tensor in request.inputs.items()
    }
    names = [s.name for s in model.outputs]
    asked = list(request.output_filter)
    unknown = [n for n in asked if n not in names]
    if unknown:
        raise BadInput(
            f"output_filter names unknown output(s) {[excerpt(n) for n in unknown[:5]]}; "
            f"the model gives {names}"
        )
    if len(set(asked)) != len(asked):
        raise BadInput(f"output_filter names an output twice: {asked}")
    return TfsPredict(
        inputs=inputs,
        outputs=tuple(n for n in names if n in asked) if asked else tuple(names),
        timeout_s=deadline_s,
    )


# -- encoding --------------------------------------------------------------------------


def encode_tensor(arr: Array, datatype: str) -> pb.TensorProto:
    tensor = pb.TensorProto(dtype=DT_OF_V2[datatype])
    for d in arr.shape:
        tensor.tensor_shape.dim.add(size=int(d))
    if datatype == "BYTES":
        tensor.string_val.extend(
            v.encode() if isinstance(v, str) else bytes(v) for v in arr.ravel().tolist()
        )
    else:
        le = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
        tensor.tensor_content = le.tobytes()
    return tensor


def _model_spec(model: ServedModel, signature_name: str = "") -> pb.ModelSpec:
    spec = pb.ModelSpec(name=model.name, signature_name=signature_name)
    spec.version.value = model.version
    return spec


def encode_predict(
    model: ServedModel, names: tuple[str, ...], outputs: Mapping[str, Array]
) -> pb.PredictResponse:
    specs = {s.name: s for s in model.outputs}
    response = pb.PredictResponse(model_spec=_model_spec(model, tfs.signature_key(model)))
    for name in names:
        response.outputs[name].CopyFrom(encode_tensor(outputs[name], specs[name].datatype))
    return response


# -- the services ----------------------------------------------------------------------


def _model_and_version(spec: pb.ModelSpec, plane: DataPlane) -> tuple[str, str | None]:
    """The model name and version (None: the newest ready) a ModelSpec asks for."""
    if not spec.name:
        raise BadInput("model_spec.name is empty: name the model")
    which = spec.WhichOneof("version_choice")
    if which == "version":
        return spec.name, str(spec.version.value)
    if which == "version_label":
        versions = [m.version for m in plane.versions(spec.name)]  # NotFound first
        raise BadInput(
            f"servekit has no version labels: model_spec.version_label "
            f"{excerpt(spec.version_label)} names no version of model '{spec.name}'; set "
            f"model_spec.version instead (versions: {versions}), or neither for the newest"
        )
    return spec.name, None


UNIMPLEMENTED: dict[tuple[str, str], str] = {
    (PREDICTION_SERVICE, "Classify"): (
        "TF Serving's Classify is not supported: servekit serves Predict only. Send the "
        "model's inputs in a PredictRequest and read its outputs (the class scores) there"
    ),
    (PREDICTION_SERVICE, "Regress"): (
        "TF Serving's Regress is not supported: servekit serves Predict only. Send the "
        "model's inputs in a PredictRequest and read its outputs there"
    ),
    (PREDICTION_SERVICE, "MultiInference"): (
        "TF Serving's MultiInference is not supported: servekit serves Predict only. Send "
        "one PredictRequest per task"
    ),
    (MODEL_SERVICE, "HandleReloadConfigRequest"): (
        "servekit does not take TF Serving's model config: it serves the models of its "
        "repository folder. Load or unload one with Triton's repository API (the admin "
        "token): POST /v2/repository/models/<name>/load, or "
        "inference.GRPCInferenceService/RepositoryModelLoad; or start it with "
        "--model-control-mode poll"
    ),
}


class Servicer:
    """TF Serving's PredictionService and ModelService, through the data plane."""

    def __init__(self, plane: DataPlane, guard: Guard, draining: Callable[[], bool]) -> None:
        self.plane = plane
        self.guard = guard
        self._draining = draining

    @unary("Predict", "model")
    async def Predict(self, request: pb.PredictRequest, context: Any) -> pb.PredictResponse:
        if self._draining():
            raise NotReady("the server is shutting down; no new requests")
        name, version = _model_and_version(request.model_spec, self.plane)
        deadline = remaining_s(context)
        # The call's cancellation cancels this task, which drops a request still queued.
        done = await self.plane.infer(
            name, version, lambda model: decode_predict(request, model, deadline)
        )
        return encode_predict(done.model, done.request.outputs, done.outputs)

    @unary("GetModelMetadata", "model")
    async def GetModelMetadata(
        self, request: pb.GetModelMetadataRequest, context: Any
    ) -> pb.GetModelMetadataResponse:
        name, version = _model_and_version(request.model_spec, self.plane)
        fields = list(request.metadata_field)
        if not fields:
            raise BadInput(f"metadata_field is empty: ask for '{SIGNATURE_DEF}'")
        unknown = [f for f in fields if f != SIGNATURE_DEF]
        if unknown:
            raise BadInput(
                f"metadata_field {[excerpt(f) for f in unknown[:5]]} not served; servekit "
                f"serves '{SIGNATURE_DEF}'"
            )
        model = self.plane.ready_model(name, version)
        signatures = json_format.ParseDict(tfs.signature_def_map(model), pb.SignatureDefMap())
        response = pb.GetModelMetadataResponse(model_spec=_model_spec(model))
        # TF Serving's type name: clients unpack it into their own SignatureDefMap.
        response.metadata[SIGNATURE_DEF].CopyFrom(
            any_pb2.Any(type_url=SIGNATURE_DEF_MAP_URL, value=signatures.SerializeToString())
        )
        return response

    @unary("GetModelStatus", "model")
    async def GetModelStatus(
        self, request: pb.GetModelStatusRequest, context: Any
    ) -> pb.GetModelStatusResponse:
        name, version = _model_and_version(request.model_spec, self.plane)
        models = self.plane.versions(name) if version is None else [self.plane.model(name, version)]
        response = pb.GetModelStatusResponse()
        json_format.ParseDict(
            {"model_version_status": [tfs.version_status(m) for m in models]}, response
        )
        return response

    def unimplemented(self, method: str, message: str) -> Callable[[bytes, Any], Awaitable[bytes]]:
        """A handler that answers UNIMPLEMENTED with ``message`` (the request unread)."""

        async def handler(request: bytes, context: Any) -> bytes:
            code = grpc.StatusCode.UNIMPLEMENTED
            self.guard.metrics.grpc_requests.labels(method, code.name).inc()
            await context.abort(code, message)
            raise AssertionError("not reached: abort raises")

        return handler


def add_to_server(server: grpc.aio.Server, servicer: Servicer) -> None:
    """Register the handlers under TF Serving's service and method names."""

    def unary_handler(fn: Any, request_type: Any, response_type: Any) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(
            fn,
            request_deserializer=request_type.FromString,
            response_serializer=response_type.SerializeToString,
        )

    handlers: dict[str, dict[str, grpc.RpcMethodHandler]] = {
        PREDICTION_SERVICE: {
            "Predict": unary_handler(servicer.Predict, pb.PredictRequest, pb.PredictResponse),
            "GetModelMetadata": unary_handler(
                servicer.GetModelMetadata, pb.GetModelMetadataRequest, pb.GetModelMetadataResponse
            ),
        },
        MODEL_SERVICE: {
            "GetModelStatus": unary_handler(
                servicer.GetModelStatus, pb.GetModelStatusRequest, pb.GetModelStatusResponse
            ),
        },
    }
    for (service, method), message in UNIMPLEMENTED.items():
        # No (de)serializers: the request's bytes are never parsed.
        handlers[service][method] = grpc.unary_unary_rpc_method_handler(
            servicer.unimplemented(method, message)
        )
    server.add_generic_rpc_handlers(
        tuple(grpc.method_handlers_generic_handler(s, h) for s, h in handlers.items())
    )
