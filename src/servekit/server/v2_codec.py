"""Open Inference Protocol v2 wire format: infer requests in, infer responses out.

Framework-free on purpose (bytes, dicts and numpy arrays only), so every rule is easy
to unit-test. What this module decides:

- the JSON request object: ``id``, ``parameters`` (``timeout``, ``priority``,
  ``binary_data_output``), ``inputs`` (``name``, ``shape``, ``datatype``, ``data`` flat
  or nested row-major) and the optional ``outputs`` filter;
- the binary tensor data extension: ``Inference-Header-Content-Length`` splits the
  body into the JSON header and the raw tensor bytes, read in input order with
  ``numpy.frombuffer`` (no copy); BYTES elements carry a 4-byte little-endian length;
  a header length of 0 (or a header-less ``application/octet-stream`` body) on a
  single-input model makes the whole body that input's bytes;
- the response, JSON or JSON header + binary outputs.

It checks what only the wire format knows (datatype names, the declared datatype
against the model's, element and byte counts); names, shapes, ranges and batch sizes
are left to :func:`servekit.tensors.check_inputs`, shared with every protocol.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from servekit.errors import BadInput, PayloadTooLarge
from servekit.server.strictjson import loads_tensors
from servekit.tensors import (
    V2_TO_NUMPY,
    Array,
    TensorSpec,
    check_declared_shape,
    coerce_array,
    coerce_json_values,
    excerpt,
    v2_datatype,
)

HEADER_LENGTH = "inference-header-content-length"
JSON_CONTENT_TYPE = "application/json"
BINARY_CONTENT_TYPE = "application/octet-stream"

# Extensions of the protocol this codec implements, for GET /v2.
EXTENSIONS = (
    "binary_tensor_data",
    "schedule_policy",
    "model_repository",
    "model_configuration",
    "statistics",
)

UINT64_MAX = 2**64 - 1
_HEADER_LENGTH = re.compile(r"[0-9]{1,19}")
_BYTES_PREFIX = np.dtype("<u4")
_DATATYPES = ", ".join(V2_TO_NUMPY)
# Request parameters of Triton's sequence batcher: refused, servekit has no sequences.
_SEQUENCE_PARAMETERS = ("sequence_id", "sequence_start", "sequence_end")


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    name: str
    binary: bool


@dataclass(slots=True)
class InferRequest:
    """A decoded infer request, ready for ``ServedModel.infer``."""

    inputs: dict[str, Array]
    id: str | None = None
    # The outputs asked for, in the order asked; None means every output of the model.
    outputs: tuple[RequestedOutput, ...] | None = None
    # Request-level ``binary_data_output``: the default of outputs not asked by name.
    binary_output: bool = False
    # ``parameters.timeout`` in seconds (None: the model's timeout).
    timeout_s: float | None = None
    # ``parameters.priority`` mapped onto the batcher (lower is served first, 0 default).
    priority: int = 0


# -- small helpers ---------------------------------------------------------------------


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array"}.get(
        type(value), "object" if isinstance(value, dict) else type(value).__name__
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _object(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadInput(f"{what} must be a JSON object, got {_type_name(value)}: {excerpt(value)}")
    return value


def _shape_text(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def batcher_priority(priority: int) -> int:
    """Map a V2 ``priority`` onto the batcher's order (lower numbers served first).

    Triton: 1 is the highest level, larger numbers are lower priority, and 0 (or no
    priority) means the model's default level. servekit has no per-model priority
    configuration, so the default level sits between 1 and 2: priority 1 goes ahead of
    default traffic, 2, 3, ... yield to it (and to each other in that order), and 0
    stays the batcher's default 0. So ``1 < 0 < 2 < 3 < ...``.
    """
    if priority == 0:
        return 0
    if priority == 1:
        return -1
    return priority - 1


# -- the body ----------------------------------------------------------------------------


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo a request ``Content-Encoding`` (gzip or deflate), refusing more than ``limit``."""
    enc = (encoding or "identity").strip().lower()
    if enc == "identity":
        return body
    if enc not in ("gzip", "deflate"):
        raise BadInput(
            f"Content-Encoding {excerpt(encoding)} is not supported; send the body "
            f"uncompressed, gzip or deflate"
        )
    # gzip: wbits 16+15; deflate (zlib format, what tritonclient sends): 15.
    d = zlib.decompressobj(31 if enc == "gzip" else 15)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as e:
        raise BadInput(f"Content-Encoding {enc}: the body is not valid {enc} data ({e})") from None
    if len(out) > limit or d.unconsumed_tail:
        raise PayloadTooLarge(f"request body is over the limit of {limit} bytes once decompressed")
    if not d.eof:
        raise BadInput(f"Content-Encoding {enc}: the compressed body is truncated")
    return out


