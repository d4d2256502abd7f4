"""TF Serving's schema, shared by its REST adapter (``v1.py``) and its gRPC adapter
(``servekit.grpc.tfserving``): dtype names, a served model's signature and version
status as TF Serving writes them, and JSON with TF Serving's non-finite numbers.

The builders return TF Serving's JSON (proto3 JSON with every field printed: int64 as
strings, enums by name), which the REST API sends as it is and the gRPC API parses into
its messages (``json_format.ParseDict``), so the two cannot drift apart. No web
framework here.
"""

from __future__ import annotations

import json
import math
import re
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from servekit.errors import BadInput
from servekit.server.strictjson import TooDeep, loads_tensors
from servekit.tensors import Array, TensorSpec, excerpt

if TYPE_CHECKING:
    from servekit.repository import ServedModel

SERVING_DEFAULT = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"

# Open Inference Protocol datatype (TensorSpec.datatype) -> TF's DataType name.
DT_NAMES: dict[str, str] = {
    "FP32": "DT_FLOAT",
    "FP64": "DT_DOUBLE",
    "INT32": "DT_INT32",
    "UINT8": "DT_UINT8",
    "INT16": "DT_INT16",
    "INT8": "DT_INT8",
    "BYTES": "DT_STRING",
    "INT64": "DT_INT64",
    "BOOL": "DT_BOOL",
    "UINT16": "DT_UINT16",
    "FP16": "DT_HALF",
    "UINT32": "DT_UINT32",
    "UINT64": "DT_UINT64",
}
V2_OF_DT_NAME = {dt: v2 for v2, dt in DT_NAMES.items()}

# servekit's model states -> TF Serving's (ModelVersionStatus.State).
STATES = {"LOADING": "LOADING", "READY": "AVAILABLE", "UNLOADING": "UNLOADING"}


# -- signatures ----------------------------------------------------------------------


def signature_key(model: ServedModel) -> str:
    """The key of the model's one signature (``serving_default`` unless the model
    names another, or has none)."""
    return model.signature_key or SERVING_DEFAULT


def check_signature(name: str, model: ServedModel) -> None:
    """Accept the signature names that mean the model's one signature: none,
    ``serving_default``, or the model's own key; BadInput names the others."""
    if name in ("", SERVING_DEFAULT, model.signature_key):
        return
    own = signature_key(model)
    also = f" (or '{SERVING_DEFAULT}')" if own != SERVING_DEFAULT else ""
    raise BadInput(
        f"unknown signature_name {excerpt(name)}; model '{model.name}' serves one signature, "
        f"'{own}'{also}"
    )


def _tensor_info(spec: TensorSpec, tensor_name: str) -> dict[str, Any]:
    return {
        "dtype": DT_NAMES[spec.datatype],
        "tensor_shape": {
            "dim": [{"size": str(d), "name": ""} for d in spec.shape],
            "unknown_rank": False,
        },
        "name": tensor_name,
    }


def signature_def_map(model: ServedModel) -> dict[str, Any]:
    """The model's ``SignatureDefMap`` (its one predict signature), as TF Serving's JSON.

    Tensor names are what a TF2 SavedModel served by TF Serving shows: inputs
    ``<signature>_<input>:0``, outputs ``StatefulPartitionedCall:<i>`` in output order.
    Clients address tensors by the map keys; the names are informational.
    """
    key = signature_key(model)
    return {
        "signature_def": {
            key: {
                "inputs": {s.name: _tensor_info(s, f"{key}_{s.name}:0") for s in model.inputs},
                "outputs": {
                    s.name: _tensor_info(s, f"StatefulPartitionedCall:{i}")
                    for i, s in enumerate(model.outputs)
                },
                "method_name": PREDICT_METHOD,
            }
        }
    }


def model_spec(model: ServedModel, signature_name: str = "") -> dict[str, str]:
    return {"name": model.name, "signature_name": signature_name, "version": str(model.version)}


def version_status(model: ServedModel) -> dict[str, Any]:
    """One ``ModelVersionStatus``: a version that is not served (failed, unloaded) is
    ``END`` with error code ``UNAVAILABLE`` and servekit's reason."""
    failed = model.state not in STATES
    return {
        "version": str(model.version),
        "state": STATES.get(model.state, "END"),
        "status": {
            "error_code": "UNAVAILABLE" if failed else "OK",
            "error_message": model.reason,
        },
    }


# -- JSON with non-finite numbers ------------------------------------------------------

# TF Serving writes non-finite floats as these bare words, and reads them.
_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_FRAGMENTS = {
    "nan": orjson.Fragment(b"NaN"),
    "inf": orjson.Fragment(b"Infinity"),
    "-inf": orjson.Fragment(b"-Infinity"),
}
_NONFINITE_WORD = re.compile(rb"NaN|Infinity")


def loads(body: bytes | memoryview) -> Any:
    """A request body as TF Serving reads it: strict JSON (orjson, no duplicate keys;
    large numeric arrays straight into numpy, ``strictjson.loads_tensors``), plus the
    bare words ``NaN``, ``Infinity`` and ``-Infinity`` for non-finite numbers.

    orjson refuses those words, so only a body that has them is parsed again with the
    standard library (slower), under the same rules: duplicate keys and numbers too
    large for a double are refused. Whether the model takes non-finite values is the
    model's ``allow_nonfinite`` (checked with its inputs).
    """
    try:
        return loads_tensors(body)
    except BadInput as first:
        raw = bytes(body)
        if isinstance(first, TooDeep) or not _NONFINITE_WORD.search(raw):
            raise
        seen = False

        def constant(word: str) -> float:
            nonlocal seen
            seen = True
            return _NONFINITE[word]

        try:
            data = json.loads(
                raw,
                parse_constant=constant,
                parse_float=_finite_float,
                object_pairs_hook=_unique_keys,
            )
        except _DuplicateKey:
            raise BadInput("duplicate keys in a JSON object; each key may appear once") from None
        except (ValueError, RecursionError):  # not JSON even with the words
            raise first from None
        if not seen:  # the words were inside strings: orjson's error stands
            raise first from None
        return data


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text[:32]} is too large for a double")
    return value


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise _DuplicateKey
    return out


def jsonable(arr: Array) -> Any:
    """An output array as orjson writes it in TF Serving's JSON: float16 as float32,
    strings decoded (UTF-8, invalid bytes replaced), non-finite floats as ``NaN``,
    ``Infinity`` and ``-Infinity`` (orjson alone writes them as null)."""
    kind = arr.dtype.kind
    if kind in ("O", "S", "U"):
        return _strings(arr.tolist())
    if arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    if kind == "f" and not np.isfinite(arr).all():
        return _nest([_FRAGMENTS.get(str(v), v) for v in arr.ravel()], arr.shape)
    return arr if arr.flags.c_contiguous else np.ascontiguousarray(arr)


def _strings(value: Any) -> Any:
    if isinstance(value, list):
        return [_strings(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def _nest(flat: list[Any], shape: tuple[int, ...]) -> Any:
    """``flat`` (row-major) as nested lists of ``shape``."""
    if not shape:
        return flat[0]
    if len(shape) == 1:
        return flat
    step = math.prod(shape[1:])
    return [_nest(flat[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]
