"""A pool of model instances, each built by its own thread.

Two ways to run a batch (``execution`` in the model's config):

- **thread**: the instance's thread runs it. Worker threads never touch asyncio objects:
  a job carries a ``concurrent.futures.Future`` that the event loop side awaits through
  ``asyncio.wrap_future``. Runtimes release the GIL while they compute, so N instances
  in N threads use N cores.
- **inline**: the event loop runs it itself (one instance; its thread ends once the
  instance is built). A hand-off to a thread and back costs the loop more than a small
  model's whole batch takes to compute. While a batch computes inline nothing else on
  the loop runs (no deadline timer fires, no request is read), which is why ``auto``
  keeps it to models whose largest batch computed in under ``INLINE_MAX_BATCH_S`` at
  warm-up. A scrape never sees such an instance busy; the compute histogram still
  counts its batches.

How many instances, of how many runtime threads (``instances`` and
``threads_per_instance``, ``auto`` by default), is decided here too, once the first
instance is warm (``choose_sizing``): from the CPUs this process may use
(``servekit.cpus``, shared among ``--workers`` processes) and what warm-up measured.

``docs/performance.md`` has the measurements behind these rules.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from servekit.config import Execution
from servekit.cpus import CpuBudget, cpu_budget, worker_processes
from servekit.errors import InferenceFailed, ServekitError
from servekit.metrics import ModelMetrics
from servekit.runtime import ModelRunner
from servekit.runtime import runner as runner_module
from servekit.tensors import Array

log = logging.getLogger(__name__)

Outputs = dict[str, Array]


@dataclass(slots=True)
class _Job:
    inputs: Mapping[str, Array]
    future: concurrent.futures.Future[Outputs]


class Instance(threading.Thread):
    """One interpreter instance: a thread that builds its interpreter, then (thread
    execution) runs jobs from its queue until told to stop."""

    def __init__(
        self,
        name: str,
        factory: Callable[[], ModelRunner],
        ready: concurrent.futures.Future[ModelRunner],
        metrics: ModelMetrics,
    ) -> None:
        super().__init__(name=name, daemon=True)
        self._factory = factory
        self._ready = ready
        self._metrics = metrics
        self.model: ModelRunner | None = None  # set by this thread once built
        self.jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self.dead_reason = ""  # set when the instance is beyond repair
        self.replacements = 0

    def run(self) -> None:
        try:
            self.model = self._factory()
        except BaseException as e:
            self._ready.set_exception(e)
            return
        self._ready.set_result(self.model)
        while (job := self.jobs.get()) is not None:
            if not job.future.set_running_or_notify_cancel():
                continue
            result = self.execute(job.inputs)
            if isinstance(result, Exception):
                job.future.set_exception(result)
                if self.dead_reason:
                    return  # the pool stops handing it work
            else:
                job.future.set_result(result)

    def execute(self, inputs: Mapping[str, Array]) -> Outputs | Exception:
        """Run one batch in the calling thread (this instance's own, or the event loop's
        for inline execution; one at a time). A failure is returned, not raised, once the
        instance has recovered from it."""
        model = self.model
        assert model is not None, "execute before the instance was built"
        # Busy while the interpreter runs, not while the batcher holds an idle instance.
        self._metrics.busy(1)
        start = time.perf_counter()
        result: Outputs | Exception
        try:
            result = model.run(inputs)
        except ServekitError as e:
            result = e
        except Exception as e:  # a bug in the runtime must fail the batch, not the thread
            log.exception("invoke failed")
            result = InferenceFailed(f"{type(e).__name__}: {e}")
        finally:
            # Recorded before the caller hears back, so a scrape after the response
            # already counts this batch.
            self._metrics.compute(time.perf_counter() - start)
            self._metrics.busy(-1)
        if isinstance(result, Exception):
            # Recover before answering, so that when the batcher releases this instance
            # the pool already knows whether it is still usable.
            self.model = self._recover(model)
        return result

    def _recover(self, model: ModelRunner) -> ModelRunner | None:
        """After a failed batch: keep the interpreter if it still runs a warm-up row,
        else build a fresh one; None (and ``dead_reason`` set) if even that fails."""
        try:
            model.probe()
            return model
        except Exception as e:
            log.warning("instance %s unusable after a failure (%s); replacing it", self.name, e)
        try:
            fresh = self._factory()
            fresh.probe()
        except Exception as e:
            self.dead_reason = f"instance {self.name} failed and could not be replaced: {e}"
            log.error("%s", self.dead_reason)
            return None
        self.replacements += 1
        return fresh


# ``auto`` execution runs a model inline when its largest batch computes in less than
# this at warm-up: about what a hand-off to a thread and back costs the event loop, so
# a batch blocks the loop for no longer than handing it off would.
INLINE_MAX_BATCH_S = 0.0002


def _variable_inner_dims(model: ModelRunner) -> bool:
    """Warm-up ran such a model at size 1; real requests may be far larger (and resize
    the interpreter), so its warm-up timings bound nothing."""
    return any(d < 0 for spec in model.signature.inputs for d in spec.shape[1:])


def cheap_enough_to_inline(model: ModelRunner, max_rows: int) -> bool:
    """``auto``'s choice: does the largest batch of ``max_rows`` rows surely compute in
    under ``INLINE_MAX_BATCH_S``? Never for variable inner dimensions."""
    if _variable_inner_dims(model):
        return False
    # A batchable model runs any batch within the largest bucket's cost (a split is only
    # taken when cheaper); a fixed-batch one runs a batch as one invoke per chunk.
    invokes = 1 if model.batchable else -(-max_rows // model.chunk)
    return model.slowest_invoke_s * invokes < INLINE_MAX_BATCH_S


# ``auto`` sizing: batching "pays" when the largest bucket runs at least this many times
# the rows/s of batch 1. Such a model gets one instance (queued requests become one
# batch: a second instance splits them into two smaller batches, and on the wide dense
# model it cut requests/s at 64 connections from 1,251 to 398); others get an instance
# per CPU.
BATCHING_PAYS = runner_module.BATCHING_PAYS

Auto = Literal["auto"]


@dataclass(frozen=True, slots=True)
class Sizing:
    """How many instances of how many runtime threads, and why (logs and metadata)."""

    instances: int
    threads: int
    reason: str


def choose_sizing(
    model: ModelRunner,
    instances: int | Auto,
    threads: int | Auto,
    execution: Execution,
    max_rows: int,
    budget: CpuBudget,
    workers: int = 1,
) -> Sizing:
    """Instances x threads for a model whose first instance (one runtime thread when
    ``threads`` is auto) is warm. What the config fixes stays; ``auto`` fills the CPUs
    this process may use (its share when ``workers`` processes serve):

    - one instance of one thread, on the event loop, for a model cheap enough to
      inline (its largest batch computes in microseconds: a thread costs more);
    - one instance when batching pays (its rows/s grow ``BATCHING_PAYS``-fold or more
      with the batch), with every CPU but the event loop's as its threads;
    - otherwise (conv nets on CPU, models that run one row per invoke) one instance of
      one thread per CPU: the most requests/s, and a lone request computes on one
      thread as it would with a single instance.
    """
    cpus = max(1, budget.cpus // max(1, workers))
    share = f"{budget.reason}" + (f", shared by {workers} worker processes" if workers > 1 else "")
    gain = model.batch_gain
    inline = execution == "inline" or (
        execution == "auto"
        and instances in ("auto", 1)
        and threads in ("auto", 1)
        and cheap_enough_to_inline(model, max_rows)
    )
    if inline:
        what = (
            "execution: inline"
            if execution == "inline"
            else f"its largest batch computes in {model.slowest_invoke_s * 1e6:.0f} µs"
        )
        return Sizing(1, 1 if threads == "auto" else threads, f"{what}: inline, one instance")
    if gain >= BATCHING_PAYS:
        why = f"batching pays ({gain:.1f}x the rows/s at batch {model.best_bucket})"
        n = 1 if instances == "auto" else instances
        t = max(1, (cpus - 1) // n) if threads == "auto" else threads
    else:
        why = (
            f"batching gains little ({gain:.2f}x the rows/s at best, batch {model.best_bucket})"
            if model.batchable
            else "one row per invoke"
        )
        if instances == "auto":
            t = 1 if threads == "auto" else threads
            n = max(1, cpus // t)
        else:
            n = instances
            t = max(1, cpus // n) if threads == "auto" else threads
    return Sizing(n, t, f"{n} instance(s) x {t} thread(s): {why}; {share}")


class InstancePool:
    """N interpreter instances. ``acquire`` an idle one, ``run`` a batch on it, ``release``.

    ``factory(threads)`` builds one warm instance with that many runtime threads.
    """

    def __init__(
        self,
        factory: Callable[[int], ModelRunner],
        size: int | Auto,
        metrics: ModelMetrics,
        name: str,
        execution: Execution = "thread",
        max_rows: int = 1,
        threads: int | Auto = 1,
    ) -> None:
        self._factory = factory
        self._wanted = (size, threads)
        self._size = 1 if size == "auto" else size
        self.sizing = Sizing(self._size, 1 if threads == "auto" else threads, "as configured")
        self._execution = execution
        self._max_rows = max_rows  # the most rows a batch can have (for ``auto``)
        self.inline = False  # decided once the instances are built (see ``start``)
        self._metrics = metrics
        self._name = name
        self._workers: list[Instance] = []
        self._idle: asyncio.Queue[Instance] = asyncio.Queue()
        self.model: ModelRunner | None = None  # one instance, read for its signature
        self.alive = 0
        # Called (on the event loop) with the reason when the last instance is lost.
        self.on_all_dead: Callable[[str], None] | None = None

    @property
    def size(self) -> int:
        return self._size

    def describe(self) -> str:
        """What was chosen for this model and why: instances, threads, buckets left out."""
        trimmed = self.model.trimmed if self.model is not None else ""
        return f"{self.sizing.reason}; {trimmed}" if trimmed else self.sizing.reason

    @property
    def threads(self) -> int:
        """Runtime threads of each instance."""
        return self.sizing.threads

    async def _spawn(self, count: int, threads: int) -> list[ModelRunner]:
        """``count`` more instances of ``threads`` threads, once they are warm."""
        readies: list[concurrent.futures.Future[ModelRunner]] = []
        for _ in range(count):
            ready: concurrent.futures.Future[ModelRunner] = concurrent.futures.Future()
            factory = functools.partial(self._factory, threads)
            w = Instance(f"{self._name}-{len(self._workers)}", factory, ready, self._metrics)
            w.start()
            self._workers.append(w)
            readies.append(ready)
        try:
            return list(await asyncio.gather(*(asyncio.wrap_future(r) for r in readies)))
        except BaseException:
            await self.close()
            raise

    async def start(self) -> ModelRunner:
        """Start the workers; returns once every instance is loaded and warm. The first
        is built alone: its warm-up timings size the pool (``choose_sizing``)."""
        instances, threads = self._wanted
        first_threads = 1 if threads == "auto" else threads
        models = await self._spawn(1, first_threads)
        if "auto" in self._wanted:
            self.sizing = choose_sizing(
                models[0],
                instances,
                threads,
                self._execution,
                self._max_rows,
                cpu_budget(),
                worker_processes(),
            )
        if self.sizing.threads != first_threads:  # built again with its threads
            await self.close()
            models = await self._spawn(self.sizing.instances, self.sizing.threads)
        else:
            models += await self._spawn(self.sizing.instances - 1, self.sizing.threads)
        self._size = self.sizing.instances
        auto_single = self._execution == "auto" and self._size == 1
        self.inline = self._execution == "inline" or (
            auto_single and cheap_enough_to_inline(models[0], self._max_rows)
        )
        for w in self._workers:
            if self.inline:
                w.jobs.put(None)  # built: the event loop runs it from now on
            self._idle.put_nowait(w)
        self.alive = self._size
        self._metrics.set_instances(self._size)
        self.model = models[0]
        return models[0]

    async def acquire(self) -> Instance:
        return await self._idle.get()

    def release(self, worker: Instance) -> None:
        if not worker.dead_reason:
            self._idle.put_nowait(worker)
            return
        self.alive -= 1  # beyond repair: never handed work again
        self._metrics.set_instances(self.alive)
        if self.alive == 0 and self.on_all_dead is not None:
            self.on_all_dead(worker.dead_reason)

    @property
    def replacements(self) -> int:
        """Instances rebuilt after a failure left their interpreter unusable."""
        return sum(w.replacements for w in self._workers)

    async def run(self, worker: Instance, inputs: Mapping[str, Array]) -> Outputs:
        """Run a batch on ``worker``: on the event loop (inline) or in its thread."""
        if self.inline:
            result = worker.execute(inputs)
            if isinstance(result, Exception):
                raise result
            return result
        job = _Job(inputs, concurrent.futures.Future())
        worker.jobs.put(job)
        return await asyncio.wrap_future(job.future)

    async def close(self) -> None:
        """Stop every worker after the job it is running; frees the interpreters."""
        for w in self._workers:
            w.jobs.put(None)
        loop = asyncio.get_running_loop()
        for w in self._workers:
            await loop.run_in_executor(None, w.join, 5.0)
        self._workers.clear()
        self._metrics.set_instances(0)