def split_body(
    body: bytes, header_length: str | None, content_type: str | None
) -> tuple[memoryview | None, int]:
    """Split a request body into its JSON header and where the binary data starts.

    Returns ``(header, offset)``: the header is None for a raw body (no JSON at all,
    the whole body is the one input's bytes), and ``offset`` is where tensor bytes
    begin in ``body``.
    """
    view = memoryview(body)
    if header_length is None:
        media = (content_type or "").split(";", 1)[0].strip().lower()
        if media == BINARY_CONTENT_TYPE:
            return None, 0
        return view, len(body)
    text = header_length.strip()
    # ASCII digits only (str.isdigit also takes '²'), and no more than a length needs.
    if not _HEADER_LENGTH.fullmatch(text):
        raise BadInput(
            f"Inference-Header-Content-Length must be a non-negative integer, got "
            f"{excerpt(header_length)}"
        )
    n = int(text)
    if n == 0:
        return None, 0
    if n > len(body):
        raise BadInput(
            f"Inference-Header-Content-Length {n} is past the end of the body ({len(body)} bytes)"
        )
    return view[:n], n


def _load_json(header: memoryview) -> dict[str, Any]:
    data = loads_tensors(header, "a JSON inference request object")
    return _object(data, "the inference request")


# -- decoding ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ParsedBody:
    """A request body split and its JSON header parsed: all that needs no model (so it
    can run off the event loop, before the model is chosen)."""

    body: bytes
    header: dict[str, Any] | None  # None: a raw body, the one input's bytes
    offset: int  # where binary tensor data begins in ``body``


def parse_body(
    body: bytes,
    *,
    header_length: str | None,
    content_type: str | None,
    max_json_bytes: int | None = None,
) -> ParsedBody:
    """Split a (decompressed) request body and parse its JSON header, numeric ``data``
    arrays straight into numpy (``strictjson.loads_tensors``); PayloadTooLarge for a
    JSON header over ``max_json_bytes``."""
    header, offset = split_body(body, header_length, content_type)
    if header is None:
        return ParsedBody(body, None, offset)
    if max_json_bytes is not None and len(header) > max_json_bytes:
        raise PayloadTooLarge(
            f"the JSON request is {len(header)} bytes, over the limit of {max_json_bytes} "
            "bytes for JSON (SERVEKIT_MAX_JSON_BYTES); send large tensors as binary data "
            "(the binary tensor extension)"
        )
    return ParsedBody(body, _load_json(header), offset)


def decode_request(
    body: bytes,
    *,
    header_length: str | None,
    content_type: str | None,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[str],
) -> InferRequest:
    """Decode an infer request body against the model's input specs and output names."""
    parsed = parse_body(body, header_length=header_length, content_type=content_type)
    return decode_parsed(parsed, inputs=inputs, outputs=outputs)


