"""The TFLite runtime: ai-edge-litert (or tflite-runtime, or TensorFlow's own)."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from servekit.errors import BadInput, InferenceFailed
from servekit.runtime.base import Backend, ModelSignature, threads_of
from servekit.runtime.interpreter import interpreter_class, runtime_name
from servekit.runtime.runner import ModelRunner
from servekit.tensors import Array, Quantization, TensorSpec

if TYPE_CHECKING:
    from servekit.config import ModelConfig

log = logging.getLogger(__name__)

SERVING_SIGNATURE = "serving_default"


_SOURCE_LOCATION = re.compile(r"(?:[\w.+-]+/)*[\w.+-]+\.(?:cc|cpp|c|h):\d+:?\s*")
_FAILED_NODE = re.compile(r"\s*Node number \d+ \((\w+)\) failed to (\w+)\.?")


def runtime_error_text(e: Exception) -> str:
    """The interpreter's message in one line, without source paths:
    'gather index out of boundsNode number 1 (GATHER) failed to invoke.' reads
    'TFLite: gather index out of bounds (GATHER failed to invoke)'. The interpreter's
    error reporter keeps earlier failures' messages too: only the last one is kept."""
    text = _SOURCE_LOCATION.sub("", " ".join(str(e).split()))
    failures = [
        f"{before.strip()} ({m[1]} failed to {m[2]})".strip() for before, m in _failed_nodes(text)
    ]
    text = failures[-1] if failures else text.strip()
    return f"TFLite: {text[:300] or type(e).__name__}"


def _failed_nodes(text: str) -> list[tuple[str, re.Match[str]]]:
    """Each 'Node number N (OP) failed to X.' with the message that precedes it."""
    out, start = [], 0
    for m in _FAILED_NODE.finditer(text):
        out.append((text[start : m.start()], m))
        start = m.end()
    return out


def read_model_bytes(path: Path) -> bytes:
    """Read a .tflite file, refusing anything that is not a TFLite flatbuffer."""
    try:
        content = path.read_bytes()
    except OSError as e:
        raise BadInput(f"cannot read model file {path}: {e.strerror or e}") from None
    # A TFLite flatbuffer carries the identifier "TFL3" at byte offset 4.
    if len(content) < 8 or content[4:8] != b"TFL3":
        raise BadInput(f"{path} is not a TFLite model (no TFL3 identifier)")
    return content


def _spec(name: str, details: Mapping[str, Any]) -> TensorSpec:
    shape_sig = details.get("shape_signature")
    shape = tuple(
        int(d)
        for d in (shape_sig if shape_sig is not None and len(shape_sig) else details["shape"])
    )
    scale, zero_point = details.get("quantization", (0.0, 0))
    quant = Quantization(float(scale), int(zero_point)) if scale else None
    return TensorSpec(
        name=name,
        dtype=np.dtype(details["dtype"]),
        shape=shape,
        quantization=quant,
        index=int(details["index"]),
    )


def _read_signature(interp: Any) -> ModelSignature:
    """Prefer the serving_default signature's names; else the raw tensor details."""
    sigs: dict[str, Any] = {}
    try:
        sigs = interp._get_full_signature_list() or {}
    except AttributeError:  # very old runtimes
        sigs = {}
    key = SERVING_SIGNATURE if SERVING_SIGNATURE in sigs else next(iter(sigs), None)
    if key is not None and interp._interpreter.GetSubgraphIndexFromSignature(key) == 0:
        by_index_in = {d["index"]: d for d in interp.get_input_details()}
        by_index_out = {d["index"]: d for d in interp.get_output_details()}
        inputs = tuple(_spec(n, by_index_in[i]) for n, i in sorted(sigs[key]["inputs"].items()))
        outputs = tuple(_spec(n, by_index_out[i]) for n, i in sorted(sigs[key]["outputs"].items()))
    else:
        if key is not None:
            log.warning("signature %r is not the main subgraph; using tensor names", key)
            key = None
        inputs = tuple(_spec(d["name"], d) for d in interp.get_input_details())
        outputs = tuple(_spec(d["name"], d) for d in interp.get_output_details())
    firsts = {s.shape[0] for s in inputs if s.shape}
    native = None if -1 in firsts or len(firsts) != 1 else firsts.pop()
    return ModelSignature(inputs, outputs, key, native)


class TFLiteSession:
    """One TFLite interpreter, resized to the shapes it is asked to run (allocating is
    expensive for a new shape and cheap for one it had before)."""

    def __init__(self, content: bytes, num_threads: int = 1) -> None:
        try:
            self._interp = interpreter_class()(model_content=content, num_threads=num_threads)
            self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise BadInput(f"the TFLite runtime cannot load this model: {e}") from None
        self.signature = _read_signature(self._interp)
        self._current: tuple[tuple[int, ...], ...] | None = None

    def _resize(self, shapes: tuple[tuple[int, ...], ...]) -> None:
        if self._current == shapes:
            return
        self._current = None  # unknown until allocation succeeds
        for s, shape in zip(self.signature.inputs, shapes, strict=True):
            self._interp.resize_tensor_input(s.index, list(shape))
        self._interp.allocate_tensors()
        self._current = shapes

    def invoke(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        try:
            self._resize(tuple(inputs[s.name].shape for s in self.signature.inputs))
            for s in self.signature.inputs:
                self._interp.set_tensor(s.index, inputs[s.name])
            self._interp.invoke()
            return {s.name: self._interp.get_tensor(s.index) for s in self.signature.outputs}
        except (ValueError, RuntimeError) as e:
            raise InferenceFailed(runtime_error_text(e)) from e


def load(content: bytes, config: ModelConfig) -> TFLiteSession:
    return TFLiteSession(content, threads_of(config))


TFLITE = Backend(
    name="tflite",
    platform="tensorflow_lite",
    model_file="model.tflite",
    read=read_model_bytes,
    load=load,
    runtime_name=runtime_name,
)


class TFLiteModel(ModelRunner):
    """A ``ModelRunner`` on a TFLite session (for tools and tests that start from bytes)."""

    def __init__(self, content: bytes, *, num_threads: int | Literal["auto"] = 1) -> None:
        super().__init__(TFLiteSession(content, 1 if num_threads == "auto" else num_threads))
