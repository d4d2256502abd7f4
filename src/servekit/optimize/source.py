"""The original model: find its format, load it with TensorFlow, run it, export it.

Only :func:`detect_format` works without TensorFlow: it turns away paths that are not
models before the (slow) TensorFlow import.
"""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from servekit.optimize.common import EXTRA_HINT, InputSpec, OptimizeError, first_line
from servekit.tensors import Array

Format = Literal["keras", "h5", "saved_model"]
SIGNATURE_KEY = "serving_default"
PREDICT_ROWS = 256  # rows per call when running the original model
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_NAME_RE = re.compile(r"[^A-Za-z0-9_.\-]")


def import_tensorflow() -> Any:
    """TensorFlow, quietly; a one-line error naming the extra when it is missing."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
    except ImportError as e:
        raise OptimizeError(
            f"servekit optimize needs TensorFlow, which is not installed ({first_line(e)}): "
            f"run {EXTRA_HINT}"
        ) from None
    tf.get_logger().setLevel("ERROR")
    return tf


def detect_format(path: Path) -> Format:
    """What kind of model ``path`` holds, judged from the files alone."""
    expected = "expected a Keras model file (.keras, .h5) or a SavedModel folder"
    if path.is_dir():
        if (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file():
            return "saved_model"
        raise OptimizeError(
            f"{path} is a folder without saved_model.pb, not a SavedModel; {expected}"
        )
    if not path.exists():
        raise OptimizeError(f"model {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".keras":
        if not zipfile.is_zipfile(path):
            raise OptimizeError(f"{path} is not a Keras model (a .keras file is a zip archive)")
        return "keras"
    if suffix in (".h5", ".hdf5"):
        with path.open("rb") as f:
            if f.read(8) != _HDF5_MAGIC:
                raise OptimizeError(f"{path} is not a Keras model (not an HDF5 file)")
        return "h5"
    if suffix == ".tflite":
        raise OptimizeError(
            f"{path} is already a TFLite model: serve it with `servekit serve {path}`"
        )
    raise OptimizeError(f"{path} is not a model: {expected}")


def clean_name(name: str, fallback: str, taken: set[str]) -> str:
    """A signature-safe tensor name, unique among ``taken`` (which it joins)."""
    base = _NAME_RE.sub("_", name).strip("_.-") or fallback
    if not base[0].isalnum():
        base = f"{fallback}_{base}"
    out, n = base, 1
    while out in taken:
        n += 1
        out = f"{base}_{n}"
    taken.add(out)
    return out


def _dims(shape: Any) -> tuple[int, ...]:
    return tuple(-1 if d is None else int(d) for d in shape)


def _layer_name(tensor: Any) -> str | None:
    history = getattr(tensor, "_keras_history", None)
    op = getattr(history, "operation", None)
    name = getattr(op, "name", None)
    return name if isinstance(name, str) else None


@dataclass
class SourceModel:
    """A loaded original model, exported as a SavedModel the converter reads."""

    path: Path
    format: Format
    inputs: tuple[InputSpec, ...]
    outputs: tuple[str, ...]
    saved_model_dir: Path
    signature_key: str
    _run: Callable[[Mapping[str, Array]], dict[str, Array]]  # one chunk of rows
    _owner: Any = None  # keeps the loaded TensorFlow objects alive

    def predict(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        """The original model's outputs, by output name, for any number of rows."""
        rows = len(next(iter(inputs.values())))
        parts: list[dict[str, Array]] = []
        for start in range(0, rows, PREDICT_ROWS):
            chunk = {k: v[start : start + PREDICT_ROWS] for k, v in inputs.items()}
            try:
                parts.append(self._run(chunk))
            except Exception as e:  # TensorFlow raises many types
                raise OptimizeError(
                    f"the original model failed on the sample data: {first_line(e)}"
                ) from None
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def load_source(tf: Any, path: Path, fmt: Format, workdir: Path) -> SourceModel:
    """Load the model; a Keras model is exported to ``workdir`` with named tensors."""
    if fmt == "saved_model":
        return _load_saved_model(tf, path)
    return _load_keras(tf, path, fmt, workdir)


