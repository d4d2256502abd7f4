"""Check a converted model under servekit's own runtime: same answers? how fast?

No TensorFlow here: the TFLite model runs in :class:`servekit.runtime.TFLiteModel`
(ai-edge-litert when installed), prepared with the same batch buckets the server uses.
"""

from __future__ import annotations

import importlib.metadata
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from servekit.config import ModelConfig
from servekit.optimize.common import OptimizeError, Samples
from servekit.runtime import TFLiteModel, runtime_name
from servekit.tensors import Array, TensorSpec

LATENCY_BATCH_SIZES = (1, 8, 32)
MIN_TIMED_RUNS = 5
MAX_TIMED_RUNS = 2000


def runtime_label() -> str:
    """The runtime servekit uses in this environment, with its version."""
    name = runtime_name()
    for dist in (name, f"{name}-cpu"):
        try:
            return f"{name} {importlib.metadata.version(dist)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return name


def load_for_serving(content: bytes) -> TFLiteModel:
    """Load and warm the model exactly as a server instance would (default buckets)."""
    model = TFLiteModel(content, num_threads=ModelConfig().threads_per_instance)
    model.prepare(ModelConfig().buckets())
    return model


def batch_is_dynamic(model: TFLiteModel) -> bool:
    """Every input's first dimension is -1 in shape_signature, and resizing works."""
    sig = model.signature
    return (
        sig.native_batch is None
        and all(s.shape and s.shape[0] == -1 for s in sig.inputs)
        and model.batchable
    )


def _quantize(x: Array, spec: TensorSpec) -> Array:
    if spec.quantization is not None and spec.dtype.kind in "iu" and x.dtype.kind == "f":
        q = spec.quantization
        info = np.iinfo(spec.dtype)
        scaled = np.round(x.astype(np.float64) / q.scale) + q.zero_point
        return np.asarray(np.clip(scaled, info.min, info.max).astype(spec.dtype))
    return np.asarray(x, dtype=spec.dtype)


def _dequantize(y: Array, spec: TensorSpec) -> Array:
    if spec.quantization is not None and spec.dtype.kind in "iu":
        q = spec.quantization
        return np.asarray((y.astype(np.float32) - q.zero_point) * np.float32(q.scale))
    return y


def model_feed(model: TFLiteModel, inputs: Mapping[str, Array]) -> dict[str, Array]:
    """Sample rows in the model's input dtypes (float rows quantized for int8 inputs)."""
    missing = [s.name for s in model.signature.inputs if s.name not in inputs]
    if missing:
        raise OptimizeError(
            f"the TFLite model's inputs {missing} are not among the original model's "
            f"inputs {sorted(inputs)}"
        )
    return {s.name: _quantize(inputs[s.name], s) for s in model.signature.inputs}


def run_tflite(model: TFLiteModel, inputs: Mapping[str, Array]) -> dict[str, Array]:
    """Outputs by name, dequantized to float where the model quantizes them."""
    out = model.run(model_feed(model, inputs))
    return {s.name: _dequantize(out[s.name], s) for s in model.signature.outputs}


@dataclass(frozen=True, slots=True)
class OutputDiff:
    name: str
    max_abs_diff: float
    mean_abs_diff: float


@dataclass(frozen=True, slots=True)
class Fidelity:
    """How closely the TFLite model reproduces the original on the same rows."""

    samples: int
    origin: str
    outputs: tuple[OutputDiff, ...]
    max_abs_diff: float
    mean_abs_diff: float
    relative_error: float  # mean |difference| / mean |original|
    scored_output: str | None  # the classifier output agreement is measured on
    agreement: float | None  # share of rows with the same top-1 class
    accuracy_original: float | None
    accuracy_tflite: float | None

    def passes(self, min_agreement: float) -> bool:
        """Top-1 agreement reaches the bar; for non-classifiers, relative error ≤ 1 - bar."""
        if self.agreement is not None:
            return self.agreement >= min_agreement
        return self.relative_error <= 1.0 - min_agreement


def _is_scores(arr: Array) -> bool:
    return arr.ndim == 2 and arr.shape[1] > 1 and arr.dtype.kind == "f"


def compare_outputs(
    reference: Mapping[str, Array], got: Mapping[str, Array], samples: Samples
) -> Fidelity:
    """Differences per output, top-1 agreement and (with labels) accuracy of both."""
    diffs = []
    total_abs = total_ref = 0.0
    count = 0
    for name, ref in reference.items():
        if name not in got:
            raise OptimizeError(
                f"the TFLite model has outputs {sorted(got)}, the original {sorted(reference)}"
            )
        out = got[name]
        if out.shape != ref.shape:
            raise OptimizeError(
                f"output '{name}': the TFLite model gives shape {list(out.shape)}, the "
                f"original {list(ref.shape)}"
            )
        delta = np.abs(out.astype(np.float64) - ref.astype(np.float64))
        diffs.append(OutputDiff(name, float(delta.max(initial=0.0)), float(delta.mean())))
        total_abs += float(delta.sum())
        total_ref += float(np.abs(ref.astype(np.float64)).sum())
        count += delta.size
    scored = next((n for n, r in reference.items() if _is_scores(r)), None)
    agreement = acc_orig = acc_tfl = None
    if scored is not None:
        top_ref = reference[scored].argmax(axis=1)
        top_got = got[scored].argmax(axis=1)
        agreement = float(np.mean(top_ref == top_got))
        if samples.labels is not None:
            acc_orig = float(np.mean(top_ref == samples.labels))
            acc_tfl = float(np.mean(top_got == samples.labels))
    mean_abs = total_abs / max(count, 1)
    return Fidelity(
        samples=samples.rows,
        origin=samples.origin,
        outputs=tuple(diffs),
        max_abs_diff=max((d.max_abs_diff for d in diffs), default=0.0),
        mean_abs_diff=mean_abs,
        relative_error=mean_abs / max(total_ref / max(count, 1), 1e-12),
        scored_output=scored,
        agreement=agreement,
        accuracy_original=acc_orig,
        accuracy_tflite=acc_tfl,
    )