def decode_parsed(
    parsed: ParsedBody, *, inputs: Sequence[TensorSpec], outputs: Sequence[str]
) -> InferRequest:
    """A parsed body's infer request, checked against the model's specs and outputs."""
    body, request, offset = parsed.body, parsed.header, parsed.offset
    if request is None:
        return InferRequest(
            inputs=decode_raw(body, inputs), binary_output=True, outputs=None, id=None
        )
    # Other fields are ignored, as Triton does (clients send e.g. "model_name").
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadInput(f"'id' must be a string, got {_type_name(request_id)}")
    params = _object(request.get("parameters", {}), "'parameters'")
    for key in _SEQUENCE_PARAMETERS:
        if params.get(key) not in (None, 0, "", False):
            raise BadInput(
                f"parameter '{key}' is not supported: servekit has no sequence batching "
                f"(got {excerpt(params[key])})"
            )
    binary_output = _flag(params, "binary_data_output")
    return InferRequest(
        inputs=_decode_inputs(request.get("inputs"), body, offset, inputs),
        id=request_id,
        outputs=_decode_outputs(request.get("outputs"), outputs, binary_output),
        binary_output=binary_output,
        timeout_s=_timeout(params),
        priority=batcher_priority(_priority(params)),
    )


def _flag(params: Mapping[str, Any], key: str) -> bool:
    value = params.get(key, False)
    if not isinstance(value, bool):
        raise BadInput(f"parameter '{key}' must be true or false, got {excerpt(value)}")
    return value


def _timeout(params: Mapping[str, Any]) -> float | None:
    """``parameters.timeout``: microseconds; 0 or absent keeps the model's timeout."""
    if "timeout" not in params:
        return None
    value = params["timeout"]
    if not _is_int(value) or not 0 <= value <= UINT64_MAX:
        raise BadInput(
            f"parameter 'timeout': expected a non-negative integer number of microseconds, "
            f"got {excerpt(value)}"
        )
    return value / 1e6 if value else None


def _priority(params: Mapping[str, Any]) -> int:
    """``parameters.priority``: 0 (default level) or 1 (highest), 2, ... (lower)."""
    value = params.get("priority", 0)
    if not _is_int(value) or not 0 <= value <= UINT64_MAX:
        raise BadInput(
            f"parameter 'priority': expected an integer >= 0 (1 is the highest, 0 the "
            f"default), got {excerpt(value)}"
        )
    return int(value)


