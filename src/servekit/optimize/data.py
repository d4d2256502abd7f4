"""Sample data for calibration and verification: .npy / .npz files or folders of them."""

from __future__ import annotations

import math
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from servekit.optimize.common import InputSpec, OptimizeError, Samples
from servekit.tensors import Array

LABELS_KEY = "y"
SINGLE_INPUT_KEY = "x"
RANDOM_ROWS = 128


def _read_file(path: Path, what: str) -> dict[str, Array]:
    try:
        if path.suffix == ".npy":
            return {SINGLE_INPUT_KEY: np.load(path, allow_pickle=False)}
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise OptimizeError(f"cannot read {what} {path}: {e}") from None


def _read_arrays(path: Path, what: str) -> dict[str, Array]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".npy", ".npz") and p.is_file())
        if not files:
            raise OptimizeError(f"{what} folder {path} holds no .npy or .npz files")
        parts = [_read_file(f, what) for f in files]
        keys = set(parts[0])
        for f, part in zip(files, parts, strict=True):
            if set(part) != keys:
                raise OptimizeError(
                    f"{what} files disagree: {files[0].name} has arrays {sorted(keys)}, "
                    f"{f.name} has {sorted(part)}"
                )
        try:
            return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        except ValueError as e:
            raise OptimizeError(f"{what} files in {path} cannot be stacked: {e}") from None
    if not path.exists():
        raise OptimizeError(f"{what} {path} does not exist")
    if path.suffix not in (".npy", ".npz"):
        raise OptimizeError(f"{what} {path}: expected a .npy or .npz file or a folder of them")
    return _read_file(path, what)


def _shape_text(shape: Sequence[int]) -> str:
    return str(list(shape))


def _fits(spec: InputSpec, arr: Array) -> bool:
    return arr.ndim == len(spec.shape) and all(
        want in (-1, got) for want, got in zip(spec.shape[1:], arr.shape[1:], strict=True)
    )


def _cast(spec: InputSpec, key: str, arr: Array, where: str) -> Array:
    if arr.dtype.kind not in "biuf":
        raise OptimizeError(f"{where}: array '{key}' holds {arr.dtype} values, not numbers")
    if not _fits(spec, arr):
        hint = ""
        known = [d for d in spec.shape[1:] if d > 0]
        if (
            len(known) == len(spec.shape) - 1
            and arr.ndim >= 1
            and math.prod(arr.shape[1:]) == math.prod(known)
        ):
            hint = "; it has as many values per row: reshape it"
        raise OptimizeError(
            f"{where}: array '{key}' has shape {_shape_text(arr.shape)}, but the model input "
            f"'{spec.name}' takes {_shape_text(spec.shape)} (first dimension: rows){hint}"
        )
    if spec.dtype.kind in "iu" and arr.dtype.kind == "f" and not np.all(arr == np.round(arr)):
        raise OptimizeError(
            f"{where}: array '{key}' holds fractional numbers; input '{spec.name}' takes "
            f"{spec.dtype.name}"
        )
    return arr.astype(spec.dtype, copy=False)


def load_samples(path: Path, specs: Sequence[InputSpec], *, what: str) -> Samples:
    """Rows for every model input from a file or folder; ``y`` (if present) is labels.

    A ``.npy`` file (or an ``.npz`` with one array, or with ``x``) feeds a one-input model;
    otherwise the ``.npz`` arrays are named after the inputs.
    """
    raw = _read_arrays(path, what)
    where = f"{what} {path}"
    labels = raw.pop(LABELS_KEY, None)
    names = [s.name for s in specs]
    if all(n in raw for n in names):
        chosen = {n: (n, raw[n]) for n in names}
    elif len(specs) == 1 and SINGLE_INPUT_KEY in raw:
        chosen = {names[0]: (SINGLE_INPUT_KEY, raw[SINGLE_INPUT_KEY])}
    elif len(specs) == 1 and len(raw) == 1:
        ((key, arr),) = raw.items()
        chosen = {names[0]: (key, arr)}
    else:
        raise OptimizeError(
            f"{where} has arrays {sorted(raw)}; the model's inputs are {names}: name the "
            f"arrays after the inputs ('{SINGLE_INPUT_KEY}' is enough for a one-input model)"
        )
    inputs = {
        spec.name: _cast(spec, chosen[spec.name][0], chosen[spec.name][1], where) for spec in specs
    }
    counts = {len(a) for a in inputs.values()}
    if len(counts) != 1:
        raise OptimizeError(f"{where}: the input arrays have different row counts {counts}")
    rows = counts.pop()
    if rows == 0:
        raise OptimizeError(f"{where} holds no rows")
    if labels is not None:
        flat = labels.reshape(-1) if labels.ndim == 2 and labels.shape[1:] == (1,) else labels
        integral = flat.dtype.kind in "biu" or (
            flat.dtype.kind == "f" and bool(np.all(flat == np.round(flat)))
        )
        if flat.shape != (rows,) or not integral:
            raise OptimizeError(
                f"{where}: labels '{LABELS_KEY}' must be {rows} class numbers, one per row "
                f"(got {flat.dtype.name}{_shape_text(labels.shape)})"
            )
        labels = flat.astype(np.int64)
    return Samples(inputs, labels, f"{path} ({rows} rows)")


def random_samples(specs: Sequence[InputSpec], rows: int = RANDOM_ROWS, seed: int = 0) -> Samples:
    """Uniform [0, 1) floats (integers 0-9) for every input: a last resort."""
    rng = np.random.default_rng(seed)
    inputs: dict[str, Array] = {}
    for s in specs:
        shape = (rows, *(d if d > 0 else 1 for d in s.shape[1:]))
        if s.dtype.kind == "f":
            inputs[s.name] = rng.random(shape).astype(s.dtype)
        elif s.dtype.kind == "b":
            inputs[s.name] = rng.random(shape) < 0.5
        else:
            inputs[s.name] = rng.integers(0, 10, shape).astype(s.dtype)
    return Samples(inputs, None, f"random uniform data ({rows} rows)")
