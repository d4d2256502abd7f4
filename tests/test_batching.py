"""The batcher with a real pool and real interpreters.

The gate holds the real model's run so that queue states are deterministic; it is the
only control (a clock, in effect), the inference itself is real.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Mapping

import numpy as np
import pytest

import servekit.pool as pool_module
from conftest import MODELS, digits_rows, direct_predict, model_path
from servekit.batching import Batcher
from servekit.config import ModelConfig
from servekit.errors import DeadlineExceeded, Overloaded, ShuttingDown
from servekit.metrics import Metrics
from servekit.pool import InstancePool
from servekit.repository import ModelSource, ServedModel
from servekit.runtime import ModelRunner, TFLiteModel, read_model_bytes
from servekit.tensors import Array

CONTENT = read_model_bytes(model_path("digits"))


class GatedModel(TFLiteModel):
    """A real digits interpreter whose runs wait for ``release`` and record batch sizes."""

    entered: threading.Event
    release: threading.Event
    batches: list[int]

    def run(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        self.batches.append(len(inputs["pixels"]))
        self.entered.set()
        self.release.wait(10)
        return super().run(inputs)


@pytest.fixture()
async def gated() -> AsyncIterator[tuple[Batcher, GatedModel, Metrics]]:
    model_holder: list[GatedModel] = []

    def factory(threads: int) -> TFLiteModel:
        m = GatedModel(CONTENT, num_threads=threads)
        m.entered, m.release, m.batches = threading.Event(), threading.Event(), []
        m.prepare([1, 2, 4, 8])
        model_holder.append(m)
        return m

    metrics = Metrics()
    mm = metrics.for_model("digits", "1")
    pool = InstancePool(factory, 1, mm, "t")
    await pool.start()
    batcher = Batcher(
        pool, mm, max_batch_size=8, max_queue_delay_s=0, max_queue_size=4, timeout_s=5
    )
    batcher.start()
    yield batcher, model_holder[0], metrics
    model_holder[0].release.set()
    await batcher.close()
    await pool.close()


def rows(n: int, offset: int = 0) -> dict[str, Array]:
    return {"pixels": digits_rows(n, offset)}


async def started(model: GatedModel) -> None:
    await asyncio.to_thread(model.entered.wait, 5)
    model.entered.clear()


async def test_idle_instance_runs_a_lone_request_at_once(
    gated: tuple[Batcher, GatedModel, Metrics],
) -> None:
    batcher, model, _ = gated
    model.release.set()
    out = await asyncio.wait_for(batcher.infer(rows(2), 2), 5)
    want = direct_predict("digits", rows(2))["probabilities"]
    np.testing.assert_allclose(out["probabilities"], want, rtol=1e-5, atol=1e-6)
    assert model.batches == [2]


async def test_queued_requests_form_one_batch_by_rows(
    gated: tuple[Batcher, GatedModel, Metrics],
) -> None:
    batcher, model, metrics = gated
    first = asyncio.create_task(batcher.infer(rows(1), 1))
    await started(model)  # the instance is busy with the first request
    sizes = [3, 2, 4]  # 3 + 2 fit in max_batch_size 8, the 4 waits for the next batch
    offsets = [1, 4, 6]
    tasks = [
        asyncio.create_task(batcher.infer(rows(n, o), n))
        for n, o in zip(sizes, offsets, strict=True)
    ]
    await asyncio.sleep(0.05)
    model.release.set()
    results = await asyncio.wait_for(asyncio.gather(first, *tasks), 10)
    assert model.batches == [1, 5, 4]
    for (n, o), out in zip(zip(sizes, offsets, strict=True), results[1:], strict=True):
        want = direct_predict("digits", rows(n, o))["probabilities"]
        np.testing.assert_allclose(out["probabilities"], want, rtol=1e-5, atol=1e-6)
    assert (
        metrics.registry.get_sample_value(
            "servekit_executions_total", {"model": "digits", "version": "1"}
        )
        == 3
    )


async def test_cancelled_waiter_does_not_strand_its_batch_mates(
    gated: tuple[Batcher, GatedModel, Metrics],
) -> None:
    batcher, model, _ = gated
    blocker = asyncio.create_task(batcher.infer(rows(1), 1))
    await started(model)
    t1, t2, t3 = (asyncio.create_task(batcher.infer(rows(1, i), 1)) for i in (1, 2, 3))
    await asyncio.sleep(0.05)
    t2.cancel()
    model.release.set()
    r1, r3 = await asyncio.wait_for(asyncio.gather(t1, t3), 10)
    await blocker
    assert r1["probabilities"].shape == (1, 10) and r3["probabilities"].shape == (1, 10)
    assert t2.cancelled()
    assert model.batches == [1, 2]  # the cancelled request was not computed


async def test_full_queue_is_refused_up_front(gated: tuple[Batcher, GatedModel, Metrics]) -> None:
    batcher, model, metrics = gated
    blocker = asyncio.create_task(batcher.infer(rows(1), 1))
    await started(model)
    queued = [asyncio.create_task(batcher.infer(rows(1), 1)) for _ in range(4)]
    await asyncio.sleep(0.05)
    with pytest.raises(Overloaded, match="queue full"):
        await batcher.infer(rows(1), 1)
    model.release.set()
    await asyncio.wait_for(asyncio.gather(blocker, *queued), 10)  # nothing accepted is lost
    assert (
        metrics.registry.get_sample_value(
            "servekit_requests_total",
            {"model": "digits", "version": "1", "outcome": "failure", "reason": "rejected"},
        )
        == 1
    )


async def test_deadline_passed_in_queue_is_never_computed(
    gated: tuple[Batcher, GatedModel, Metrics],
) -> None:
    batcher, model, _ = gated
    blocker = asyncio.create_task(batcher.infer(rows(1), 1))
    await started(model)
    with pytest.raises(DeadlineExceeded):
        await batcher.infer(rows(3), 3, timeout_s=0.05)
    model.release.set()
    await blocker
    await asyncio.sleep(0.05)
    assert model.batches == [1]  # the 3-row request expired in the queue


async def test_priority_orders_the_queue(gated: tuple[Batcher, GatedModel, Metrics]) -> None:
    batcher, model, _ = gated
    batcher.max_batch_size = 1
    blocker = asyncio.create_task(batcher.infer(rows(1), 1))
    await started(model)
    low = asyncio.create_task(batcher.infer(rows(2), 2, priority=5))
    await asyncio.sleep(0.01)
    high = asyncio.create_task(batcher.infer(rows(3), 3, priority=1))
    await asyncio.sleep(0.05)
    model.release.set()
    await asyncio.wait_for(asyncio.gather(blocker, low, high), 10)
    assert model.batches == [1, 3, 2]


SLOW = MODELS / "slow" / "slow" / "1" / "model.tflite"  # ~17 ms an invoke


def spy_threads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The thread idents ModelRunner.run is called from, in order."""
    ran_in: list[int] = []
    real_run = ModelRunner.run

    def spied_run(self: ModelRunner, inputs: Mapping[str, Array]) -> dict[str, Array]:
        ran_in.append(threading.get_ident())
        return real_run(self, inputs)

    monkeypatch.setattr(ModelRunner, "run", spied_run)
    return ran_in


