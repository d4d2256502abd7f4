"""The ONNX Runtime backend: ``model.onnx`` files, run on the CPU execution provider.

onnxruntime is an optional dependency (the ``onnx`` extra): it is imported
the first time an ONNX model loads, so a server of TFLite models never needs it.

What servekit serves of an ONNX graph:

- Its required inputs. Initializers that are also graph inputs (ONNX Runtime's
  "overridable initializers", inputs with a default) keep their default: a request
  cannot set them, since they have no rows to batch. They are named in a log line.
- Its tensor outputs of a type the Open Inference Protocol names (string tensors are
  BYTES, numpy object arrays of ``str``). Other outputs (a ZipMap's sequence of maps,
  bfloat16, ...) are left out with one warning; inputs of such types refuse the model.
- Symbolic and unknown dimensions as -1. The batch dimension is dynamic when every
  input's first dimension is symbolic; a fixed first dimension is the model's batch.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from servekit.errors import BadInput, InferenceFailed
from servekit.runtime.base import Backend, ModelSignature, threads_of
from servekit.tensors import Array, TensorSpec

if TYPE_CHECKING:
    from servekit.config import GraphOptimization, ModelConfig

log = logging.getLogger(__name__)

# servekit is installed from its checkout, not an index: the runtime by its own name.
INSTALL_HINT = "pip install onnxruntime"

_OPTIMIZATION_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}

# ONNX Runtime's tensor element types that have a V2 datatype, as numpy dtypes.
ORT_TO_NUMPY: dict[str, np.dtype[Any]] = {
    "tensor(bool)": np.dtype(np.bool_),
    "tensor(uint8)": np.dtype(np.uint8),
    "tensor(uint16)": np.dtype(np.uint16),
    "tensor(uint32)": np.dtype(np.uint32),
    "tensor(uint64)": np.dtype(np.uint64),
    "tensor(int8)": np.dtype(np.int8),
    "tensor(int16)": np.dtype(np.int16),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(float)": np.dtype(np.float32),
    "tensor(double)": np.dtype(np.float64),
    "tensor(string)": np.dtype(np.object_),
}


@functools.cache
def _ort() -> Any:
    """The onnxruntime module, imported on first use."""
    try:
        import onnxruntime
    except ImportError as e:
        raise BadInput(
            f"ONNX Runtime is not installed ({e}): {INSTALL_HINT} to serve .onnx models"
        ) from None
    # A server sends no usage data of its own accord (newer onnxruntime releases do by
    # default); ORT_DISABLE_TELEMETRY=0 in the environment is the user's choice to.
    if os.environ.get("ORT_DISABLE_TELEMETRY") != "0":
        disable = getattr(onnxruntime, "disable_telemetry_events", None)
        if callable(disable):
            disable()
    return onnxruntime


def runtime_name() -> str:
    try:
        return f"onnxruntime {_ort().__version__}"
    except BadInput:
        return "onnxruntime (not installed)"


# -- errors ---------------------------------------------------------------------------

# "[ONNXRuntimeError] : 1 : FAIL : " in front of every message of the runtime's own.
_STATUS_PREFIX = re.compile(r"^\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*(\w+)\s*:\s*")
# "/onnxruntime_src/onnxruntime/core/graph/model_load_utils.h:46 " (a source location).
_SOURCE_LOCATION = re.compile(r"(?:[\w.+-]*/)*[\w.+-]+\.(?:cc|cpp|cxx|c|h|hpp):\d+\s*")


def _drop_signature(text: str) -> str:
    """A C++ function signature at the start of ``text`` ("void ns::F(const T&, int) ")
    removed: the runtime puts one after a source location."""
    open_at = text.find("(")
    if open_at < 0 or "::" not in text[:open_at] or " " not in text[:open_at].strip():
        return text
    depth = 0
    for i in range(open_at, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return text[i + 1 :].lstrip()
    return text


def _shorten(text: str, limit: int = 300) -> str:
    """A long message as its first and last sentences (the runtime often puts the
    detail that matters last: "... is till opset 28.")."""
    if len(text) <= limit:
        return text
    *sentences, last = re.split(r"(?<=\.)\s+", text)
    kept = ""
    for s in sentences:
        if len(kept) + len(s) + len(last) + 6 > limit:
            break
        kept += s + " "
    text = f"{kept}... {last}" if kept else text
    return text if len(text) <= limit else text[: limit - 3] + "..."


def error_text(e: BaseException) -> str:
    """ONNX Runtime's message in one line, without its source paths:
    '[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got invalid dimensions for input: x ...'
    reads 'ONNX Runtime (INVALID_ARGUMENT): Got invalid dimensions for input: x ...'.
    The one place where the runtime's exceptions (its own classes, ValueError,
    RuntimeError, ...) become text."""
    text = " ".join(str(e).split())
    status = ""
    m = _STATUS_PREFIX.match(text)
    if m:
        status, text = m[1], text[m.end() :]
    located = _SOURCE_LOCATION.search(text)
    if located:
        text = text[: located.start()] + _drop_signature(text[located.end() :])
    text = _shorten(text.strip() or type(e).__name__)
    return f"ONNX Runtime ({status}): {text}" if status else f"ONNX Runtime: {text}"


# -- reading --------------------------------------------------------------------------


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _top_level_fields(data: bytes) -> dict[int, int]:
    """Field number -> wire type of each top-level protobuf field; ValueError unless
    the bytes are well-formed protobuf to the end."""
    fields: dict[int, int] = {}
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ValueError("field number 0")
        if wire == 0:
            _, pos = _varint(data, pos)
        elif wire == 1:
            pos += 8
        elif wire == 2:
            length, pos = _varint(data, pos)
            pos += length
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"wire type {wire}")
        if pos > len(data):
            raise ValueError("truncated field")
        fields.setdefault(number, wire)
    return fields


# ModelProto: ir_version = 1 (varint), graph = 7 (a message).
_IR_VERSION, _GRAPH = 1, 7


def read_model_bytes(path: Path) -> bytes:
    """Read a .onnx file, refusing anything that is not an ONNX model (a protobuf
    ModelProto with an IR version and a graph)."""
    try:
        content = path.read_bytes()
    except OSError as e:
        raise BadInput(f"cannot read model file {path}: {e.strerror or e}") from None
    try:
        fields = _top_level_fields(content)
    except ValueError:
        fields = {}
    if fields.get(_IR_VERSION) != 0 or fields.get(_GRAPH) != 2:
        raise BadInput(
            f"{path} is not an ONNX model (no protobuf ModelProto with an IR version and a graph)"
        )
    return content


# -- the session ----------------------------------------------------------------------


def _shape(shape: Any) -> tuple[int, ...]:
    """ONNX Runtime's shape (ints, symbolic names, None) with -1 for every unknown."""
    return tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (shape or ()))


