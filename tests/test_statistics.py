"""Triton's model statistics, read from servekit's metrics after real traffic."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from conftest import REPO, digits_rows
from servekit.config import ModelConfig
from servekit.errors import InputFailed
from servekit.metrics import Metrics, model_statistics
from servekit.repository import ModelSource, ServedModel


def served(name: str, **config: object) -> ServedModel:
    source = ModelSource(name, 1, REPO / name / "1" / "model.tflite", None)
    return ServedModel(source, ModelConfig.model_validate(config), Metrics())


@pytest.mark.parametrize("execution", ["thread", "inline"])
async def test_statistics_count_requests_batches_and_phases(execution: str) -> None:
    model = served("digits", execution=execution)
    await model.load()
    requests = [digits_rows(int(n), offset=i) for i, n in enumerate(np.arange(40) % 3 + 1)]
    await asyncio.gather(*(model.infer({"pixels": r}) for r in requests))
    (stats,) = model_statistics(model.metrics.registry, [("digits", "1")])
    infer = stats["inference_stats"]
    assert stats["name"] == "digits" and stats["version"] == "1"
    assert stats["inference_count"] == sum(len(r) for r in requests)
    executions = stats["execution_count"]
    assert 1 <= executions < len(requests)  # concurrent requests shared batches
    assert infer["success"]["count"] == len(requests) and infer["success"]["ns"] > 0
    assert infer["fail"] == {"count": 0, "ns": 0}
    assert infer["queue"]["count"] == len(requests)
    # Each phase counts every request (perf_analyzer requires the three counts equal).
    for phase in ("compute_input", "compute_infer", "compute_output"):
        assert infer[phase]["count"] == len(requests), phase
    assert infer["compute_infer"]["ns"] > 0
    # A request's compute is within its whole time in the server.
    assert infer["compute_infer"]["ns"] <= infer["success"]["ns"]
    assert stats["last_inference"] > 0
    await model.unload(5)


async def test_statistics_count_failures_with_their_time() -> None:
    model = served("lookup")
    await model.load()
    with pytest.raises(InputFailed):
        await model.infer({"index": np.array([[99]], np.int32)})
    await model.infer({"index": np.array([[1]], np.int32)})
    (stats,) = model_statistics(model.metrics.registry, [("lookup", "1")])
    infer = stats["inference_stats"]
    assert infer["fail"]["count"] == 1 and infer["fail"]["ns"] > 0
    assert infer["success"]["count"] == 1
    await model.unload(5)


def test_statistics_of_a_version_with_no_traffic_are_zero() -> None:
    (stats,) = model_statistics(Metrics().registry, [("nothing", "3")])
    assert stats["inference_count"] == 0 and stats["execution_count"] == 0
    assert stats["inference_stats"]["success"] == {"count": 0, "ns": 0}
