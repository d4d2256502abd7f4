"""Find a TFLite interpreter: ai-edge-litert first, then tflite-runtime, then TensorFlow."""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
from typing import Any

# (module, attribute, name shown to users), in order of preference.
_CANDIDATES = (
    ("ai_edge_litert.interpreter", "Interpreter", "ai-edge-litert"),
    ("tflite_runtime.interpreter", "Interpreter", "tflite-runtime"),
    ("tensorflow.lite", "Interpreter", "tensorflow"),
)


@functools.cache
def _find() -> tuple[Any, str]:
    tried = []
    for module, attr, name in _CANDIDATES:
        try:
            return getattr(importlib.import_module(module), attr), name
        except ImportError as e:
            tried.append(f"{name}: {e}")
    raise RuntimeError(
        "no TFLite runtime is installed; run `pip install ai-edge-litert` "
        f"(tried {'; '.join(tried)})"
    )


def interpreter_class() -> Any:
    """The Interpreter class of the preferred installed runtime."""
    return _find()[0]


def runtime_name() -> str:
    """Which runtime serves models in this process, with its version (shown in metadata
    and by ``servekit inspect``): e.g. 'ai-edge-litert 2.3.0', the same distribution on
    x86-64 and aarch64."""
    name = _find()[1]
    try:
        return f"{name} {importlib.metadata.version(name)}"
    except importlib.metadata.PackageNotFoundError:  # e.g. TensorFlow built from source
        return name
