"""Tensor specifications, datatype tables and request validation.

Everything here is protocol-neutral: adapters turn wire formats into numpy arrays, and
the functions here decide whether an array fits a model input.
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from servekit.errors import BadInput

Array = npt.NDArray[Any]

# Open Inference Protocol v2 datatype names <-> numpy dtypes.
V2_TO_NUMPY: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}
NUMPY_TO_V2: dict[np.dtype[Any], str] = {v: k for k, v in V2_TO_NUMPY.items()}
NUMPY_TO_V2[np.dtype(np.bytes_)] = "BYTES"

# Excerpts of user input quoted back in error messages are cut to this many characters.
EXCERPT_CHARS = 80

# The most dimensions a request's tensor may declare or nest. Real models stay far
# below (TFLite's kernels take up to 6 dimensions, numpy stops at 64); the bound keeps
# every walk over a request's structure shallow.
MAX_RANK = 16
# The most elements a declared shape may hold (its zero dimensions left out, as numpy
# counts them): more than any body within the size limits can carry, and small enough
# that numpy never refuses the shape as too big.
MAX_ELEMENTS = 2**40

# repr() of user input, bounded in depth and width before it is cut to EXCERPT_CHARS
# (a plain repr of a request's 150k numbers would build megabytes, and recurse as
# deep as the nesting).
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict = 4, 8, 8, 8
_REPR.maxstring = _REPR.maxother = EXCERPT_CHARS


def v2_datatype(dtype: np.dtype[Any]) -> str:
    """The V2 datatype name of a numpy dtype (strings of any width are BYTES)."""
    if dtype.kind in ("S", "U", "O"):
        return "BYTES"
    try:
        return NUMPY_TO_V2[dtype]
    except KeyError:
        raise BadInput(f"datatype {dtype} has no Open Inference Protocol name") from None


def excerpt(value: object) -> str:
    """A bounded repr of user input, safe to put in an error message."""
    text = _REPR.repr(value)
    return text if len(text) <= EXCERPT_CHARS else text[: EXCERPT_CHARS - 3] + "..."


@dataclass(frozen=True, slots=True)
class Quantization:
    """Affine quantization of a tensor: real = scale * (q - zero_point)."""

    scale: float
    zero_point: int


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One named input or output of a model.

    ``shape`` uses -1 for a dimension that varies; for batchable models the first
    dimension is the batch and is always -1.
    """

    name: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    quantization: Quantization | None = None
    # Index of the tensor in the interpreter (runtime detail, not shown to users).
    index: int = field(default=-1, compare=False)

    @property
    def datatype(self) -> str:
        return v2_datatype(self.dtype)

    def describe(self) -> str:
        return f"{self.dtype.name}{list(self.shape)}"

    def check_shape(self, given: tuple[int, ...]) -> None:
        """Raise BadInput unless ``given`` fits this spec's shape (-1 matches any size)."""
        if len(given) != len(self.shape) or any(
            want not in (-1, got) for want, got in zip(self.shape, given, strict=True)
        ):
            raise BadInput(
                f"input '{self.name}': expected shape {list(self.shape)}, got {list(given)}"
            )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "datatype": self.datatype,
            "dtype": self.dtype.name,
            "shape": list(self.shape),
        }
        if self.quantization is not None:
            out["quantization"] = {
                "scale": self.quantization.scale,
                "zero_point": self.quantization.zero_point,
            }
        return out


def _is_integer_kind(dtype: np.dtype[Any]) -> bool:
    return dtype.kind in ("i", "u")


def coerce_json_values(name: str, values: object, spec: TensorSpec) -> Array:
    """Turn JSON values (nested lists of numbers/bools) into an array of ``spec.dtype``.

    Refuses ragged lists, strings for numeric inputs, fractional numbers for integer
    inputs and integers outside the input's range, naming the input each time.
    """
    try:
        arr = np.asarray(values)
    except (ValueError, TypeError, OverflowError):
        raise BadInput(
            f"input '{name}': values must be a rectangular nested list of numbers "
            f"(got {excerpt(values)})"
        ) from None
    return coerce_array(name, arr, spec)