def _read_signature(session: Any) -> tuple[ModelSignature, list[str]]:
    """The signature of the tensors servekit serves, and the runtime output names."""
    inputs = []
    for i, arg in enumerate(session.get_inputs()):
        dtype = ORT_TO_NUMPY.get(arg.type)
        if dtype is None:
            raise BadInput(
                f"input '{arg.name}' is of type {arg.type}, which servekit cannot take "
                f"(tensors of {', '.join(t[7:-1] for t in ORT_TO_NUMPY)})"
            )
        if not arg.shape:
            raise BadInput(
                f"input '{arg.name}' has no dimensions in the model (a scalar, or its rank "
                "is unknown): servekit's inputs start with a batch dimension"
            )
        inputs.append(TensorSpec(arg.name, dtype, _shape(arg.shape), index=i))
    outputs, skipped = [], []
    for i, arg in enumerate(session.get_outputs()):
        dtype = ORT_TO_NUMPY.get(arg.type)
        if dtype is None:
            skipped.append(f"'{arg.name}' ({arg.type})")
            continue
        outputs.append(TensorSpec(arg.name, dtype, _shape(arg.shape), index=i))
    if not inputs:
        raise BadInput("the model has no inputs a request can set")
    if not outputs:
        raise BadInput(f"the model has no tensor outputs servekit can send (it has {skipped})")
    meta = session.get_modelmeta()
    graph = f"ONNX graph {meta.graph_name!r} ({meta.producer_name or 'unknown producer'})"
    if skipped:
        log.warning(
            "%s: leaving out output(s) %s: not a tensor type servekit can send (a "
            "scikit-learn classifier converted with options={'zipmap': False} gives a tensor)",
            graph,
            ", ".join(skipped),
        )
    defaults = [arg.name for arg in session.get_overridable_initializers()]
    if defaults:
        log.info("%s: inputs with a default, not settable by requests: %s", graph, defaults)
    firsts = {s.shape[0] for s in inputs if s.shape}
    fixed = firsts - {-1}
    native = fixed.pop() if len(fixed) == 1 else None
    signature = ModelSignature(tuple(inputs), tuple(outputs), None, native)
    return signature, [s.name for s in outputs]