def _decode_outputs(
    value: object, names: Sequence[str], binary_default: bool
) -> tuple[RequestedOutput, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise BadInput(f"'outputs' must be an array of objects, got {_type_name(value)}")
    out: list[RequestedOutput] = []
    seen: set[str] = set()
    for i, item in enumerate(value):
        obj = _object(item, f"outputs[{i}]")
        name = obj.get("name")
        if not isinstance(name, str):
            raise BadInput(f"outputs[{i}]: 'name' must be a string, got {excerpt(name)}")
        if name not in names:
            raise BadInput(f"unknown output {excerpt(name)}; the model has {list(names)}")
        if name in seen:
            raise BadInput(f"output '{name}' is asked for twice")
        seen.add(name)
        params = _object(obj.get("parameters", {}), f"output '{name}': 'parameters'")
        for key in ("classification", "shared_memory_region"):
            if key in params:
                raise BadInput(f"output '{name}': parameter '{key}' is not supported")
        binary = params.get("binary_data")
        if binary is not None and not isinstance(binary, bool):
            raise BadInput(
                f"output '{name}': parameter 'binary_data' must be true or false, got "
                f"{excerpt(binary)}"
            )
        # An output's own binary_data overrides the request's binary_data_output.
        out.append(RequestedOutput(name, binary_default if binary is None else binary))
    return tuple(out)


def _decode_inputs(
    value: object, body: bytes, offset: int, specs: Sequence[TensorSpec]
) -> dict[str, Array]:
    if value is None:
        raise BadInput(
            f"missing 'inputs': send an array of {{name, shape, datatype, data}}; the "
            f"model takes {[s.name for s in specs]}"
        )
    if not isinstance(value, list):
        raise BadInput(f"'inputs' must be an array of objects, got {_type_name(value)}")
    by_name = {s.name: s for s in specs}
    arrays: dict[str, Array] = {}
    for i, item in enumerate(value):
        obj = _object(item, f"inputs[{i}]")
        name = obj.get("name")
        if not isinstance(name, str):
            raise BadInput(f"inputs[{i}]: 'name' must be a string, got {excerpt(name)}")
        if name in arrays:
            raise BadInput(f"input '{name}' is given twice")
        arr, offset = _decode_input(name, obj, body, offset, by_name.get(name))
        arrays[name] = arr
    if offset != len(body):
        raise BadInput(
            f"{len(body) - offset} byte(s) of binary data after the last binary input are "
            f"not used by any input; check each input's binary_data_size"
        )
    return arrays


def _decode_input(
    name: str, obj: Mapping[str, Any], body: bytes, offset: int, spec: TensorSpec | None
) -> tuple[Array, int]:
    datatype = obj.get("datatype")
    if not isinstance(datatype, str) or datatype not in V2_TO_NUMPY:
        raise BadInput(
            f"input '{name}': unknown datatype {excerpt(datatype)}; expected one of {_DATATYPES}"
        )
    if spec is not None and spec.datatype != datatype:
        raise BadInput(f"input '{name}': expected datatype {spec.datatype}, got {datatype}")
    shape = _shape(name, obj.get("shape"))
    params = _object(obj.get("parameters", {}), f"input '{name}': 'parameters'")
    if "shared_memory_region" in params:
        raise BadInput(f"input '{name}': parameter 'shared_memory_region' is not supported")
    size = params.get("binary_data_size")
    has_data = "data" in obj
    if size is not None:
        if has_data:
            raise BadInput(f"input '{name}': send either 'data' or binary_data_size, not both")
        if not _is_int(size) or size < 0:
            raise BadInput(
                f"input '{name}': binary_data_size must be a non-negative integer, got "
                f"{excerpt(size)}"
            )
        left = len(body) - offset
        if size > left:
            raise BadInput(
                f"input '{name}': binary_data_size {size} runs past the end of the body "
                f"(only {left} byte(s) of binary data left)"
            )
        arr = decode_binary(name, datatype, shape, body, offset, size)
        return arr, offset + size
    if not has_data:
        raise BadInput(
            f"input '{name}': no 'data' and no binary_data_size parameter; send the values "
            f"as 'data' or as binary data"
        )
    return decode_json_data(name, datatype, shape, obj["data"], spec), offset


def _shape(name: str, value: object) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(_is_int(d) and d >= 0 for d in value):
        raise BadInput(
            f"input '{name}': 'shape' must be an array of non-negative integers, got "
            f"{excerpt(value)}"
        )
    check_declared_shape(name, value)
    return tuple(value)


def decode_json_data(
    name: str,
    datatype: str,
    shape: tuple[int, ...],
    data: object,
    spec: TensorSpec | None = None,
) -> Array:
    """``data`` (flat or nested, row-major) as an array of ``shape`` and ``datatype``."""
    if isinstance(data, np.ndarray):  # numbers read straight into numpy
        if datatype == "BYTES":
            data = data.tolist()  # refused below, as the same numbers in a list are
        else:
            return _numeric_data(name, datatype, shape, data, spec)
    if not isinstance(data, list):
        raise BadInput(f"input '{name}': 'data' must be an array, got {_type_name(data)}")
    count = math.prod(shape)
    if datatype == "BYTES":
        flat = _flatten_bytes(name, data)
        if len(flat) != count:
            raise BadInput(
                f"input '{name}': shape {_shape_text(shape)} needs {count} element(s), "
                f"got {len(flat)} in 'data'"
            )
        arr = np.empty(count, dtype=np.object_)
        arr[:] = flat
        return arr.reshape(shape)
    target = spec or TensorSpec(name, V2_TO_NUMPY[datatype], shape)
    exact = _exact_uint64(name, data) if datatype == "UINT64" else None
    values = coerce_json_values(name, data, target) if exact is None else exact
    if values.size != count:
        raise BadInput(
            f"input '{name}': shape {_shape_text(shape)} needs {count} value(s), got "
            f"{values.size} in 'data'"
        )
    return values.reshape(shape)


def _numeric_data(
    name: str, datatype: str, shape: tuple[int, ...], data: Array, spec: TensorSpec | None
) -> Array:
    """``data`` that ``loads_tensors`` read as numbers (float64, or int64 for integers):
    checked and cast as the shared coercion does lists of the same numbers."""
    count = math.prod(shape)
    target = spec or TensorSpec(name, V2_TO_NUMPY[datatype], shape)
    values = coerce_array(name, data, target)
    if values.size != count:
        raise BadInput(
            f"input '{name}': shape {_shape_text(shape)} needs {count} value(s), got "
            f"{values.size} in 'data'"
        )
    return values.reshape(shape)


def _exact_uint64(name: str, data: list[Any]) -> Array | None:
    """UINT64 integers as sent: numpy reads ints past 2**63 - 1 as float64 (inexact).

    None when the values are not all integers; the shared coercion then decides.
    """
    try:
        obj = np.asarray(data, dtype=np.object_)
    except (ValueError, TypeError):
        return None
    if not obj.size or not all(_is_int(v) for v in obj.flat):
        return None
    try:
        return obj.astype(np.uint64)
    except OverflowError:
        raise BadInput(f"input '{name}': values must lie in [0, {UINT64_MAX}] for uint64") from None


def _flatten_bytes(name: str, data: list[Any]) -> list[bytes]:
    out: list[bytes] = []
    stack: list[Iterable[Any]] = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            if isinstance(item, str):
                out.append(item.encode("utf-8"))
            elif isinstance(item, bytes):
                out.append(item)
            else:
                raise BadInput(
                    f"input '{name}': BYTES values must be strings, got {_type_name(item)} "
                    f"{excerpt(item)}"
                )
        else:
            stack.pop()
    return out


def decode_binary(
    name: str, datatype: str, shape: tuple[int, ...], body: bytes, offset: int, size: int
) -> Array:
    """``size`` bytes of ``body`` at ``offset`` as a ``shape`` array (a view, no copy)."""
    count = math.prod(shape)
    if datatype == "BYTES":
        return deserialize_bytes(name, memoryview(body)[offset : offset + size], count).reshape(
            shape
        )
    dtype = V2_TO_NUMPY[datatype].newbyteorder("<")
    want = count * dtype.itemsize
    if size != want:
        raise BadInput(
            f"input '{name}': binary_data_size is {size} bytes, but shape "
            f"{_shape_text(shape)} of {datatype} needs {count} x {dtype.itemsize} = {want} bytes"
        )
    arr = np.frombuffer(body, dtype=dtype, count=count, offset=offset)
    if datatype == "BOOL" and count and arr.view(np.uint8).max() > 1:
        raise BadInput(f"input '{name}': BOOL bytes must be 0 or 1")
    return arr.reshape(shape)


def deserialize_bytes(name: str, buf: memoryview | bytes, count: int | None = None) -> Array:
    """BYTES elements, each a 4-byte little-endian length then that many bytes."""
    view = memoryview(buf)
    items: list[bytes] = []
    pos, end = 0, len(view)
    while pos < end:
        if end - pos < 4:
            raise BadInput(
                f"input '{name}': BYTES data ends inside a 4-byte length prefix "
                f"(element {len(items)})"
            )
        n = int.from_bytes(view[pos : pos + 4], "little")
        pos += 4
        if n > end - pos:
            raise BadInput(
                f"input '{name}': BYTES element {len(items)} says {n} bytes, only {end - pos} left"
            )
        items.append(bytes(view[pos : pos + n]))
        pos += n
        if count is not None and len(items) > count:
            break
    if count is not None and len(items) != count:
        raise BadInput(
            f"input '{name}': expected {count} BYTES element(s) for its shape, got "
            f"{'more' if len(items) > count else len(items)}"
        )
    arr = np.empty(len(items), dtype=np.object_)
    arr[:] = items
    return arr


def serialize_bytes(arr: Array) -> bytes:
    """A BYTES tensor as 4-byte little-endian length-prefixed elements (row-major)."""
    parts: list[bytes] = []
    for item in arr.reshape(-1).tolist():
        b = item if isinstance(item, bytes) else str(item).encode("utf-8")
        parts.append(len(b).to_bytes(4, "little"))
        parts.append(b)
    return b"".join(parts)


def decode_raw(body: bytes, specs: Sequence[TensorSpec]) -> dict[str, Array]:
    """A body with no JSON header: all of it is the one input's raw bytes."""
    if len(specs) != 1:
        raise BadInput(
            f"a request without a JSON header (Inference-Header-Content-Length: 0 or an "
            f"application/octet-stream body) needs a single-input model; this model takes "
            f"{[s.name for s in specs]}"
        )
    spec = specs[0]
    if not body:
        raise BadInput(f"input '{spec.name}': the raw request body is empty")
    if spec.dtype.kind == "O":
        if any(d not in (-1, 1) for d in spec.shape):
            raise BadInput(
                f"input '{spec.name}': a raw BYTES body is one element, but the input's "
                f"shape is {list(spec.shape)}; send a JSON header"
            )
        arr = np.empty(1, dtype=np.object_)
        arr[0] = bytes(body)
        return {spec.name: arr.reshape([1] * len(spec.shape))}
    variable = [i for i, d in enumerate(spec.shape) if d < 0]
    if len(variable) > 1:
        raise BadInput(
            f"input '{spec.name}': shape {list(spec.shape)} has more than one variable "
            f"dimension, so a raw body cannot say its shape; send a JSON header"
        )
    dtype = spec.dtype.newbyteorder("<")
    fixed = math.prod(d for d in spec.shape if d >= 0)
    unit = fixed * dtype.itemsize
    inner = " x ".join(str(d) for d in spec.shape if d >= 0) or "1"
    if not variable:
        if len(body) != unit:
            raise BadInput(
                f"input '{spec.name}': a raw body must be {unit} bytes "
                f"({list(spec.shape)} of {spec.datatype}), got {len(body)}"
            )
        shape = spec.shape
    else:
        if unit == 0 or len(body) % unit:
            raise BadInput(
                f"input '{spec.name}': a raw body must be a whole number of rows of "
                f"{inner} {spec.datatype} ({unit} bytes each), got {len(body)} bytes"
            )
        shape = tuple(len(body) // unit if d < 0 else d for d in spec.shape)
    arr = np.frombuffer(body, dtype=dtype).reshape(shape)
    if spec.dtype.kind == "b" and arr.size and arr.view(np.uint8).max() > 1:
        raise BadInput(f"input '{spec.name}': BOOL bytes must be 0 or 1")
    return {spec.name: arr}


# -- encoding ----------------------------------------------------------------------------


def _json_data(arr: Array) -> Array | list[Any]:
    """The flat row-major data of an output in a form orjson writes."""
    flat = arr.reshape(-1)
    if flat.dtype == np.float16:
        return flat.astype(np.float32)
    if flat.dtype.kind in ("O", "S", "U"):
        return [
            v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in flat.tolist()
        ]
    if not flat.dtype.isnative:
        flat = flat.astype(flat.dtype.newbyteorder("="))
    return np.ascontiguousarray(flat)


def _binary_data(arr: Array) -> bytes | memoryview:
    if arr.dtype.kind in ("O", "S", "U"):
        return serialize_bytes(arr)
    le = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
    # A byte view of the array: joined into the body without an extra copy.
    return le.reshape(-1).data.cast("B")


def encode_response(
    *,
    model_name: str,
    model_version: str,
    request: InferRequest,
    outputs: Mapping[str, Array],
    order: Sequence[str],
) -> tuple[bytes, int | None]:
    """The response body and, when any output is binary, the JSON header's length."""
    wanted = request.outputs or tuple(RequestedOutput(n, request.binary_output) for n in order)
    entries: list[dict[str, Any]] = []
    buffers: list[bytes | memoryview] = []
    for o in wanted:
        arr = outputs[o.name]
        entry: dict[str, Any] = {
            "name": o.name,
            "datatype": v2_datatype(arr.dtype),
            "shape": list(arr.shape),
        }
        if o.binary:
            buf = _binary_data(arr)
            entry["parameters"] = {"binary_data_size": len(buf)}
            buffers.append(buf)
        else:
            entry["data"] = _json_data(arr)
        entries.append(entry)
    response: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request.id is not None:
        response["id"] = request.id
    response["outputs"] = entries
    header = orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY)
    if not buffers:
        return header, None
    return b"".join([header, *buffers]), len(header)
