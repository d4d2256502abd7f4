"""Instances left unusable by a failure are replaced; a model whose instances cannot be
restored goes UNAVAILABLE with its reason.

An interpreter that stays broken after a failed invoke cannot be provoked with a real
model (the real fault model in test_hardening recovers by itself), so this is the one
place with fault injection: a real ModelRunner subclass that breaks on command.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

import servekit.pool as pool_module
import servekit.repository as repository_module
from conftest import REPO, digits_rows, direct_predict
from servekit.config import ModelConfig
from servekit.errors import InferenceFailed, NotReady
from servekit.metrics import Metrics
from servekit.repository import ModelSource, ServedModel
from servekit.runtime import ModelRunner, Session
from servekit.tensors import Array


class Breakable(ModelRunner):
    """A real interpreter; once ``broken`` is set, every run fails (probes included)."""

    broken = threading.Event()
    builds_fail = threading.Event()
    builds = 0
    built_in: ClassVar[list[int]] = []  # the thread of each build
    ran_in: ClassVar[list[int]] = []  # the thread of each run

    def __init__(self, session: Session) -> None:
        Breakable.builds += 1
        Breakable.built_in.append(threading.get_ident())
        if Breakable.builds_fail.is_set():
            raise RuntimeError("cannot build an interpreter (injected)")
        super().__init__(session)

    def run(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        Breakable.ran_in.append(threading.get_ident())
        if self.broken.is_set():
            raise InferenceFailed("interpreter is corrupted (injected)")
        return super().run(inputs)


# Every way a batch runs: in the instances' threads, on the event loop itself, and in
# the one thread auto gives a model too slow to run inline (the inline threshold at 0).
@pytest.fixture(
    params=[
        ModelConfig(instances=2, max_batch_size=8, execution="thread"),
        ModelConfig(instances=1, max_batch_size=8, execution="inline"),
        ModelConfig(instances=1, max_batch_size=8),
    ],
    ids=["threads", "inline", "auto"],
)
def served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> ServedModel:
    Breakable.broken.clear()
    Breakable.builds_fail.clear()
    Breakable.builds = 0
    Breakable.built_in = []
    Breakable.ran_in = []
    monkeypatch.setattr(repository_module, "ModelRunner", Breakable)
    monkeypatch.setattr(pool_module, "INLINE_MAX_BATCH_S", 0.0)
    shutil.copytree(REPO / "digits", tmp_path / "digits")
    source = ModelSource("digits", 1, tmp_path / "digits" / "1" / "model.tflite", None)
    return ServedModel(source, request.param, Metrics())


async def test_broken_instance_is_replaced_and_serving_goes_on(served: ServedModel) -> None:
    await served.load()
    assert served.execution == ("inline" if served.config.execution == "inline" else "thread")
    x = {"pixels": digits_rows(2)}
    assert (await served.infer(x))["probabilities"].shape == (2, 10)
    instances = served.config.instances
    assert Breakable.builds == instances

    # The interpreters break: a request fails, the instance finds it can no longer run
    # a warm-up row and builds a fresh interpreter (which works again).
    Breakable.broken.set()
    original_init = Breakable.__init__

    def healing_init(self: Breakable, session: Session) -> None:
        Breakable.broken.clear()  # the fresh interpreter is healthy
        original_init(self, session)

    Breakable.__init__ = healing_init  # type: ignore[method-assign]
    runs_before = len(Breakable.ran_in)
    try:
        with pytest.raises(InferenceFailed, match="corrupted"):
            await served.infer(x)
    finally:
        Breakable.__init__ = original_init  # type: ignore[method-assign]
    assert Breakable.builds == instances + 1  # one replacement
    # The failed batch ran, and its instance was rebuilt, where batches run.
    loop_thread = threading.get_ident()
    inline = served.config.execution == "inline"
    assert (Breakable.ran_in[runs_before] == loop_thread) == inline
    assert (Breakable.built_in[-1] == loop_thread) == inline
    out = await served.infer(x)
    want = direct_predict("digits", x)["probabilities"]
    np.testing.assert_allclose(out["probabilities"], want, rtol=1e-5, atol=1e-6)
    assert served.ready
    await served.unload(5)


async def test_model_goes_unavailable_when_no_instance_can_be_restored(served: ServedModel) -> None:
    await served.load()
    x = {"pixels": digits_rows(1)}
    Breakable.broken.set()
    Breakable.builds_fail.set()
    for _ in range(served.config.instances):  # each fails once and cannot be rebuilt
        with pytest.raises((InferenceFailed, NotReady)):
            await served.infer(x)
    assert served.state == "UNAVAILABLE"
    assert "could not be replaced" in served.reason
    assert "cannot build an interpreter" in served.reason
    with pytest.raises(NotReady, match="UNAVAILABLE"):
        await served.infer(x)
    await served.unload(5)
