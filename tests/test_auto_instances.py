"""``instances`` and ``threads_per_instance`` left at ``auto``: sized at load from the
usable CPUs and the first instance's warm-up timings; buckets that do not pay left out.

Two real models: ``digits`` (TFLite, dense: a batch of 32 computes in microseconds,
batching pays many-fold) and a row-wise NumPy runtime defined here through the runtime
seam (each row computed on its own, about a millisecond a row: a batch of n costs n rows,
as a conv net's does on CPU). The CPU budgets passed to ``choose_sizing`` are values,
as ``servekit.cpus`` reads them.
"""

from __future__ import annotations

import asyncio
import io
import logging
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

import servekit.cli as cli_module
import servekit.pool as pool_module
from conftest import REPO, digits_rows, direct_predict, model_path
from servekit.config import ModelConfig
from servekit.cpus import WORKERS_ENV, CpuBudget, usable_cpus, worker_processes
from servekit.errors import BadInput
from servekit.metrics import Metrics
from servekit.pool import Sizing, choose_sizing
from servekit.repository import ModelSource, ServedModel
from servekit.runtime import (
    BACKENDS,
    Backend,
    ModelRunner,
    ModelSignature,
    TFLiteModel,
    read_model_bytes,
)
from servekit.runtime.base import threads_of
from servekit.runtime.runner import SharedBuckets, _not_worth
from servekit.tensors import Array, TensorSpec
from servekit.triton_config import model_config

ALL_BUCKETS = [1, 2, 4, 8, 16, 32]
# A container limited to 2 CPUs on a 16-core host; the same host without a limit.
CONTAINER = CpuBudget(cpus=2, affinity=16, quota=2.0)
HOST = CpuBudget(cpus=16, affinity=16, quota=None)
REPEATS = 40  # matrix-vector products per row