def coerce_array(name: str, arr: Array, spec: TensorSpec) -> Array:
    """Cast ``arr`` to the spec's dtype when no information is lost, else raise BadInput."""
    want = spec.dtype
    if arr.dtype == want:
        return arr
    kind = arr.dtype.kind
    if kind in ("O", "U", "S"):
        if want.kind in ("O", "S", "U"):
            return arr.astype(want)
        raise BadInput(
            f"input '{name}': expected {want.name} numbers, got non-numeric or ragged "
            f"values ({excerpt(arr.tolist() if arr.size < 20 else arr.flat[:5].tolist())})"
        )
    if want.kind == "b":
        if kind == "b" or (_is_integer_kind(arr.dtype) and np.isin(arr, (0, 1)).all()):
            return arr.astype(want)
        raise BadInput(f"input '{name}': expected bool values, got {arr.dtype.name}")
    if _is_integer_kind(want):
        if kind == "f":
            if not np.isfinite(arr).all() or not (arr == np.round(arr)).all():
                raise BadInput(
                    f"input '{name}': expected {want.name} integers, got fractional or "
                    f"non-finite numbers"
                )
        elif kind not in ("i", "u", "b"):
            raise BadInput(f"input '{name}': expected {want.name}, got {arr.dtype.name}")
        if arr.size:
            info = np.iinfo(want)
            lo, hi = arr.min(), arr.max()
            if lo < info.min or hi > info.max:
                raise BadInput(
                    f"input '{name}': values must lie in [{info.min}, {info.max}] for "
                    f"{want.name}, got range [{lo}, {hi}]"
                )
        return arr.astype(want)
    if want.kind == "f" and kind in ("f", "i", "u", "b"):
        with np.errstate(over="ignore"):
            out = arr.astype(want)
        # An infinity in ``out`` that was finite in ``arr`` overflowed (the usual case,
        # a finite ``out``, is settled by the first test alone).
        if kind == "f" and not np.isfinite(out).all() and np.isfinite(arr).all():
            raise BadInput(f"input '{name}': values overflow {want.name}")
        return out
    raise BadInput(f"input '{name}': expected {want.name}, got {arr.dtype.name}")


def check_inputs(
    inputs: Mapping[str, Array],
    specs: Sequence[TensorSpec],
    *,
    batched: bool,
    max_batch_size: int,
    allow_nonfinite: bool = True,
) -> tuple[dict[str, Array], int]:
    """Validate a request against the model's input specs.

    Returns the inputs in spec order (cast to the spec dtypes) and the number of rows.
    Every error names the input and says what was expected and what was given.
    """
    want = {s.name for s in specs}
    given = set(inputs)
    missing, extra = sorted(want - given), sorted(given - want)
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing input(s) {missing}")
        if extra:
            shown = ", ".join(excerpt(e) for e in extra[:5])
            more = f" and {len(extra) - 5} more" if len(extra) > 5 else ""
            parts.append(f"unknown input(s) [{shown}]{more}")
        raise BadInput(f"{'; '.join(parts)}; the model takes {sorted(want)}")
    out: dict[str, Array] = {}
    rows: int | None = None
    first_name = ""
    for spec in specs:
        arr = coerce_array(spec.name, inputs[spec.name], spec)
        if arr.ndim == 0:
            raise BadInput(f"input '{spec.name}': expected shape {list(spec.shape)}, got a scalar")
        spec.check_shape(arr.shape)
        if not allow_nonfinite and arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise BadInput(
                f"input '{spec.name}' contains NaN or infinity; this model accepts finite "
                f"values only (allow_nonfinite: false)"
            )
        n = int(arr.shape[0])
        if rows is None:
            rows, first_name = n, spec.name
        elif n != rows:
            raise BadInput(
                f"inputs disagree on the batch size: '{first_name}' has {rows} rows, "
                f"'{spec.name}' has {n} rows"
            )
        out[spec.name] = arr
    assert rows is not None  # specs is never empty for a loaded model
    if rows == 0:
        raise BadInput("empty batch: every input has 0 rows")
    if batched and rows > max_batch_size:
        raise BadInput(
            f"batch of {rows} rows is over this model's max_batch_size {max_batch_size}; "
            f"split the request"
        )
    return out, rows


def element_count(shape: Sequence[int]) -> int:
    return math.prod(shape)


def check_declared_shape(name: str, shape: Sequence[int]) -> int:
    """Refuse a declared shape before anything is allocated for it: more than
    ``MAX_RANK`` dimensions, a negative one, or more than ``MAX_ELEMENTS`` elements
    (zero dimensions aside, as numpy counts them). Returns the element count."""
    if len(shape) > MAX_RANK:
        raise BadInput(
            f"input '{name}': shape has {len(shape)} dimensions; at most {MAX_RANK} are served"
        )
    nonzero = 1
    for d in shape:
        if d < 0:
            raise BadInput(f"input '{name}': shape {excerpt(list(shape))} has a negative dimension")
        if d:
            nonzero *= d
            if nonzero > MAX_ELEMENTS:
                raise BadInput(
                    f"input '{name}': shape {excerpt(list(shape))} declares more than "
                    f"{MAX_ELEMENTS} elements"
                )
    return 0 if 0 in shape else nonzero
