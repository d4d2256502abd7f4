"""The batcher with a real pool and real interpreters.

The gate holds the real model's run so that queue states are deterministic; it is the
only control (a clock, in effect), the inference itself is real.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Mapping

import numpy as np
import pytest

import servekit.pool as pool_module
from conftest import MODELS, digits_rows, direct_predict, model_path
from servekit.batching import Activity, Batcher
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

    def factory() -> TFLiteModel:
        m = GatedModel(CONTENT)
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


def slow_rows(n: int) -> dict[str, Array]:
    return {"x": np.linspace(-1, 1, 64 * n, dtype=np.float32).reshape(n, 64)}


async def test_a_lone_request_on_an_idle_server_runs_inline_and_company_runs_in_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The slow model (~17 ms an invoke) is far too slow for inline execution (0.2 ms), so
    # auto gives it a thread; with the lone-batch bound raised well clear of 17 ms, its
    # lone batches run on the loop. ``thread`` opts out; two instances never qualify.
    monkeypatch.setattr(pool_module, "INLINE_WHEN_ALONE_MAX_S", 1.0)
    metrics = Metrics()
    activity = Activity()  # one server: its models share it

    def served(name: str, config: ModelConfig) -> ServedModel:
        return ServedModel(ModelSource(name, 1, SLOW, None), config, metrics, activity)

    auto = served("auto", ModelConfig(max_batch_size=2))
    forced = served("forced", ModelConfig(max_batch_size=2, execution="thread"))
    pair = served("pair", ModelConfig(max_batch_size=2, instances=2))
    for m in (auto, forced, pair):
        await m.load()
    loop_thread = threading.get_ident()
    try:
        assert auto.execution == "thread"
        assert auto.metadata()["batching"]["inline_when_alone_rows"] == 2
        assert forced.inline_when_alone_rows == 0 and pair.inline_when_alone_rows == 0
        ran_in = spy_threads(monkeypatch)

        # Alone, one request at a time: on the loop, with the thread's results.
        lone = [await auto.infer(slow_rows(1)) for _ in range(3)]
        assert ran_in == [loop_thread] * 3
        assert activity.requests == 0
        ran_in.clear()

        # Three at once: a batch of 2 and one that arrived while the server was busy.
        together = await asyncio.gather(*(auto.infer(slow_rows(1)) for _ in range(3)))
        assert len(ran_in) == 2 and loop_thread not in ran_in
        for out in (*lone, *together):
            np.testing.assert_array_equal(out["y"], lone[0]["y"])
        ran_in.clear()

        # Company on another model of the same server counts too.
        await asyncio.gather(forced.infer(slow_rows(1)), auto.infer(slow_rows(1)))
        assert len(ran_in) == 2 and loop_thread not in ran_in
        ran_in.clear()

        # Opted out, or two instances: a thread even when alone.
        await forced.infer(slow_rows(1))
        await pair.infer(slow_rows(1))
        assert len(ran_in) == 2 and loop_thread not in ran_in
        ran_in.clear()

        # Alone but more rows than computed within the bound: the thread.
        assert auto._pool is not None
        auto._pool.inline_when_alone_rows = 1
        await auto.infer(slow_rows(2))
        await auto.infer(slow_rows(1))
        assert len(ran_in) == 2 and ran_in[0] != loop_thread and ran_in[1] == loop_thread
        ran_in.clear()

        # A request dropped before compute leaves the count too: the next one is alone.
        with pytest.raises(DeadlineExceeded):
            await auto.infer(slow_rows(1), timeout_s=1e-6)
        assert activity.requests == 0 and ran_in == []
        await auto.infer(slow_rows(1))
        assert ran_in == [loop_thread]
        assert activity.requests == 0
    finally:
        for m in (auto, forced, pair):
            await m.unload(5)


def test_lone_batches_inline_only_rows_that_computed_within_the_bound() -> None:
    model = TFLiteModel(CONTENT)
    model.prepare([1, 2, 4, 8])
    bound = pool_module.INLINE_WHEN_ALONE_MAX_S
    # Warm-up timings are the clock here: set them to known values around the bound.
    model.invoke_costs = {1: bound / 4, 2: bound / 2, 4: bound, 8: bound * 2}
    assert pool_module.rows_inline_when_alone(model, max_rows=8) == 4
    assert pool_module.rows_inline_when_alone(model, max_rows=3) == 3
    model.invoke_costs = {1: bound * 1.5, 2: bound * 2, 4: bound * 3, 8: bound * 4}
    assert pool_module.rows_inline_when_alone(model, max_rows=8) == 0
    # Noise can time a larger bucket below a smaller one; 3 rows pad to bucket 4, so
    # bucket 8's time says nothing about them.
    model.invoke_costs = {1: bound / 4, 2: bound * 1.1, 4: bound * 1.2, 8: bound * 0.9}
    assert pool_module.rows_inline_when_alone(model, max_rows=8) == 1


def test_lone_batches_of_a_fixed_batch_model_count_its_invokes() -> None:
    model = TFLiteModel(read_model_bytes(model_path("fixed")))
    assert not model.prepare([1, 2, 4, 8])  # one chunk per invoke
    bound = pool_module.INLINE_WHEN_ALONE_MAX_S
    model.invoke_costs = {model.chunk: bound / 3.5}  # three invokes fit, four do not
    assert pool_module.rows_inline_when_alone(model, max_rows=64) == 3 * model.chunk
    model.invoke_costs = {model.chunk: bound * 2}
    assert pool_module.rows_inline_when_alone(model, max_rows=64) == 0


async def test_requests_failed_at_close_leave_the_activity_count(
    gated: tuple[Batcher, GatedModel, Metrics],
) -> None:
    batcher, model, _ = gated
    blocker = asyncio.create_task(batcher.infer(rows(1), 1))
    await started(model)
    queued = [asyncio.create_task(batcher.infer(rows(1, i), 1)) for i in (1, 2)]
    await asyncio.sleep(0.05)
    assert batcher._activity.requests == 3
    closing = asyncio.create_task(batcher.close())
    await asyncio.sleep(0.05)
    model.release.set()
    await asyncio.wait_for(closing, 10)
    await blocker
    for task in queued:
        with pytest.raises(ShuttingDown):
            await task
    assert batcher._activity.requests == 0


async def test_a_lone_batch_queues_behind_a_job_still_running_in_the_thread() -> None:
    # An awaiter cancelled mid-batch leaves its job running in the thread; a lone batch
    # run inline beside it would use the interpreter from two threads at once.
    model = GatedModel(CONTENT)
    model.entered, model.release, model.batches = threading.Event(), threading.Event(), []
    model.prepare([1, 2, 4, 8])
    pool = InstancePool(lambda: model, 1, Metrics().for_model("digits", "1"), "t")
    await pool.start()
    pool.inline_when_alone_rows = 8
    worker = await pool.acquire()
    try:
        first = asyncio.create_task(pool.run(worker, rows(1), rows=1))
        await started(model)
        first.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await first
        assert not worker.thread_idle
        second = asyncio.create_task(pool.run(worker, rows(1, 1), rows=1, alone=True))
        await asyncio.sleep(0.05)
        assert model.batches == [1]  # waiting behind the first, not beside it
        model.release.set()
        out = await asyncio.wait_for(second, 10)
        want = direct_predict("digits", rows(1, 1))["probabilities"]
        np.testing.assert_allclose(out["probabilities"], want, rtol=1e-5, atol=1e-6)
        assert model.batches == [1, 1] and worker.thread_idle
    finally:
        model.release.set()
        pool.release(worker)
        await pool.close()