def _load_saved_model(tf: Any, path: Path) -> SourceModel:
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as e:
        raise OptimizeError(f"cannot load SavedModel {path}: {first_line(e)}") from None
    signatures = dict(loaded.signatures)
    if not signatures:
        raise OptimizeError(
            f"SavedModel {path} has no signatures; export it with a serving signature "
            f"(tf.saved_model.save(obj, path, signatures=...))"
        )
    key = SIGNATURE_KEY if SIGNATURE_KEY in signatures else sorted(signatures)[0]
    fn = signatures[key]
    _, kwargs = fn.structured_input_signature
    inputs = []
    for name, spec in sorted(kwargs.items()):
        if spec.shape.rank is None:
            raise OptimizeError(f"SavedModel input '{name}' has an unknown rank; give it a shape")
        inputs.append(InputSpec(name, np.dtype(spec.dtype.as_numpy_dtype), _dims(spec.shape)))
    outputs = tuple(sorted(fn.structured_outputs))

    def run(chunk: Mapping[str, Array]) -> dict[str, Array]:
        out = fn(**{k: tf.constant(v) for k, v in chunk.items()})
        return {k: np.asarray(v.numpy()) for k, v in out.items()}

    # ``loaded`` must outlive ``fn``: the signature functions use its variables.
    return SourceModel(path, "saved_model", tuple(inputs), outputs, path, key, run, loaded)


def _load_keras(tf: Any, path: Path, fmt: Format, workdir: Path) -> SourceModel:
    try:
        model = tf.keras.models.load_model(str(path), compile=False)
    except Exception as e:
        raise OptimizeError(f"cannot load {path} as a Keras model: {first_line(e)}") from None
    in_tensors = list(getattr(model, "inputs", None) or [])
    if not in_tensors:
        raise OptimizeError(
            f"{path}: the Keras model has no defined inputs (a subclassed model?); "
            f"save it as a SavedModel with a serving signature instead"
        )
    taken: set[str] = set()
    inputs = tuple(
        InputSpec(
            clean_name(_layer_name(t) or getattr(t, "name", "") or "", f"input_{i}", taken),
            np.dtype(str(t.dtype)),
            _dims(t.shape),
        )
        for i, t in enumerate(in_tensors)
    )
    # The output structure (tensor, list or dict) shows in a call on one row of zeros.
    try:
        probe = model(
            [np.zeros((1, *(max(d, 1) for d in s.shape[1:])), s.dtype) for s in inputs]
            if len(inputs) > 1
            else np.zeros((1, *(max(d, 1) for d in inputs[0].shape[1:])), inputs[0].dtype),
            training=False,
        )
    except Exception as e:
        raise OptimizeError(
            f"{path}: the Keras model fails on a row of zeros: {first_line(e)}"
        ) from None
    taken = set()
    out_keys: list[Any] = []
    if isinstance(probe, Mapping):
        out_keys = list(probe)
        outputs = tuple(clean_name(str(k), f"output_{i}", taken) for i, k in enumerate(out_keys))
    else:
        count = len(probe) if isinstance(probe, list | tuple) else 1
        tensors = list(getattr(model, "outputs", None) or [])
        layer_names = [_layer_name(t) for t in tensors] if len(tensors) == count else []
        outputs = tuple(
            clean_name((layer_names[i] if layer_names else None) or "", f"output_{i}", taken)
            for i in range(count)
        )

    def flatten(out: Any) -> list[Any]:
        if isinstance(out, Mapping):
            return [out[k] for k in out_keys]
        return list(out) if isinstance(out, list | tuple) else [out]

    def call(args: Sequence[Any]) -> dict[str, Any]:
        x = list(args) if len(args) > 1 else args[0]
        return dict(zip(outputs, flatten(model(x, training=False)), strict=True))

    def serve(*args: Any) -> dict[str, Any]:
        return call(args)

    specs = [
        tf.TensorSpec([None, *(None if d < 0 else d for d in s.shape[1:])], s.dtype, name=s.name)
        for s in inputs
    ]
    export_dir = workdir / "saved_model"
    try:
        archive = tf.keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint(SIGNATURE_KEY, serve, input_signature=specs)
        archive.write_out(str(export_dir), verbose=False)
    except Exception as e:
        raise OptimizeError(f"cannot export {path} for conversion: {first_line(e)}") from None

    def run(chunk: Mapping[str, Array]) -> dict[str, Array]:
        out = call([tf.constant(chunk[s.name]) for s in inputs])
        return {k: np.asarray(v.numpy()) for k, v in out.items()}

    return SourceModel(path, fmt, inputs, outputs, export_dir, SIGNATURE_KEY, run, model)