def session_options(threads: int, optimization: GraphOptimization) -> Any:
    """One instance's options: ``threads`` for an op (the calling thread is one of
    them), no parallel ops, and idle threads sleep instead of spinning: on a small
    machine with several instances a spinning pool takes cores from the others."""
    ort = _ort()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.graph_optimization_level = getattr(
        ort.GraphOptimizationLevel, _OPTIMIZATION_LEVELS[optimization]
    )
    options.log_severity_level = 3  # errors only: servekit logs what matters itself
    return options


def _as_text(arr: Array) -> Array:
    """A BYTES input as ONNX Runtime takes strings: ``str`` elements (bytes decoded as
    UTF-8; it would turn b'a' into the text "b'a'")."""
    flat = arr.reshape(-1)
    if all(type(v) is str for v in flat.tolist()):
        return arr
    out = np.empty(flat.shape, dtype=np.object_)
    for i, v in enumerate(flat.tolist()):
        if isinstance(v, bytes):
            try:
                v = v.decode("utf-8")
            except UnicodeDecodeError:
                raise InferenceFailed(
                    f"ONNX Runtime: string element {i} is not UTF-8 text ({v[:20]!r})"
                ) from None
        out[i] = v if isinstance(v, str) else str(v)
    return out.reshape(arr.shape)


def _as_unicode(arr: Array) -> Array:
    """A string output (ONNX Runtime gives an object array of ``str``) as a numpy
    unicode array, whose rows are numpy values like every other output's (a row of a
    1-D object array is a bare ``str``, which the batch-safety check cannot compare).
    Kept as objects if a string ends in NUL: numpy's unicode arrays drop those."""
    items = arr.reshape(-1).tolist()
    if any(isinstance(v, str) and v.endswith("\x00") for v in items):
        return arr
    return np.array(items, dtype=np.str_).reshape(arr.shape)


class OnnxSession:
    """One ONNX Runtime ``InferenceSession``. Any row count runs as is: the runtime
    plans memory per shape, there is nothing to resize."""

    def __init__(
        self, content: bytes, num_threads: int = 1, optimization: GraphOptimization = "all"
    ) -> None:
        ort = _ort()
        try:
            self._session = ort.InferenceSession(
                content,
                sess_options=session_options(num_threads, optimization),
                providers=["CPUExecutionProvider"],
            )
        except Exception as e:  # the runtime's own classes, each a bare Exception
            raise BadInput(error_text(e)) from None
        self.signature, self._output_names = _read_signature(self._session)
        self._text_inputs = {s.name for s in self.signature.inputs if s.dtype.kind == "O"}

    def invoke(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        feed = {k: _as_text(v) if k in self._text_inputs else v for k, v in inputs.items()}
        try:
            results = self._session.run(self._output_names, feed)
        except Exception as e:  # the runtime's own classes, ValueError, RuntimeError, ...
            raise InferenceFailed(error_text(e)) from e
        return {
            name: _as_unicode(out) if out.dtype.kind == "O" else out
            for name, out in zip(self._output_names, results, strict=True)
        }


def load(content: bytes, config: ModelConfig) -> OnnxSession:
    return OnnxSession(content, threads_of(config), config.onnx_graph_optimization)


ONNX = Backend(
    name="onnx",
    platform="onnxruntime_onnx",
    model_file="model.onnx",
    read=read_model_bytes,
    load=load,
    runtime_name=runtime_name,
)
