"""The data plane: the one entry to servekit's core for every protocol.

A protocol adapter (HTTP's TF Serving and V2 APIs today, gRPC later) only translates:
its wire format into ``dict[str, ndarray]`` and back, and servekit's errors into its
statuses. Everything in between happens here, the same for every protocol: which model
version serves a request, whether it is ready, validation, queueing, and waiting for
the result within the request's deadline unless the caller goes away first. The adapter
supplies the deadline (``timeout_s`` of the decoded request) and the cancellation signal
(an HTTP client that disconnected, a gRPC call that was cancelled).

A request of more rows than the model's ``max_batch_size`` (whole evaluation sets, as
TF Serving takes them) is split here into chunks of at most ``max_batch_size`` rows, up
to the model's ``max_request_rows``. Every chunk is queued in the same synchronous step
as a small request, so a version that starts draining finishes all of them; the answer
is the chunks' outputs joined in order. The first chunk that fails fails the request
with its error, and the chunks still queued are dropped before compute.

No web framework here: errors are ``servekit.errors``' and carry no status.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import numpy as np

from servekit.errors import BadInput, ClientDisconnected, NotReady
from servekit.repository import ModelRegistry, ModelUnavailable, ServedModel
from servekit.tensors import check_inputs
from servekit.triton_config import model_config

if TYPE_CHECKING:
    from servekit.tensors import Array

    Outputs = dict[str, Array]

# Returns once the caller has gone away (the adapter's cancellation signal).
Cancelled = Callable[[], Awaitable[object]]

# How long a request waits for its result before anyone watches for its caller leaving.
# Most answers come sooner, and then no watcher is ever made (a task and a cancellation
# per request: measurable on small models). A caller that leaves earlier is noticed at
# this point all the same, while its request is still queued.
WATCH_AFTER_S = 0.01


class Decoded(Protocol):
    """What the data plane needs of a decoded request; adapters add their own fields."""

    @property
    def inputs(self) -> Mapping[str, Array]: ...

    @property
    def timeout_s(self) -> float | None: ...  # None: the model's own deadline

    @property
    def priority(self) -> int: ...  # the batcher's order: lower is served first


D = TypeVar("D", bound=Decoded)


@dataclass(frozen=True, slots=True)
class Inference(Generic[D]):
    """A served request: the model version that answered, the request as the adapter
    decoded it, and the outputs."""

    model: ServedModel
    request: D
    outputs: Outputs


# Triton's model statistics for (model, version) pairs (``metrics.model_statistics`` on
# the server's scrape registry, which sums every worker process).
Statistics = Callable[[list[tuple[str, str]]], list[dict[str, Any]]]


class DataPlane:
    """Model queries and inference, for every protocol adapter."""

    def __init__(self, registry: ModelRegistry, statistics: Statistics | None = None) -> None:
        self.registry = registry
        self._statistics = statistics

    # -- queries ---------------------------------------------------------------------

    def ready(self) -> bool:
        """Every model due to load has a ready version."""
        return self.registry.ready()

    def models(self) -> list[ServedModel]:
        """Every loaded model version, by name then version."""
        return self.registry.all()

    def versions(self, name: str) -> list[ServedModel]:
        """Every loaded version of one model, oldest first; NotFound if there is none."""
        found = [m for m in self.registry.all() if m.name == name]
        if not found:
            self.registry.get(name)  # raises NotFound naming the served models
        return found

    def model(self, name: str, version: str | None = None) -> ServedModel:
        """A model version in any state (no version: the newest ready one).
        NotFound for an unknown model or version; NotReady if no version is ready."""
        return self.registry.get(name, version)

    def ready_model(self, name: str, version: str | None = None) -> ServedModel:
        """A model version that can serve now; NotReady (with its reason) otherwise."""
        model = self.registry.get(name, version)
        if not model.ready:
            message = (
                f"model '{model.name}' version {model.version} is {model.state}"
                f"{': ' + model.reason if model.reason else ''}"
            )
            if model.state == "UNAVAILABLE":  # as the registry says of a model's newest
                raise ModelUnavailable(message, self.registry.failed_retry_after_s())
            raise NotReady(message)
        return model

    def is_ready(self, name: str, version: str | None = None) -> bool:
        """Whether the model (version) can serve now; NotFound if it is unknown."""
        try:
            return self.registry.get(name, version).ready
        except NotReady:  # no version of the model is ready
            return False

    def model_config(self, name: str, version: str | None = None) -> dict[str, Any]:
        """Triton's model configuration of a model version (no version: the newest
        ready one)."""
        return model_config(self.model(name, version))

    def statistics(
        self, name: str | None = None, version: str | None = None
    ) -> list[dict[str, Any]]:
        """Triton's statistics of every loaded version, every version of ``name``, or
        one version; NotFound if a named model or version is not loaded."""
        if name is None:
            models = self.models()
        elif version is None:
            models = self.versions(name)
        else:
            models = [self.model(name, version)]
        if self._statistics is None:
            return []
        return self._statistics([(m.name, str(m.version)) for m in models])

    # -- inference -------------------------------------------------------------------

    async def infer(
        self,
        name: str,
        version: str | None,
        decode: Callable[[ServedModel], D],
        *,
        cancelled: Cancelled | None = None,
    ) -> Inference[D]:
        """Serve one request on model ``name`` (``version``, or the newest ready one).

        ``decode`` turns the adapter's request into inputs for the chosen model (it
        needs the model's specs); a ``BadInput`` from it is counted against the model.
        The request's ``timeout_s`` bounds its time in the queue and in compute
        (``DeadlineExceeded``). If ``cancelled`` returns first, the request is dropped
        (before compute, if it is still queued) and ``ClientDisconnected`` raised.
        """
        model, request, pending = self._queue(name, version, decode)
        outputs = await _unless_cancelled(pending, cancelled)
        return Inference(model, request, outputs)

    def _queue(
        self, name: str, version: str | None, decode: Callable[[ServedModel], D]
    ) -> tuple[ServedModel, D, Coroutine[Any, Any, Outputs]]:
        # Synchronous from choosing the version to queueing on it (ServedModel.submit
        # queues before it returns): a version that starts draining in between cannot
        # be picked, and what it has queued completes. Keep any await out of here.
        model = self.ready_model(name, version)
        try:
            request = decode(model)
            chunks = _chunks(model, request.inputs)
        except BadInput:
            model.count_invalid()
            raise
        if chunks is None:
            pending = model.submit(
                request.inputs, timeout_s=request.timeout_s, priority=request.priority
            )
            return model, request, pending
        queued: list[Coroutine[Any, Any, Outputs]] = []
        start = time.monotonic()
        try:
            for chunk in chunks:
                queued.append(
                    model.submit(
                        chunk,
                        timeout_s=request.timeout_s,
                        priority=request.priority,
                        counted=False,  # the request is counted once, not each chunk
                    )
                )
        except Exception as e:  # the queue filled up part-way (Overloaded)
            return model, request, _counted(model, start, _joined(queued, refused=e))
        return model, request, _counted(model, start, _joined(queued))


def _chunks(model: ServedModel, inputs: Mapping[str, Array]) -> list[dict[str, Array]] | None:
    """``inputs`` cut into chunks of at most ``max_batch_size`` rows, or None when the
    request fits one batch (``ServedModel.submit`` validates it then, as always).
    BadInput for an invalid request or one over ``max_request_rows``."""
    config = model.config
    if all(a.ndim == 0 or a.shape[0] <= config.max_batch_size for a in inputs.values()):
        return None
    # Validated whole, so that an error names the request's rows, not a chunk's.
    checked, rows = check_inputs(
        inputs,
        model.inputs,
        batched=False,
        max_batch_size=config.max_batch_size,
        allow_nonfinite=config.allow_nonfinite,
    )
    if rows > config.max_request_rows:
        raise BadInput(
            f"request of {rows} rows is over this model's max_request_rows "
            f"{config.max_request_rows}; send at most {config.max_request_rows} rows per "
            f"request (or raise max_request_rows in the model's config.yaml)"
        )
    step = config.max_batch_size
    count = -(-rows // step)
    if count > config.max_queue_size:
        # It could never be queued whole, however idle the model.
        most = config.max_queue_size * step
        raise BadInput(
            f"request of {rows} rows needs {count} batches of max_batch_size {step}, more "
            f"than this model's queue holds (max_queue_size {config.max_queue_size}); send "
            f"at most {most} rows per request"
        )
    return [{k: v[i : i + step] for k, v in checked.items()} for i in range(0, rows, step)]


async def _joined(
    queued: list[Coroutine[Any, Any, Outputs]], refused: Exception | None = None
) -> Outputs:
    """The outputs of a split request's chunks (``queued``, in row order), joined.

    Each chunk runs in a task of its own, so that the batcher computes them side by
    side. The first failure (or the request's cancellation) cancels the other chunks,
    which drops those still queued before compute. ``refused``: the chunks after
    ``queued`` could not be queued; the queued ones are dropped and it is raised.
    """
    tasks = [asyncio.ensure_future(q) for q in queued]
    for t in tasks:
        t.add_done_callback(_retrieved)
    try:
        # Every chunk's first step runs now (tasks start in creation order, before this
        # one resumes): from then on, cancelling a chunk's task drops its queued rows.
        # A task cancelled before its first step would leave them queued.
        await asyncio.sleep(0)
        if refused is not None:
            raise refused
        outputs = [await t for t in tasks]
    except BaseException:
        for t in tasks:
            t.cancel()
        raise
    first = outputs[0]
    return {k: np.concatenate([o[k] for o in outputs]) for k in first}


async def _counted(
    model: ServedModel, start: float, joined: Coroutine[Any, Any, Outputs]
) -> Outputs:
    """A split request's outputs, its outcome counted once in the model's metrics."""
    try:
        outputs = await joined
    except BaseException as e:
        model.count_outcome(start, e)
        raise
    model.count_outcome(start)
    return outputs


def _retrieved(task: asyncio.Future[Outputs]) -> None:
    """A chunk's error is its request's, raised once; the others' are read here, so
    that asyncio does not log them as never retrieved."""
    if not task.cancelled():
        task.exception()


T = TypeVar("T")


async def _unless_cancelled(pending: Coroutine[Any, Any, T], cancelled: Cancelled | None) -> T:
    """Await ``pending`` (a queued request) unless ``cancelled`` returns first.

    If the result is not there within ``WATCH_AFTER_S``, a watcher task awaits
    ``cancelled()``; if it returns (or raises) first, this task is cancelled, which
    cancels the queued request (the batcher drops it before compute), and the caller
    gets ``ClientDisconnected``. ``pending`` runs in this task, not a task of its own:
    one task per request fewer on a path where tasks are a measurable share of the CPU.
    """
    if cancelled is None:
        return await pending
    task = asyncio.current_task()
    assert task is not None
    finished = gone = False
    watcher: asyncio.Future[object] | None = None

    def on_watcher_done(done: asyncio.Future[object]) -> None:
        nonlocal gone
        if done.cancelled() or finished:
            return
        done.exception()  # retrieved: a signal that failed counts as gone too
        gone = True
        task.cancel()

    def watch() -> None:
        nonlocal watcher
        if not finished:
            watcher = asyncio.ensure_future(cancelled())
            watcher.add_done_callback(on_watcher_done)

    timer = asyncio.get_running_loop().call_later(WATCH_AFTER_S, watch)
    try:
        return await pending
    except asyncio.CancelledError:
        if not gone:
            raise
        task.uncancel()
        raise ClientDisconnected("the client disconnected before the result was ready") from None
    finally:
        finished = True
        timer.cancel()
        if watcher is not None:
            watcher.cancel()
