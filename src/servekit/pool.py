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
            start = time.perf_counter()
            try:
                out = model.run(job.inputs)
            except ServekitError as e:
                job.future.set_exception(e)
            except Exception as e:  # a bug in the runtime must fail the batch, not the thread
                log.exception("invoke failed")
                job.future.set_exception(InferenceFailed(f"{type(e).__name__}: {e}"))
            else:
                job.future.set_result(out)
            finally:
                self._metrics.compute(time.perf_counter() - start)


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
        self._metrics.set_instances(self._size)
        self.model = models[0]
        return models[0]

    async def acquire(self) -> Instance:
        w = await self._idle.get()
        self._metrics.busy(1)
        return w

    def release(self, worker: Instance) -> None:
        self._metrics.busy(-1)
        self._idle.put_nowait(worker)

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