@dataclass(frozen=True, slots=True)
class Latency:
    """Time of one invoke through TFLiteModel.run, per batch size: the median of
    ``rounds`` round medians, and their range without the lowest and the highest round
    (the spread: one round that met a burst of load does not widen it alone)."""

    per_batch_ms: dict[int, float]
    best_batch: int  # the batch size with the lowest time per row
    range_ms: dict[int, tuple[float, float]]  # 2nd lowest and 2nd highest round median
    rounds: int

    @property
    def batch1_ms(self) -> float:
        return self.per_batch_ms[min(self.per_batch_ms)]

    @property
    def best_row_us(self) -> float:
        return self.per_batch_ms[self.best_batch] * 1000.0 / self.best_batch

    @property
    def best_row_range_us(self) -> tuple[float, float]:
        lo, hi = self.range_ms[self.best_batch]
        return lo * 1000.0 / self.best_batch, hi * 1000.0 / self.best_batch

    @property
    def spread(self) -> float:
        """The range of the best batch size's rounds / their median: the timing noise."""
        lo, hi = self.range_ms[self.best_batch]
        return (hi - lo) / self.per_batch_ms[self.best_batch]


# Each model is timed in this many rounds, the models taking turns, so that a spell of
# load on a shared machine falls on every model and shows as spread, not as a difference.
LATENCY_ROUNDS = 7


def measure_latency(model: TFLiteModel, samples: Samples, *, budget_s: float) -> Latency:
    """Time ``run()`` at a few batch sizes, about ``budget_s`` seconds each."""
    return measure_latencies([model], samples, budget_s=budget_s)[0]


def measure_latencies(
    models: list[TFLiteModel], samples: Samples, *, budget_s: float
) -> list[Latency]:
    """Time each model's ``run()`` at a few batch sizes, about ``budget_s`` seconds per
    model and batch size, in ``LATENCY_ROUNDS`` rounds where the models take turns."""
    plans: list[dict[int, dict[str, Array]]] = []
    for model in models:
        if model.batchable:
            sizes = [b for b in LATENCY_BATCH_SIZES if b <= model.buckets[-1]] or [1]
        else:
            sizes = [model.chunk]
        feed = model_feed(model, samples.inputs)
        plan = {}
        for size in sizes:
            reps = -(-size // samples.rows)
            plan[size] = {
                k: np.ascontiguousarray(np.concatenate([v] * reps)[:size]) for k, v in feed.items()
            }
            for _ in range(2):  # warm caches (the bucket is already allocated)
                model.run(plan[size])
        plans.append(plan)
    rounds: list[dict[int, list[float]]] = [{size: [] for size in plan} for plan in plans]
    per_round = budget_s / LATENCY_ROUNDS
    for r in range(LATENCY_ROUNDS):
        for i in _rotated(range(len(models)), r):
            for size, batch in plans[i].items():
                rounds[i][size].append(_median_run(models[i], batch, per_round) * 1000.0)
    out = []
    for medians in rounds:
        per_batch = {size: statistics.median(ms) for size, ms in medians.items()}
        best = min(per_batch, key=lambda b: per_batch[b] / b)
        ranges = {size: _trimmed_range(ms) for size, ms in medians.items()}
        out.append(Latency(per_batch, best, ranges, LATENCY_ROUNDS))
    return out


def _trimmed_range(values: list[float]) -> tuple[float, float]:
    """Lowest and highest of ``values`` without the extreme two (with 5 or more)."""
    ordered = sorted(values)
    if len(ordered) >= 5:
        ordered = ordered[1:-1]
    return ordered[0], ordered[-1]


def _rotated(items: range, by: int) -> list[int]:
    """``items`` starting at position ``by``: each model goes first in some round."""
    k = by % max(len(items), 1)
    return [*items[k:], *items[:k]]


def _median_run(model: TFLiteModel, batch: Mapping[str, Array], budget_s: float) -> float:
    """Median seconds of ``model.run(batch)`` over about ``budget_s`` seconds."""
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < MIN_TIMED_RUNS or (
        time.perf_counter() < deadline and len(times) < MAX_TIMED_RUNS
    ):
        start = time.perf_counter()
        model.run(batch)
        times.append(time.perf_counter() - start)
    return statistics.median(times)