class RowwiseSession:
    """y = tanh(w @ ...(tanh(w @ x))) for each row on its own: no batching gain at all.
    ``built_with``: the thread count of every session the backend built, in order."""

    built_with: ClassVar[list[int]] = []

    def __init__(self, content: bytes, threads: int = 1) -> None:
        self.w = np.load(io.BytesIO(content))
        RowwiseSession.built_with.append(threads)
        f32 = np.dtype(np.float32)
        n = self.w.shape[0]
        self.signature = ModelSignature(
            inputs=(TensorSpec("x", f32, (-1, n)),),
            outputs=(TensorSpec("y", f32, (-1, n)),),
            signature_key=None,
            native_batch=None,
        )

    def invoke(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        x = inputs["x"]
        out = np.empty_like(x)
        for i, row in enumerate(x):
            for _ in range(REPEATS):
                row = np.tanh(self.w @ row)
            out[i] = row
        return {"y": out}


def read(path: Path) -> bytes:
    content = path.read_bytes()
    if not content.startswith(b"\x93NUMPY"):
        raise BadInput(f"{path} is not an .npy file")
    return content


ROWWISE = Backend(
    name="rowwise",
    platform="numpy_rowwise",
    model_file="model.npy",
    read=read,
    load=lambda content, config: RowwiseSession(content, threads_of(config)),
    runtime_name=lambda: f"numpy {np.__version__}",
)


@pytest.fixture()
def rowwise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A row-wise model's file, its runtime in the backend table."""
    monkeypatch.setitem(BACKENDS, ROWWISE.name, ROWWISE)
    path = tmp_path / "rowwise" / "1" / "model.npy"
    path.parent.mkdir(parents=True)
    w = np.random.default_rng(0).standard_normal((256, 256)).astype(np.float32) / 16
    np.save(path, w)
    return path


def pair(s: Sizing) -> tuple[int, int]:
    return s.instances, s.threads


def rowwise_runner(path: Path) -> ModelRunner:
    m = ModelRunner(RowwiseSession(path.read_bytes()))
    m.prepare(ALL_BUCKETS, trim=True)
    return m


def test_buckets_that_do_not_pay_are_not_allocated(rowwise: Path) -> None:
    slow = rowwise_runner(rowwise)
    # Batch 2 costs what two batches of 1 do: nothing larger is allocated. (Timing
    # noise on a loaded machine may let one more doubling through; never 32.)
    assert slow.buckets[:2] == [1, 2] and slow.buckets[-1] <= 8
    assert "not allocated" in slow.trimmed and slow.batch_gain < pool_module.BATCHING_PAYS
    digits = TFLiteModel(read_model_bytes(model_path("digits")))
    digits.prepare(ALL_BUCKETS, trim=True)
    assert digits.buckets == ALL_BUCKETS and digits.trimmed == ""
    assert digits.batch_gain >= pool_module.BATCHING_PAYS


def test_sizing_policy_fills_the_cpus_by_what_the_model_is(
    rowwise: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow = rowwise_runner(rowwise)
    # Batching does not pay: one single-threaded instance per CPU of the quota.
    s = choose_sizing(slow, "auto", "auto", "auto", 32, CONTAINER)
    assert (s.instances, s.threads) == (2, 1)
    assert "batching gains little" in s.reason and "cgroup quota 2" in s.reason
    assert (choose_sizing(slow, "auto", "auto", "auto", 32, HOST).instances) == 16
    # Two server processes share the quota: one instance each.
    s = choose_sizing(slow, "auto", "auto", "auto", 32, CONTAINER, workers=2)
    assert (s.instances, s.threads) == (1, 1) and "shared by 2 worker processes" in s.reason
    # What the config fixes stays; the other one fills the rest.
    assert pair(choose_sizing(slow, 1, "auto", "auto", 32, CONTAINER)) == (1, 2)
    assert pair(choose_sizing(slow, "auto", 2, "auto", 32, HOST)) == (8, 2)

    digits = TFLiteModel(read_model_bytes(model_path("digits")))
    digits.prepare(ALL_BUCKETS)
    # Tiny: inline on the event loop, whatever the CPUs.
    s = choose_sizing(digits, "auto", "auto", "auto", 32, HOST)
    assert (s.instances, s.threads) == (1, 1) and "inline" in s.reason
    # Batching pays (inline ruled out): one instance, every CPU but the loop's.
    monkeypatch.setattr(pool_module, "INLINE_MAX_BATCH_S", 0.0)
    s = choose_sizing(digits, "auto", "auto", "auto", 32, HOST)
    assert (s.instances, s.threads) == (1, 15) and "batching pays" in s.reason
    assert pair(choose_sizing(digits, "auto", "auto", "auto", 32, CONTAINER)) == (1, 1)


def test_workers_share_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(WORKERS_ENV, raising=False)
    assert worker_processes() == 1
    monkeypatch.setenv(WORKERS_ENV, "2")
    assert worker_processes() == 2
    monkeypatch.setenv(WORKERS_ENV, "many")
    assert worker_processes() == 1


async def test_a_tiny_model_by_default_stays_inline_and_says_why() -> None:
    served = ServedModel(
        ModelSource("digits", 1, model_path("digits"), None), ModelConfig(), Metrics()
    )
    await served.load()
    try:
        batching = served.metadata()["batching"]
        assert served.execution == "inline"
        assert (batching["instances"], batching["threads_per_instance"]) == (1, 1)
        assert "inline" in batching["sizing"]
        assert batching["buckets"] == ALL_BUCKETS
        x = digits_rows(3)
        out = await served.infer({"pixels": x})
        want = direct_predict("digits", {"pixels": x})["probabilities"]
        np.testing.assert_allclose(out["probabilities"], want, rtol=1e-5, atol=1e-6)
    finally:
        await served.unload(5)


async def test_a_model_where_batching_does_not_pay_gets_an_instance_per_cpu(
    rowwise: Path,
) -> None:
    served = ServedModel(ModelSource("rowwise", 1, rowwise, None), ModelConfig(), Metrics())
    await served.load()
    try:
        meta = served.metadata()["batching"]
        cpus = usable_cpus()
        assert (meta["instances"], meta["threads_per_instance"]) == (cpus, 1)
        assert served.execution == "thread"
        assert "batching gains little" in meta["sizing"] and "not allocated" in meta["sizing"]
        # Fewer buckets; the batch-safety check covered the ones kept; the batcher never
        # forms a batch larger than the largest kept bucket.
        assert meta["buckets"][-1] <= 8
        assert meta["batch_safety"]["check"] == "verified"
        assert (
            f"row counts {meta['buckets'][-1]}" in meta["batch_safety"]["reason"]
            or len(meta["buckets"]) > 2
        )
        assert served._batcher is not None
        assert served._batcher.max_batch_size == meta["buckets"][-1]
        # Triton's instance_group gets the number chosen.
        assert model_config(served)["instance_group"][0]["count"] == cpus
        # Requests of every size still answer, each as it would alone.
        rows = np.linspace(-1, 1, 256 * 5, dtype=np.float32).reshape(5, 256)
        alone = [await served.infer({served.inputs[0].name: rows[i : i + 1]}) for i in range(5)]
        together = await asyncio.gather(
            served.infer({served.inputs[0].name: rows[:3]}),
            served.infer({served.inputs[0].name: rows[3:]}),
        )
        for key in alone[0]:
            want = np.concatenate([a[key] for a in alone])
            got = np.concatenate([t[key] for t in together])
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    finally:
        await served.unload(5)


async def test_listed_buckets_and_numbers_in_the_config_are_kept(rowwise: Path) -> None:
    config = ModelConfig(
        batch_buckets=[1, 2, 4, 8], max_batch_size=8, instances=1, threads_per_instance=1
    )
    served = ServedModel(ModelSource("rowwise", 1, rowwise, None), config, Metrics())
    await served.load()
    try:
        meta = served.metadata()["batching"]
        assert meta["buckets"] == [1, 2, 4, 8]
        assert (meta["instances"], meta["threads_per_instance"]) == (1, 1)
        assert meta["sizing"] == "as configured"
    finally:
        await served.unload(5)


def test_workers_auto_is_one_per_usable_cpu() -> None:
    assert cli_module._worker_count("auto") == usable_cpus()
    assert cli_module._worker_count("3") == 3


def test_workers_must_be_a_number_or_auto() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "servekit", "serve", str(REPO), "--workers", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--workers must be a positive number or 'auto', got '0'" in done.stderr


async def test_the_load_log_says_what_was_chosen_and_why(
    rowwise: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="servekit.repository")
    served = ServedModel(ModelSource("rowwise", 1, rowwise, None), ModelConfig(), Metrics())
    await served.load()
    try:
        (ready,) = [r.getMessage() for r in caplog.records if " ready: " in r.getMessage()]
        assert f"{usable_cpus()} instance(s) x 1 thread(s): batching gains little" in ready
        assert "usable CPU(s): affinity" in ready and "not allocated" in ready
    finally:
        await served.unload(5)


def test_a_versions_instances_warm_up_the_buckets_the_first_chose(rowwise: Path) -> None:
    shared = SharedBuckets(ALL_BUCKETS, trim=True)
    first = ModelRunner(RowwiseSession(rowwise.read_bytes()))
    assert shared.prepare(first, None)
    others = [ModelRunner(RowwiseSession(rowwise.read_bytes())) for _ in range(2)]
    for m in others:
        assert shared.prepare(m, None)
        # The same buckets, not re-trimmed by its own (noisy) timings.
        assert m.buckets == first.buckets and m.trimmed == first.trimmed == shared.trimmed
    assert first.buckets[-1] < ALL_BUCKETS[-1]


async def test_threads_chosen_after_the_first_instance_rebuild_it(rowwise: Path) -> None:
    # instances: 1 fixed, threads auto: the first instance (one thread) is timed, then
    # built again with every usable CPU as its threads.
    RowwiseSession.built_with.clear()
    reference = RowwiseSession(rowwise.read_bytes())  # noqa: ASYNC240 (a small file)
    RowwiseSession.built_with.clear()
    config = ModelConfig(instances=1)
    served = ServedModel(ModelSource("rowwise", 1, rowwise, None), config, Metrics())
    await served.load()
    try:
        cpus = usable_cpus()
        meta = served.metadata()["batching"]
        assert (meta["instances"], meta["threads_per_instance"]) == (1, cpus)
        assert RowwiseSession.built_with == ([1, cpus] if cpus > 1 else [1])
        x = np.linspace(-1, 1, 256, dtype=np.float32).reshape(1, 256)
        out = await served.infer({"x": x})
        want = reference.invoke({"x": x})["y"]
        np.testing.assert_allclose(out["y"], want, rtol=1e-6)
    finally:
        await served.unload(5)


def test_once_batching_pays_a_dip_in_rows_per_second_keeps_every_bucket() -> None:
    # The wide model's warm-up on a quiet machine (ms an invoke): 4.1x the rows/s of
    # batch 1 at batch 4, 0.88x of that at batch 8, 8.6x at 64. Trimming at 8 cost a
    # fifth of its requests/s at 64 connections.
    wide = {1: 3.3, 2: 3.4, 4: 3.2, 8: 7.3}
    assert _not_worth(wide, 8) == ""
    # A conv net: batch 2 costs two batches of 1, nothing paid so far: stop there.
    conv = {1: 7.0, 2: 14.2}
    assert "batches above 2 not allocated" in _not_worth(conv, 2)
