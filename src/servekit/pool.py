"""A pool of interpreter instances, each owned by one worker thread.

Worker threads never touch asyncio objects: a job carries a ``concurrent.futures.Future``
that the event loop side awaits through ``asyncio.wrap_future``.
``Interpreter.invoke`` releases the GIL, so N instances in N threads use N cores.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from servekit.errors import InferenceFailed, ServekitError
from servekit.metrics import ModelMetrics
from servekit.runtime import TFLiteModel
from servekit.tensors import Array

log = logging.getLogger(__name__)

Outputs = dict[str, Array]


@dataclass(slots=True)
class _Job:
    inputs: Mapping[str, Array]
    future: concurrent.futures.Future[Outputs]


class Instance(threading.Thread):
    """One interpreter instance: a thread that builds its own interpreter, then runs
    jobs from its queue until told to stop."""

    def __init__(
        self,
        name: str,
        factory: Callable[[], TFLiteModel],
        ready: concurrent.futures.Future[TFLiteModel],
        metrics: ModelMetrics,
    ) -> None:
        super().__init__(name=name, daemon=True)
        self._factory = factory
        self._ready = ready
        self._metrics = metrics
        self.jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self.dead_reason = ""  # set (by this thread) when the instance is beyond repair
        self.replacements = 0

    def run(self) -> None:
        try:
            model = self._factory()
        except BaseException as e:
            self._ready.set_exception(e)
            return
        self._ready.set_result(model)
        while (job := self.jobs.get()) is not None:
            if not job.future.set_running_or_notify_cancel():
                continue
            # Busy while the interpreter runs, not while the batcher holds an idle instance.
            self._metrics.busy(1)
            start = time.perf_counter()
            result: Outputs | Exception
            try:
                result = model.run(job.inputs)
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
                # Recover before answering, so that when the batcher releases this
                # instance the pool already knows whether it is still usable.
                recovered = self._recover(model)
                job.future.set_exception(result)
                if recovered is None:
                    return  # dead: the pool stops handing it work
                model = recovered
            else:
                job.future.set_result(result)

    def _recover(self, model: TFLiteModel) -> TFLiteModel | None:
        """After a failed batch: keep the interpreter if it still runs a warm-up row,
        else build a fresh one; None if even that fails."""
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


class InstancePool:
    """N interpreter instances. ``acquire`` an idle one, ``run`` a batch on it, ``release``."""

    def __init__(
        self, factory: Callable[[], TFLiteModel], size: int, metrics: ModelMetrics, name: str
    ) -> None:
        self._factory = factory
        self._size = size
        self._metrics = metrics
        self._name = name
        self._workers: list[Instance] = []
        self._idle: asyncio.Queue[Instance] = asyncio.Queue()
        self.model: TFLiteModel | None = None  # one instance, read for its signature
        self.alive = 0
        # Called (on the event loop) with the reason when the last instance is lost.
        self.on_all_dead: Callable[[str], None] | None = None

    @property
    def size(self) -> int:
        return self._size

    async def start(self) -> TFLiteModel:
        """Start the workers; returns once every instance is loaded and warm."""
        readies: list[concurrent.futures.Future[TFLiteModel]] = []
        for i in range(self._size):
            ready: concurrent.futures.Future[TFLiteModel] = concurrent.futures.Future()
            w = Instance(f"{self._name}-{i}", self._factory, ready, self._metrics)
            w.start()
            self._workers.append(w)
            readies.append(ready)
        try:
            models = await asyncio.gather(*(asyncio.wrap_future(r) for r in readies))
        except BaseException:
            await self.close()
            raise
        for w in self._workers:
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