@pytest.mark.parametrize(
    ("name", "config", "where"),
    [
        ("digits", ModelConfig(), "inline"),  # its batch of 32 computes in microseconds
        ("slow", ModelConfig(max_batch_size=2), "thread"),
        ("digits", ModelConfig(execution="thread"), "thread"),
        ("digits", ModelConfig(instances=2), "thread"),  # instances are for several cores
        ("slow", ModelConfig(max_batch_size=2, execution="inline"), "inline"),
        # Fixed batch of 1: a batch of 8 rows is 8 invokes, one of 4096 rows 4096.
        ("fixed", ModelConfig(max_batch_size=8), "inline"),
        ("fixed", ModelConfig(max_batch_size=4096), "thread"),
    ],
)
async def test_batches_run_where_the_config_and_the_warm_up_timing_say(
    name: str, config: ModelConfig, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A threshold well clear of both sides (digits: microseconds a batch; slow: ~17 ms an
    # invoke; fixed: 4096 invokes of several microseconds), so that a loaded machine's
    # warm-up timings cannot flip the choice the way they could near 0.2 ms.
    monkeypatch.setattr(pool_module, "INLINE_MAX_BATCH_S", 0.002)
    path = SLOW if name == "slow" else model_path(name)
    served = ServedModel(ModelSource(name, 1, path, None), config, Metrics())
    await served.load()
    ran_in = spy_threads(monkeypatch)
    try:
        assert served.execution == where
        assert served.metadata()["batching"]["execution"] == where
        key = served.inputs[0].name
        x = np.linspace(-1, 1, 192).reshape(3, 64) if name == "slow" else digits_rows(3)
        x = x.astype(np.float32)
        out = await asyncio.gather(*(served.infer({key: x[i : i + 1]}) for i in range(3)))
        if name != "slow":
            want = direct_predict("digits", {key: x})["probabilities"]
            got = np.concatenate([o["probabilities"] for o in out])
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        assert len(ran_in) >= 1
        on_loop = {t == threading.get_ident() for t in ran_in}
        assert on_loop == {where == "inline"}
    finally:
        await served.unload(5)


def test_inline_execution_takes_one_instance() -> None:
    with pytest.raises(ValueError, match="instances must be 1"):
        ModelConfig(execution="inline", instances=2)


async def test_requests_still_queued_at_close_are_failed(
    gated: tuple[Batcher, GatedModel, Metrics],
) -> None:
    batcher, model, _ = gated
    blocker = asyncio.create_task(batcher.infer(rows(1), 1))
    await started(model)
    queued = [asyncio.create_task(batcher.infer(rows(1, i), 1)) for i in (1, 2)]
    await asyncio.sleep(0.05)
    closing = asyncio.create_task(batcher.close())
    await asyncio.sleep(0.05)
    model.release.set()
    await asyncio.wait_for(closing, 10)
    await blocker
    for task in queued:
        with pytest.raises(ShuttingDown):
            await task
