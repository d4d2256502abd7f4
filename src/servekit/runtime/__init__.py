"""Model runtimes behind one interface (``base.Session``), and runtime-neutral batching.

``BACKENDS`` is the one table of runtimes: a model file's name (or the model config's
``backend``) picks its entry.
"""

from pathlib import Path

from servekit.errors import BadInput
from servekit.runtime.base import Backend, ModelSignature, Session
from servekit.runtime.interpreter import interpreter_class, runtime_name
from servekit.runtime.onnx import ONNX
from servekit.runtime.runner import ModelRunner
from servekit.runtime.tflite import TFLITE, TFLiteModel, read_model_bytes

BACKENDS: dict[str, Backend] = {b.name: b for b in (TFLITE, ONNX)}


def backend_named(name: str) -> Backend:
    try:
        return BACKENDS[name]
    except KeyError:
        raise BadInput(f"unknown backend {name!r}; known: {sorted(BACKENDS)}") from None


def backend_for_file(path: Path) -> Backend:
    """The runtime of a model file, by its suffix."""
    for backend in BACKENDS.values():
        if path.suffix == Path(backend.model_file).suffix:
            return backend
    suffixes = " or ".join(Path(b.model_file).suffix for b in BACKENDS.values())
    raise BadInput(f"{path} is not a model file: expected {suffixes}")


__all__ = [
    "BACKENDS",
    "ONNX",
    "TFLITE",
    "Backend",
    "ModelRunner",
    "ModelSignature",
    "Session",
    "TFLiteModel",
    "backend_for_file",
    "backend_named",
    "interpreter_class",
    "read_model_bytes",
    "runtime_name",
]
