"""Is it safe to stack different requests' rows into one invoke? Decided once per
model version, at load, on the model itself.

A model whose batch dimension resizes may still not be batch-safe: an op that slices
row 0, reduces over the batch axis or folds the batch into another axis makes one
row's answer depend on its batch-mates. Warm-up with zeros cannot show it. So k
distinct rows are run one per invoke (the reference) and then stacked (repeated to
fill larger stacks), through the
same plans serving uses (full buckets, padded and split row counts), and compared
row by row. Runtime-neutral: it needs only the small ``Batchable`` interface.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from servekit.config import BatchingMode
from servekit.tensors import Array, TensorSpec

log = logging.getLogger(__name__)

# How the decision was reached (a label of the servekit_model_batched gauge).
Check = Literal["verified", "unsafe", "unverifiable", "trusted", "off", "fixed"]

# Float outputs may differ by summation order between batch sizes; a batch-unsafe
# model is off by far more (whole rows' worth).
FLOAT_RTOL = {np.dtype(np.float16): 1e-2}
DEFAULT_FLOAT_RTOL = 1e-4
# Integer inputs without quantization are often indices or ids: small values stay in
# range for most tables (a model that fails on them is retried with 0 and 1).
INDEX_RANGES = (16, 2)
SEED = 0
# Rows run alone for the reference; larger stacks repeat them. Every row has neighbours
# other than itself, so a row mixed with any other shows, at a bounded cost.
DISTINCT_ROWS = 8


class Batchable(Protocol):
    """What the check needs of a runtime's model instance."""

    @property
    def input_specs(self) -> Sequence[TensorSpec]: ...

    @property
    def output_specs(self) -> Sequence[TensorSpec]: ...

    def stacked_row_counts(self) -> list[int]:
        """Row counts that exercise every way serving stacks rows (empty: it never does)."""
        ...

    def run(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        """Run rows as serving would, stacked."""
        ...

    def run_rows_alone(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        """Run each row in an invoke of its own."""
        ...


@dataclass(frozen=True, slots=True)
class BatchingDecision:
    batched: bool  # different requests' rows may share an invoke
    check: Check
    reason: str  # one line, for logs, metadata and the repository index
    seconds: float = 0.0  # what the verification took


def distinct_rows(
    specs: Sequence[TensorSpec],
    count: int,
    samples: Mapping[str, Array] | None = None,
    index_range: int = INDEX_RANGES[0],
) -> dict[str, Array]:
    """``count`` rows per input, each different from the others: warm-up sample rows
    first (real data), then random values within the input's dtype (quantized inputs
    over their whole range, floats in [0, 1), other integers in [0, index_range),
    strings made up)."""
    rng = np.random.default_rng(SEED)
    out = {}
    for spec in specs:
        sample = samples.get(spec.name) if samples else None
        real = np.unique(sample, axis=0)[:count] if sample is not None and sample.ndim else None
        row_shape = (
            tuple(real.shape[1:])
            if real is not None
            else tuple(d if d > 0 else 1 for d in spec.shape[1:])
        )
        shape = (count - (0 if real is None else len(real)), *row_shape)
        dtype = spec.dtype
        if dtype == np.bool_:
            fill = rng.integers(0, 2, shape).astype(bool)
        elif np.issubdtype(dtype, np.floating):
            fill = rng.random(shape).astype(dtype)
        elif np.issubdtype(dtype, np.integer) and spec.quantization is not None:
            info = np.iinfo(dtype)
            fill = rng.integers(info.min, int(info.max) + 1, shape).astype(dtype)
        elif np.issubdtype(dtype, np.integer):
            fill = rng.integers(0, index_range, shape).astype(dtype)
        elif dtype.kind in ("O", "S", "U"):  # strings (BYTES)
            words = [f"servekit-{n}" for n in rng.integers(0, 1 << 30, int(np.prod(shape)))]
            fill = np.array(words, dtype=object).reshape(shape)
        else:
            raise TypeError(f"input '{spec.name}' has dtype {dtype}: no rows to try it with")
        out[spec.name] = fill if real is None else np.concatenate([real.astype(dtype), fill])
    return out


def _difference(spec: TensorSpec, got: Array, want: Array) -> float | None:
    """How far ``got`` is from ``want`` if beyond what the dtype allows, else None."""
    if got.shape != want.shape:
        return float("inf")
    if np.issubdtype(want.dtype, np.floating):
        g, w = got.astype(np.float64), want.astype(np.float64)
        both_nan = np.isnan(g) & np.isnan(w)
        diff = np.where(both_nan, 0.0, np.abs(g - w))
        diff = np.where(np.isnan(diff), np.inf, diff)
        scale = max(1.0, float(np.nanmax(np.abs(w), initial=0.0)))
        rtol = FLOAT_RTOL.get(want.dtype, DEFAULT_FLOAT_RTOL)
        allowed = rtol * scale + rtol * np.abs(np.nan_to_num(w))
        worst = float(diff.max(initial=0.0))
        return worst if (diff > allowed).any() else None
    if np.issubdtype(want.dtype, np.integer):
        steps = np.abs(got.astype(np.int64) - want.astype(np.int64))
        # A quantized output is a real number in steps: one step is its rounding.
        worst = float(steps.max(initial=0))
        return worst if worst > (1 if spec.quantization is not None else 0) else None
    return None if np.array_equal(got, want) else float("inf")


def compare_rows(
    specs: Sequence[TensorSpec], stacked: Mapping[str, Array], alone: Mapping[str, Array]
) -> str | None:
    """The first row whose stacked answer is not its answer alone, described; else None."""
    for spec in specs:
        got, want = stacked[spec.name], alone[spec.name]
        for row in range(len(got)):
            diff = _difference(spec, np.asarray(got[row]), np.asarray(want[row]))
            if diff is not None:
                return f"output '{spec.name}' row {row} is off by {diff:.4g}"
    return None


def _tiled(arrays: Mapping[str, Array], count: int) -> dict[str, Array]:
    """The first ``count`` rows of each array repeated end to end."""
    return {k: np.resize(v, (count, *v.shape[1:])) for k, v in arrays.items()}


def verify(model: Batchable, samples: Mapping[str, Array] | None = None) -> BatchingDecision:
    """Run distinct rows alone and stacked through every row count serving uses."""
    counts = model.stacked_row_counts()
    if not counts:
        return BatchingDecision(False, "fixed", "the model runs one row per invoke")
    start = time.perf_counter()
    rows = min(max(counts), DISTINCT_ROWS)
    failure: Exception | None = None
    for index_range in INDEX_RANGES:
        try:
            inputs = distinct_rows(model.input_specs, rows, samples, index_range)
            reference = model.run_rows_alone(inputs)
            for count in counts:
                part, alone = _tiled(inputs, count), _tiled(reference, count)
                mismatch = compare_rows(model.output_specs, model.run(part), alone)
                if mismatch is not None:
                    return BatchingDecision(
                        False,
                        "unsafe",
                        f"not batch-safe: with {count} rows stacked in one invoke, {mismatch} "
                        "from its answer alone; serving one row per invoke",
                        time.perf_counter() - start,
                    )
        except Exception as e:  # the runtime's own errors: try smaller values, then give up
            failure = e
            continue
        return BatchingDecision(
            True,
            "verified",
            f"batch-safe: {rows} distinct rows gave the same answers alone and stacked "
            f"(row counts {', '.join(map(str, counts))})",
            time.perf_counter() - start,
        )
    return BatchingDecision(
        False,
        "unverifiable",
        f"batch safety could not be verified ({type(failure).__name__}: "
        f"{str(failure).splitlines()[0][:200] if str(failure) else ''}); serving one row "
        "per invoke (set batching: on to trust the model)",
        time.perf_counter() - start,
    )


class BatchingVerdict:
    """The decision for one model version, made by the first instance that asks and
    shared by the others and by instances rebuilt later (thread-safe)."""

    def __init__(self, mode: BatchingMode) -> None:
        self.mode = mode
        self._lock = threading.Lock()
        self.decision: BatchingDecision | None = None

    def decide(self, model: Batchable, samples: Mapping[str, Array] | None) -> BatchingDecision:
        with self._lock:
            if self.decision is None:
                self.decision = self._decide(model, samples)
            return self.decision

    def _decide(self, model: Batchable, samples: Mapping[str, Array] | None) -> BatchingDecision:
        if self.mode == "off":
            return BatchingDecision(False, "off", "batching: off; serving one row per invoke")
        if not model.stacked_row_counts():
            return BatchingDecision(False, "fixed", "the model runs one row per invoke")
        if self.mode == "on":
            return BatchingDecision(True, "trusted", "batching: on; batch safety not verified")
        return verify(model, samples)
