"""Dynamic batching: a bounded asyncio queue in front of an instance pool.

Policy (what Triton and TF Serving users expect):

- An idle instance takes whatever is queued at once, so low load adds no latency;
  batches form by themselves while every instance is busy. ``max_queue_delay_ms``
  is an opt-in wait for a fuller batch.
- ``max_batch_size`` counts rows, not requests.
- The queue is bounded: a full queue refuses at once (``Overloaded`` → 503).
- A request's deadline counts its queue time; a request that is past its deadline
  or whose caller went away is dropped before compute.
- Lower ``priority`` numbers are served first; equal priorities in arrival order.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from servekit.errors import (
    DeadlineExceeded,
    InferenceFailed,
    InputFailed,
    Overloaded,
    ServekitError,
    ShuttingDown,
)
from servekit.metrics import ModelMetrics
from servekit.pool import Instance, InstancePool, Outputs
from servekit.tensors import Array


@dataclass(slots=True, order=True)
class Pending:
    priority: int
    seq: int
    inputs: Mapping[str, Array] = field(compare=False)
    rows: int = field(compare=False)
    future: asyncio.Future[Outputs] = field(compare=False)
    enqueued: float = field(compare=False)  # time.monotonic()
    deadline: float = field(compare=False)  # time.monotonic()


class Batcher:
    """Forms batches from queued requests and runs them on the pool's instances."""

    def __init__(
        self,
        pool: InstancePool,
        metrics: ModelMetrics,
        *,
        max_batch_size: int,
        max_queue_delay_s: float,
        max_queue_size: int,
        timeout_s: float,
        model_label: str = "",
    ) -> None:
        self._pool = pool
        self.model_label = model_label or f"'{metrics.model}'"
        self._metrics = metrics
        self.max_batch_size = max_batch_size
        self._max_delay = max_queue_delay_s
        self._max_queue = max_queue_size
        self._timeout = timeout_s
        self._heap: list[Pending] = []
        self._queued_rows = 0
        self._seq = itertools.count()
        self._has_work = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._loop_task: asyncio.Task[None] | None = None
        self._closing = False
        metrics.declare()
        metrics.set_queue_capacity(max_queue_size)

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._run(), name="batcher")

    @property
    def queue_size(self) -> int:
        return len(self._heap)

    async def drain(self, timeout_s: float) -> bool:
        """Accept nothing new; wait until everything accepted is answered."""
        self._closing = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        """Stop forming batches; fail whatever is still queued; wait for running batches."""
        self._closing = True
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        while self._heap:
            p = heapq.heappop(self._heap)
            self._dequeued(p)
            if not p.future.done():
                p.future.set_exception(ShuttingDown("model is unloading"))
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)

    # -- submitting ------------------------------------------------------------------

    async def infer(
        self,
        inputs: Mapping[str, Array],
        rows: int,
        *,
        timeout_s: float | None = None,
        priority: int = 0,
    ) -> Outputs:
        """Queue one validated request and wait for its rows of the batch output."""
        return await self.submit(inputs, rows, timeout_s=timeout_s, priority=priority)

    def submit(
        self,
        inputs: Mapping[str, Array],
        rows: int,
        *,
        timeout_s: float | None = None,
        priority: int = 0,
        counted: bool = True,
    ) -> Coroutine[Any, Any, Outputs]:
        """Queue one validated request now; await the result to get its rows.

        Synchronous up to the queueing, so a caller that picked this model and calls
        ``submit`` in the same step cannot lose the request to an unload in between.
        ``counted`` off: this is a part of a request, whose outcome its caller counts
        once (``count_outcome``), so the request metrics count requests, not parts.
        """
        if self._closing:
            raise ShuttingDown("model is unloading; no new requests")
        if len(self._heap) >= self._max_queue:
            if counted:
                self._metrics.failure("rejected")
            raise Overloaded(f"queue full ({self._max_queue} requests waiting); retry later")
        timeout = self._timeout if timeout_s is None else min(timeout_s, self._timeout)
        now = time.monotonic()
        fut: asyncio.Future[Outputs] = asyncio.get_running_loop().create_future()
        heapq.heappush(
            self._heap, Pending(priority, next(self._seq), inputs, rows, fut, now, now + timeout)
        )
        self._queued_rows += rows
        self._metrics.queued(1)
        self._has_work.set()
        self._idle.clear()
        return self._result(fut, now, timeout, counted)

    async def _result(
        self, fut: asyncio.Future[Outputs], start: float, timeout: float, counted: bool
    ) -> Outputs:
        # The deadline covers queue and compute: a timer fails the future when it passes,
        # and a request still queued then is skipped when its batch forms. (A timer
        # rather than asyncio.wait_for, which costs two more futures and a task switch
        # per request.)
        timer = asyncio.get_running_loop().call_later(
            max(start + timeout - time.monotonic(), 0.0), _expire, fut, timeout
        )
        try:
            out = await fut
        except BaseException as e:
            if isinstance(e, asyncio.CancelledError):
                fut.cancel()
            if counted:
                self.count_outcome(start, e)
            raise
        finally:
            timer.cancel()
        if counted:
            self._metrics.success(time.monotonic() - start)
        return out

    def count_outcome(self, start: float, error: BaseException | None = None) -> None:
        """Count one request's outcome: answered (``error`` None) or failed, queued at
        ``start`` (``time.monotonic()``)."""
        seconds = time.monotonic() - start
        if error is None:
            self._metrics.success(seconds)
        elif isinstance(error, asyncio.CancelledError):
            self._metrics.failure("cancelled", seconds)
        elif isinstance(error, Overloaded):
            self._metrics.failure("rejected")
        elif isinstance(error, ServekitError):
            self._metrics.failure(_reason(error), seconds)

    # -- the batching loop -----------------------------------------------------------

    async def _run(self) -> None:
        while True:
            worker = await self._pool.acquire()
            try:
                batch = await self._next_batch()
            except BaseException:
                self._pool.release(worker)
                raise
            if not batch:
                self._pool.release(worker)
                continue
            task = asyncio.create_task(self._execute(worker, batch))
            self._inflight.add(task)
            task.add_done_callback(self._batch_done)

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._maybe_idle()

    def _maybe_idle(self) -> None:
        if not self._heap and not self._inflight:
            self._idle.set()

    async def _next_batch(self) -> list[Pending]:
        await self._has_work.wait()
        if self._max_delay > 0 and self._queued_rows < self.max_batch_size:
            # Opt-in: give the batch until the oldest request's delay runs out to fill.
            oldest = min(p.enqueued for p in self._heap)
            wait = oldest + self._max_delay - time.monotonic()
            while wait > 0 and self._queued_rows < self.max_batch_size:
                self._has_work.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._has_work.wait(), wait)
                wait = oldest + self._max_delay - time.monotonic()
        batch: list[Pending] = []
        rows = 0
        now = time.monotonic()
        shape_key: tuple[tuple[int, ...], ...] | None = None
        put_back: list[Pending] = []
        # A request larger than max_batch_size (allowed for unbatchable models) runs alone.
        while self._heap and (not batch or rows + self._heap[0].rows <= self.max_batch_size):
            p = heapq.heappop(self._heap)
            if not _still_wanted(p, now):
                self._dequeued(p)
                continue
            key = _row_shapes(p.inputs)
            if shape_key is None:
                shape_key = key
            elif key != shape_key:
                # Only rows of one shape can be stacked (models with variable inner dims).
                put_back.append(p)
                continue
            self._dequeued(p)
            batch.append(p)
            rows += p.rows
        for p in put_back:
            heapq.heappush(self._heap, p)
        if not self._heap:
            self._has_work.clear()
            self._maybe_idle()
        return batch

    async def _isolate(
        self, worker: Instance, batch: list[Pending], error: InferenceFailed
    ) -> None:
        """The model failed on this batch's inputs: each request runs again alone, so
        that only the requests that fail alone get an error (a 400 naming the model),
        and their batch-mates their answers."""
        if len(batch) == 1:
            if not batch[0].future.done():
                batch[0].future.set_exception(self._input_failed(error))
            return
        for i, p in enumerate(batch):
            if p.future.done():
                continue
            replacements = worker.replacements
            self._metrics.batch(p.rows, [])
            started = time.perf_counter()
            try:
                out = await self._pool.run(worker, p.inputs)
            except InferenceFailed as e:
                if not _kept(worker, replacements):
                    for rest in batch[i:]:
                        if not rest.future.done():
                            rest.future.set_exception(e)
                    return
                p.future.set_exception(self._input_failed(e))
            else:
                if not p.future.done():
                    p.future.set_result(out)
                self._metrics.computed(1, 0.0, time.perf_counter() - started, 0.0)

    def _input_failed(self, error: InferenceFailed) -> InputFailed:
        return InputFailed(f"model {self.model_label} failed on this request's input ({error})")

    def _dequeued(self, p: Pending) -> None:
        self._queued_rows -= p.rows
        self._metrics.queued(-1)

    async def _execute(self, worker: Instance, batch: list[Pending]) -> None:
        try:
            # This task starts a loop iteration or more after the batch formed: drop what
            # its caller or its deadline ended meanwhile, as the queue would have.
            now = time.monotonic()
            batch = [p for p in batch if _still_wanted(p, now)]
            if not batch:
                return
            rows = sum(p.rows for p in batch)
            self._metrics.batch(rows, [now - p.enqueued for p in batch])
            started = time.perf_counter()
            if len(batch) == 1:
                inputs = batch[0].inputs
            else:
                inputs = {
                    name: np.concatenate([p.inputs[name] for p in batch])
                    for name in batch[0].inputs
                }
            replacements = worker.replacements
            stacked = time.perf_counter()
            try:
                out = await self._pool.run(worker, inputs)
            except InferenceFailed as e:
                if not _kept(worker, replacements):
                    raise  # the instance itself broke: the batch fails
                await self._isolate(worker, batch, e)
                return
        except Exception as e:
            # Whatever went wrong fails this batch only; the loop and the pool go on.
            err = e if isinstance(e, ServekitError) else InferenceFailed(f"{type(e).__name__}: {e}")
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(err)
        else:
            computed = time.perf_counter()
            offset = 0
            for p in batch:
                if not p.future.done():  # its caller may have given up meanwhile
                    p.future.set_result({k: v[offset : offset + p.rows] for k, v in out.items()})
                offset += p.rows
            self._metrics.computed(
                len(batch), stacked - started, computed - stacked, time.perf_counter() - computed
            )
        finally:
            self._pool.release(worker)


def _reason(e: ServekitError) -> str:
    """The failure reason a request's error is counted under."""
    if isinstance(e, DeadlineExceeded):
        return "timeout"
    return "invalid" if isinstance(e, InputFailed) else "error"


def _kept(worker: Instance, replacements: int) -> bool:
    """After a failed run: the instance still runs its warm-up rows (it was neither
    rebuilt nor lost), so the failure came from the batch's inputs."""
    return not worker.dead_reason and worker.replacements == replacements


def _still_wanted(p: Pending, now: float) -> bool:
    if p.future.done():  # cancelled by its caller, or its deadline timer fired
        return False
    if now > p.deadline:  # past it, though the timer has not run yet
        p.future.set_exception(DeadlineExceeded("deadline passed while queued"))
        return False
    return True


def _expire(fut: asyncio.Future[Outputs], timeout: float) -> None:
    if not fut.done():
        fut.set_exception(DeadlineExceeded(f"deadline of {timeout * 1000:.0f} ms passed"))


def _row_shapes(inputs: Mapping[str, Array]) -> tuple[tuple[int, ...], ...]:
    return tuple(v.shape[1:] for v in inputs.values())
