"""Batches of any row count on one runtime session: batch-size buckets warmed up at
load, a pad-or-split plan per row count, fixed-batch chunks, and one row per invoke for
models that must not be batched. Runtime-neutral: the session does the invoking.

A ``ModelRunner`` is not thread-safe; the pool gives each one to a single worker
thread for its whole life.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import threading
import time
from collections.abc import Mapping, Sequence

import numpy as np

from servekit.errors import BadInput, InferenceFailed
from servekit.runtime.base import Session
from servekit.tensors import Array, TensorSpec

log = logging.getLogger(__name__)


# How a row count runs: (rows, bucket) per invoke, in order.
Plan = tuple[tuple[int, int], ...]

# A split must beat padding by this much to be chosen: warm-up timings are noisy.
SPLIT_GAIN = 0.9

# Trimming buckets (``prepare(..., trim=True)``): a bucket is worth its memory only if a
# row costs at most this fraction of what it costs at the best smaller bucket. A conv
# net on CPU computes a batch of 2 in twice the time of 1, so its larger buckets would
# only hold arena memory (MobileNetV2: 80 MB resident at batch 1, 330 MB once batch 32
# was allocated; the runtimes keep their largest arena).
TRIM_GAIN = 0.9

# Batching "pays" when the best bucket runs at least this many times the rows/s of the
# smallest: such a model keeps every bucket (and the pool gives it one instance).
BATCHING_PAYS = 2.0

# Warm-up timing: invokes of one batch size are repeated while they add up to less than
# this (at most TIMING_MAX_RUNS times), and the best kept.
TIMING_BUDGET_S = 0.02
TIMING_MAX_RUNS = 20


def padding_plan(costs: Mapping[int, float]) -> dict[int, Plan]:
    """For every row count up to the largest bucket, the cheapest way to run it, from
    the measured time of one invoke at each bucket size.

    Padding 3 rows to a bucket of 4 is free on a memory-bound model (a batch of 4 costs
    what a batch of 1 does) but wastes a quarter of the compute of a conv net, where
    2 + 1 rows in two invokes are cheaper. So each count is either padded to the
    smallest bucket that holds it or split into a full bucket and the cheapest plan for
    the rest, whichever the costs say (a split only if clearly cheaper).
    """
    buckets = sorted(costs)
    best: dict[int, tuple[float, Plan]] = {0: (0.0, ())}
    for rows in range(1, buckets[-1] + 1):
        pad = buckets[bisect.bisect_left(buckets, rows)]
        best[rows] = (costs[pad], ((rows, pad),))
        splits = [
            (costs[b] + best[rows - b][0], ((b, b), *best[rows - b][1]))
            for b in buckets
            if b < rows
        ]
        if splits:
            # The cheapest split; of equal ones, the one with the fewest invokes.
            cost, plan = min(splits, key=lambda c: (c[0], len(c[1])))
            if cost < SPLIT_GAIN * costs[pad]:
                best[rows] = (cost, tuple(sorted(plan, reverse=True)))  # largest first
    return {rows: plan for rows, (_, plan) in best.items() if rows}


def _not_worth(costs: Mapping[int, float], bucket: int) -> str:
    """Why buckets above ``bucket`` are not worth allocating ('' if they may be): a row
    at ``bucket`` costs more than ``TRIM_GAIN`` of its cost at the best smaller one, and
    batching has not paid ``BATCHING_PAYS``-fold so far. A dense model's rows/s may dip
    at one size and climb again (the wide model: 4.1x at batch 4, 0.88x of that at 8,
    8.6x at 64), so once batching pays, every bucket is kept."""
    smaller = [b for b in costs if b < bucket]
    if not smaller:
        return ""
    best = min(smaller, key=lambda b: costs[b] / b)
    first = min(costs)
    if (costs[first] / first) / (costs[best] / best) >= BATCHING_PAYS:
        return ""
    gain = (costs[best] / best) / (costs[bucket] / bucket)
    if gain * TRIM_GAIN >= 1.0:
        return ""
    return (
        f"batches above {bucket} not allocated: batch {bucket} ran {gain:.2f}x the rows/s "
        f"of batch {best} (a bucket must give {1 / TRIM_GAIN:.2f}x)"
    )


class ModelRunner:
    """One runtime session and the batch sizes it has been warmed up for."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.signature = session.signature
        self._buckets: list[int] = []
        # When not batchable: rows per invoke, and the batch size each invoke runs at
        # (the file's when the model cannot be resized; a chunk is padded up to it).
        self._chunk = self.signature.native_batch or 1
        self._invoke_rows = self._chunk
        self._resizable = False
        self._pad_buffers: dict[tuple[str, int], Array] = {}
        self._samples: Mapping[str, Array] | None = None
        # rows -> the invokes that run them (see ``padding_plan``), for batchable models.
        self._plan: dict[int, Plan] = {}
        # Rows -> seconds of one warm invoke at ``prepare``: every bucket, or the chunk.
        self.invoke_costs: dict[int, float] = {}
        # Why buckets asked for were left out at warm-up (``trim``); '' if none were.
        self.trimmed = ""

    @property
    def slowest_invoke_s(self) -> float:
        """The longest one invoke takes (the largest bucket, or one chunk), timed warm at
        ``prepare``; infinite until then."""
        return max(self.invoke_costs.values(), default=float("inf"))

    @property
    def batchable(self) -> bool:
        return bool(self._buckets)

    @property
    def batch_gain(self) -> float:
        """Rows/s at the best bucket over rows/s at the smallest (1.0 when unbatched):
        how much batching raises this model's throughput, from the warm-up timings."""
        if len(self.invoke_costs) < 2:
            return 1.0
        small = min(self.invoke_costs)
        best = self.best_bucket
        per_row_best = self.invoke_costs[best] / best
        return self.invoke_costs[small] / small / per_row_best if per_row_best > 0 else 1.0

    @property
    def best_bucket(self) -> int:
        """The batch size with the most rows/s at warm-up."""
        return min(self.invoke_costs, key=lambda b: self.invoke_costs[b] / b)

    @property
    def buckets(self) -> list[int]:
        return list(self._buckets)

    @property
    def chunk(self) -> int:
        """Rows per invoke when the model is not batchable."""
        return self._chunk

    @property
    def input_specs(self) -> tuple[TensorSpec, ...]:
        return self.signature.inputs

    @property
    def output_specs(self) -> tuple[TensorSpec, ...]:
        return self.signature.outputs

    # -- warm-up ---------------------------------------------------------------------

    def prepare(
        self,
        buckets: Sequence[int],
        samples: Mapping[str, Array] | None = None,
        *,
        trim: bool = False,
    ) -> bool:
        """Allocate and run every bucket once. Returns False if the model cannot be resized.

        Resizing to a new shape is expensive (tens to hundreds of ms on big models),
        switching between shapes already allocated is cheap, so it all happens here.

        ``trim``: allocate the buckets smallest first and stop after the first (past the
        smallest) whose rows cost more than ``TRIM_GAIN`` of the best smaller bucket's:
        larger buckets would hold memory and gain nothing. That bucket stays (its memory
        is taken already), so rows from different requests may still share an invoke.
        """
        if samples is not None:
            self._check_samples(samples)
        ok = all(len(s.shape) >= 1 for s in self.signature.inputs) and all(
            len(s.shape) >= 1 for s in self.signature.outputs
        )
        costs: dict[int, float] = {}
        self.trimmed = ""
        if ok:
            try:
                for b in sorted(buckets):
                    batch = self._warmup_batch(b, samples)
                    out = self._invoke_at(b, batch)
                    if any(v.shape[:1] != (b,) for v in out.values()):
                        ok = False
                        break
                    costs[b] = self._time_invoke(b, batch)
                    if trim and len(costs) < len(buckets) and _not_worth(costs, b):
                        # Measured again before it ends the list: noise only ever slows
                        # a timing, and a busy spell may have slowed this one.
                        costs[b] = min(costs[b], self._time_invoke(b, batch))
                        if why := _not_worth(costs, b):
                            self.trimmed = why
                            break
            except InferenceFailed as e:
                log.info("resize to other batch sizes failed: %s", e)
                ok = False
        self._samples = samples
        self._resizable = ok
        if ok:
            self._buckets = sorted(costs)
            self._plan = padding_plan(costs)
            self.invoke_costs = costs
            return True
        # Go back to the shapes in the file and serve one chunk per invoke.
        self._buckets = []
        chunk = self._warmup_batch(self._chunk, samples)
        self._invoke_at(self._chunk, chunk)
        self.invoke_costs = {self._chunk: self._time_invoke(self._chunk, chunk)}
        return False

    def unbatch(self) -> None:
        """Serve one row per invoke from now on: the model's rows are not independent
        when stacked (or batching is off). A resizable model runs at batch size 1; a
        fixed-batch one pads each row to its batch size."""
        self._buckets, self._plan = [], {}
        self._chunk = 1
        self._invoke_rows = 1 if self._resizable else self._invoke_rows
        batch = self._warmup_batch(self._invoke_rows, self._samples)
        self._invoke_at(self._invoke_rows, batch)
        self.invoke_costs = {1: self._time_invoke(self._invoke_rows, batch)}

    def stacked_row_counts(self) -> list[int]:
        """Row counts that exercise every way ``run`` puts rows into one invoke: each
        bucket full, and the count just above each smaller bucket (or one row, when 1 is
        not a bucket) where its plan pads (a split is made of full buckets and smaller
        plans, checked already); or a fixed-batch model's full chunk."""
        if not self._buckets:
            return [self._chunk] if self._chunk > 1 else []
        counts = {b for b in self._buckets if b > 1}
        above = [1] if self._buckets[0] > 1 else []
        above += [a + 1 for a, b in itertools.pairwise(self._buckets) if a + 1 < b]
        counts |= {n for n in above if any(rows < size for rows, size in self._plan[n])}
        return sorted(counts)

    def run_rows_alone(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        """Each row in an invoke of its own, at batch size 1 when the model resizes."""
        size = 1 if self._resizable else self._invoke_rows
        rows = len(next(iter(inputs.values())))
        parts = [self._run_chunk(inputs, i, i + 1, size) for i in range(rows)]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def _time_invoke(self, rows: int, batch: Mapping[str, Array]) -> float:
        """The best of several warm invokes (the first one, before this, also packs
        weights and allocates): at least two, and more while they add up to under
        ``TIMING_BUDGET_S``. One run on a busy machine can be off by far more than the
        split or trim margins; the best of several rarely is."""
        best, spent, runs = float("inf"), 0.0, 0
        while runs < 2 or (spent < TIMING_BUDGET_S and runs < TIMING_MAX_RUNS):
            start = time.perf_counter()
            self._invoke_at(rows, batch)
            took = time.perf_counter() - start
            best, spent, runs = min(best, took), spent + took, runs + 1
        return best

    def _check_samples(self, samples: Mapping[str, Array]) -> None:
        for s in self.signature.inputs:
            sample = samples.get(s.name)
            if sample is None:
                continue
            if (
                sample.ndim != len(s.shape)
                or len(sample) == 0
                or any(
                    want not in (-1, got)
                    for want, got in zip(s.shape[1:], sample.shape[1:], strict=True)
                )
            ):
                raise BadInput(
                    f"warm-up sample '{s.name}' has shape {list(sample.shape)}, the input "
                    f"takes {list(s.shape)} (first dimension: rows)"
                )

    def probe(self) -> None:
        """Run one warm-up row: raises if the interpreter is no longer usable."""
        rows = self._buckets[0] if self._buckets else self._chunk
        self.run(self._warmup_batch(rows, self._samples))

    def _warmup_batch(self, rows: int, samples: Mapping[str, Array] | None) -> dict[str, Array]:
        out = {}
        for s in self.signature.inputs:
            if samples is not None and s.name in samples:
                src = samples[s.name]
                reps = -(-rows // len(src))
                out[s.name] = np.concatenate([src] * reps)[:rows].astype(s.dtype)
            else:
                out[s.name] = np.zeros((rows, *self._row_shape(s)), dtype=s.dtype)
        return out

    def _row_shape(self, spec: TensorSpec) -> tuple[int, ...]:
        # Variable inner dims have no size to warm up with; 1 is the smallest valid one.
        return tuple(d if d > 0 else 1 for d in spec.shape[1:])

    # -- running ---------------------------------------------------------------------

    def _invoke_at(self, rows: int, inputs: Mapping[str, Array]) -> dict[str, Array]:
        return self.session.invoke(inputs)

    def _padded(self, name: str, arr: Array, rows: int) -> Array:
        """``arr`` padded with zeros to ``rows`` rows, in a buffer reused across calls."""
        key = (name, rows)
        buf = self._pad_buffers.get(key)
        if buf is None or buf.shape[1:] != arr.shape[1:] or buf.dtype != arr.dtype:
            buf = np.zeros((rows, *arr.shape[1:]), dtype=arr.dtype)
            self._pad_buffers[key] = buf
        n = len(arr)
        buf[:n] = arr
        buf[n:] = 0
        return buf

    def run(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        """Run a batch of any row count; the caller has validated shapes and dtypes."""
        rows = len(next(iter(inputs.values())))
        plan = self._plan.get(rows)
        if plan is None:
            # Not batchable (or over the largest bucket): full chunks, the last padded.
            step = self._buckets[-1] if self._buckets else self._chunk
            size = self._buckets[-1] if self._buckets else self._invoke_rows
            plan = tuple((min(step, rows - start), size) for start in range(0, rows, step))
        if len(plan) == 1:
            return self._run_chunk(inputs, 0, rows, plan[0][1])
        parts, start = [], 0
        for n, bucket in plan:
            parts.append(self._run_chunk(inputs, start, start + n, bucket))
            start += n
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def _run_chunk(
        self, inputs: Mapping[str, Array], start: int, stop: int, size: int
    ) -> dict[str, Array]:
        n = stop - start
        feed = {
            k: v[start:stop] if n == size else self._padded(k, v[start:stop], size)
            for k, v in inputs.items()
        }
        out = self._invoke_at(size, feed)
        return out if n == size else {k: v[:n] for k, v in out.items()}


class SharedBuckets:
    """The batch sizes every instance of one model version warms up: the first instance
    to ask chooses them (trimming, if asked, by its own timings) and the others, and
    instances rebuilt later, allocate the same ones, so the batch-safety check and the
    batcher's largest batch hold for all of them (thread-safe)."""

    def __init__(self, wanted: Sequence[int], *, trim: bool) -> None:
        self._wanted = list(wanted)
        self._trim = trim
        self._lock = threading.Lock()
        self._chosen: list[int] | None = None
        self.trimmed = ""  # why buckets were left out, as the first instance said

    def prepare(self, model: ModelRunner, samples: Mapping[str, Array] | None) -> bool:
        """``model.prepare`` at the chosen buckets (choosing them if first)."""
        with self._lock:
            if self._chosen is None:
                ok = model.prepare(self._wanted, samples, trim=self._trim)
                self._chosen = model.buckets if ok else list(self._wanted)
                self.trimmed = model.trimmed
                return ok
        ok = model.prepare(self._chosen, samples)
        model.trimmed = self.trimmed
        return ok
