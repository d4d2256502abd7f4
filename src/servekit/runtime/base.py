"""The runtime seam: what servekit needs of a model runtime, and one entry per runtime.

A runtime (TFLite, ONNX Runtime, ...) loads a model file into a ``Session``: its
signature, and ``invoke`` at whatever row count the inputs have. Everything about
batching (buckets, padding and splitting plans, fixed-batch chunks, the batch-safety
check) is runtime-neutral and lives in ``runner.py`` and ``batchsafety.py``. Adding a
runtime is one module that defines a ``Backend``, plus one entry in ``BACKENDS``
(``servekit.runtime``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from servekit.tensors import Array, TensorSpec

if TYPE_CHECKING:
    from servekit.config import ModelConfig


@dataclass(frozen=True, slots=True)
class ModelSignature:
    """What a model takes and gives, as loaded (before batch detection)."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    signature_key: str | None  # None when the model has no signature defs
    native_batch: int | None  # the first dimension baked into the file, None if dynamic


class Session(Protocol):
    """One loaded model of one runtime. Not thread-safe: one thread uses it at a time."""

    signature: ModelSignature

    def invoke(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        """Run the inputs at their shapes (resizing if the runtime needs to); raises
        ``InferenceFailed`` with the runtime's reason in one line."""
        ...


@dataclass(frozen=True, slots=True)
class Backend:
    """One runtime, as the registry and the metadata see it."""

    name: str  # the model config's ``backend``
    platform: str  # the V2 metadata's platform, as Triton names it
    model_file: str  # the file a version folder holds
    read: Callable[[Path], bytes]  # the file's bytes, refusing anything of another format
    # content, the model's config (threads, the runtime's own settings) → a session
    load: Callable[[bytes, ModelConfig], Session]
    runtime_name: Callable[[], str]  # which library (and version) runs it


def threads_of(config: ModelConfig) -> int:
    """The runtime threads a session gets: the config's, or 1 when it says ``auto``
    (the instance pool resolves ``auto`` before it builds instances; a tool that loads
    a model on its own gets one thread)."""
    threads = config.threads_per_instance
    return 1 if threads == "auto" else threads
