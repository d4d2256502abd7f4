"""The data plane (servekit/dataplane.py) with a stand-in registry and model.

One synchronous step from choosing a model version to queueing on it, readiness and
bad input counted against the model, and the adapter's cancellation signal: watched
only for a request still waiting after WATCH_AFTER_S, and then it cancels the queued
request.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from servekit import dataplane
from servekit.config import ModelConfig
from servekit.dataplane import DataPlane
from servekit.errors import (
    BadInput,
    ClientDisconnected,
    DeadlineExceeded,
    NotFound,
    NotReady,
    Overloaded,
)
from servekit.tensors import TensorSpec


@dataclass
class Decoded:
    inputs: Mapping[str, Any]
    timeout_s: float | None = None
    priority: int = 0


@dataclass
class FakeModel:
    """What the data plane uses of a ServedModel; ``submit`` records and queues."""

    events: list[str]
    name: str = "m"
    version: int = 1
    state: str = "READY"
    reason: str = ""
    invalid: int = 0
    submitted: list[tuple[Mapping[str, Any], float | None, int]] = field(default_factory=list)
    result: asyncio.Future[dict[str, Any]] | None = None  # the last request's
    results: list[asyncio.Future[dict[str, Any]]] = field(default_factory=list)
    config: ModelConfig = field(default_factory=lambda: ModelConfig(max_batch_size=4))
    inputs: tuple[TensorSpec, ...] = (TensorSpec("x", np.dtype(np.float32), (-1, 2)),)
    queue_room: int = 1_000  # submits accepted before Overloaded

    @property
    def ready(self) -> bool:
        return self.state == "READY"

    def count_invalid(self) -> None:
        self.invalid += 1

    def count_outcome(self, start: float, error: BaseException | None = None) -> None:
        self.events.append(f"counted {type(error).__name__ if error else 'success'}")

    def submit(
        self,
        inputs: Mapping[str, Any],
        *,
        timeout_s: float | None = None,
        priority: int = 0,
        counted: bool = True,
    ) -> Any:
        self.events.append("submit" if counted else "submit part")
        if len(self.submitted) >= self.queue_room:
            raise Overloaded("queue full")
        self.submitted.append((inputs, timeout_s, priority))
        self.result = asyncio.get_running_loop().create_future()
        self.results.append(self.result)
        return self._wait(self.result)

    async def _wait(self, result: asyncio.Future[dict[str, Any]]) -> dict[str, Any]:
        try:
            return await result
        except asyncio.CancelledError:
            result.cancel()  # as the batcher's: a cancelled waiter drops its queued request
            raise


class FakeRegistry:
    def __init__(self, model: FakeModel) -> None:
        self.model = model

    def get(self, name: str, version: str | None = None) -> FakeModel:
        self.model.events.append("get")
        # Anything that lets the loop run before the request is queued shows up here.
        asyncio.get_running_loop().call_soon(self.model.events.append, "loop ran")
        if name != self.model.name:
            raise NotFound(f"unknown model '{name}'")
        return self.model

    def ready(self) -> bool:
        return self.model.ready

    def all(self) -> list[FakeModel]:
        return [self.model]


def plane() -> tuple[DataPlane, FakeModel]:
    model = FakeModel(events=[])
    return DataPlane(FakeRegistry(model)), model  # type: ignore[arg-type]


X = {"x": np.zeros((1, 2), np.float32)}


async def answer(model: FakeModel, outputs: dict[str, Any]) -> None:
    await asyncio.sleep(0)  # the infer task's first step queues the request
    assert model.result is not None
    model.result.set_result(outputs)


async def test_the_version_is_chosen_and_queued_in_one_step() -> None:
    p, model = plane()

    def decode(m: Any) -> Decoded:
        model.events.append("decode")
        return Decoded(X, timeout_s=2.0, priority=3)

    task = asyncio.create_task(p.infer("m", None, decode))
    await answer(model, {"y": 1})
    done = await task
    assert model.events[:3] == ["get", "decode", "submit"]  # the loop ran only after
    assert model.submitted == [(X, 2.0, 3)]
    assert (done.model, done.request, done.outputs) == (model, Decoded(X, 2.0, 3), {"y": 1})


async def test_unknown_not_ready_and_bad_input() -> None:
    p, model = plane()
    with pytest.raises(NotFound):
        await p.infer("nope", None, lambda m: Decoded(X))

    def bad(m: Any) -> Decoded:
        raise BadInput("no")

    with pytest.raises(BadInput):
        await p.infer("m", None, bad)
    assert model.invalid == 1

    model.state, model.reason = "LOADING", "warming up"
    with pytest.raises(NotReady, match="version 1 is LOADING: warming up"):
        await p.infer("m", None, bad)
    assert model.submitted == [] and model.invalid == 1
    assert not p.is_ready("m")
    with pytest.raises(NotFound):
        p.is_ready("nope")


async def test_a_quick_answer_never_watches_the_signal() -> None:
    p, model = plane()
    watched = []

    async def cancelled() -> None:
        watched.append(1)
        await asyncio.Event().wait()

    task = asyncio.create_task(p.infer("m", None, lambda m: Decoded(X), cancelled=cancelled))
    await answer(model, {"y": 1})
    assert (await task).outputs == {"y": 1}
    await asyncio.sleep(dataplane.WATCH_AFTER_S * 2)
    assert watched == []


@pytest.mark.parametrize("how", ["returns", "raises"])
async def test_the_cancellation_signal_drops_the_queued_request(how: str) -> None:
    p, model = plane()
    gone = asyncio.Event()

    async def cancelled() -> None:
        await gone.wait()
        if how == "raises":
            raise OSError("connection lost")

    task = asyncio.create_task(p.infer("m", None, lambda m: Decoded(X), cancelled=cancelled))
    await asyncio.sleep(dataplane.WATCH_AFTER_S * 2)  # the signal is watched by now
    gone.set()
    with pytest.raises(ClientDisconnected):
        await task
    assert model.result is not None and model.result.cancelled()


async def test_cancelling_the_caller_still_cancels_it() -> None:
    p, model = plane()
    never = asyncio.Event()
    task = asyncio.create_task(p.infer("m", None, lambda m: Decoded(X), cancelled=never.wait))
    await asyncio.sleep(dataplane.WATCH_AFTER_S * 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert model.result is not None and model.result.cancelled()


# -- requests over max_batch_size (the fake model's is 4) --------------------------------


def rows(n: int) -> dict[str, np.ndarray]:
    return {"x": np.arange(n * 2, dtype=np.float32).reshape(n, 2)}


async def test_a_large_request_is_queued_in_chunks_in_one_step_and_joined_in_order() -> None:
    p, model = plane()
    x = rows(10)
    task = asyncio.create_task(p.infer("m", None, lambda m: Decoded(x, timeout_s=2.0, priority=1)))
    await asyncio.sleep(0)
    # Every chunk was queued before the loop ran (a draining version finishes them all).
    assert model.events[:4] == ["get", "submit part", "submit part", "submit part"]
    assert [s[0]["x"].shape[0] for s in model.submitted] == [4, 4, 2]
    assert all(s[1:] == (2.0, 1) for s in model.submitted)
    # Chunks answer out of order; the request's rows come back in order.
    for i in (2, 0, 1):
        model.results[i].set_result({"y": model.submitted[i][0]["x"] * 10, "n": np.full(1, i)})
    done = await task
    np.testing.assert_array_equal(done.outputs["y"], x["x"] * 10)
    np.testing.assert_array_equal(done.outputs["n"], [0, 1, 2])
    assert model.events[-1] == "counted success"  # the request, once
    assert model.events.count("counted success") == 1


async def test_a_request_within_max_batch_size_is_one_submit() -> None:
    p, model = plane()
    task = asyncio.create_task(p.infer("m", None, lambda m: Decoded(rows(4))))
    await answer(model, {"y": 1})
    assert (await task).outputs == {"y": 1}
    assert len(model.submitted) == 1


async def test_one_failed_chunk_fails_the_request_and_drops_the_rest() -> None:
    p, model = plane()
    task = asyncio.create_task(p.infer("m", None, lambda m: Decoded(rows(12))))
    await asyncio.sleep(0)
    model.results[0].set_result({"y": np.zeros(4)})
    model.results[1].set_exception(DeadlineExceeded("deadline of 5 ms passed"))
    with pytest.raises(DeadlineExceeded, match="5 ms"):
        await task
    await asyncio.sleep(0)
    assert model.results[2].cancelled()  # the chunk still queued is dropped


async def test_a_queue_that_fills_part_way_drops_the_queued_chunks() -> None:
    p, model = plane()
    model.queue_room = 2
    with pytest.raises(Overloaded):
        await p.infer("m", None, lambda m: Decoded(rows(12)))
    await asyncio.sleep(0)
    assert len(model.results) == 2 and all(r.cancelled() for r in model.results)


async def test_cancelling_a_large_request_drops_every_queued_chunk() -> None:
    p, model = plane()
    never = asyncio.Event()
    task = asyncio.create_task(
        p.infer("m", None, lambda m: Decoded(rows(12)), cancelled=never.wait)
    )
    await asyncio.sleep(0)
    model.results[1].set_result({"y": np.zeros(4)})
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0)
    assert [r.cancelled() for r in model.results] == [True, False, True]


@pytest.mark.parametrize(
    ("config", "n", "message"),
    [
        (
            ModelConfig(max_batch_size=4, max_request_rows=8),
            9,
            "request of 9 rows is over this model's max_request_rows 8",
        ),
        (
            ModelConfig(max_batch_size=4, max_queue_size=2),
            9,
            "needs 3 batches of max_batch_size 4, more than this model's queue holds "
            r"\(max_queue_size 2\); send at most 8 rows",
        ),
    ],
)
async def test_limits_of_a_large_request(config: ModelConfig, n: int, message: str) -> None:
    p, model = plane()
    model.config = config
    with pytest.raises(BadInput, match=message):
        await p.infer("m", None, lambda m: Decoded(rows(n)))
    assert model.submitted == [] and model.invalid == 1


async def test_a_large_request_is_validated_whole() -> None:
    p, model = plane()
    x = {"x": np.zeros((9, 3), np.float32)}
    with pytest.raises(BadInput, match=r"expected shape \[-1, 2\], got \[9, 3\]"):
        await p.infer("m", None, lambda m: Decoded(x))
    assert model.submitted == [] and model.invalid == 1


def test_the_data_plane_imports_no_web_framework() -> None:
    code = (
        "import sys, servekit.dataplane; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'fastapi', 'starlette', "
        "'uvicorn', 'httpx'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
