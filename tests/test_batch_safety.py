"""Batching is proven safe per model at load, and one request's bad input fails only
that request.

The unsafe models (tests/models/unsafe, made by scripts/make_models.py) resize their
batch dimension but mix rows: row0 adds row 0 to every row, batchmean subtracts the
batch mean, fold transposes the batch into the features. Every served answer is
compared with ai-edge-litert invoked directly, one row per invoke.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

from conftest import MODELS, REPO, digits_rows
from servekit.config import ModelConfig, ServerSettings
from servekit.errors import InputFailed
from servekit.metrics import Metrics
from servekit.repository import ModelSource, ServedModel
from servekit.server.app import create_app

UNSAFE = MODELS / "unsafe"
UNSAFE_MODELS = ("row0", "batchmean", "fold")
# Thread execution with two instances, and one instance on the event loop.
CONFIGS = {
    "threads": {"instances": 2, "execution": "thread"},
    "inline": {"instances": 1, "execution": "inline"},
}


def served_model(path: Path, **config: object) -> ServedModel:
    name = path.parent.parent.name
    return ServedModel(
        ModelSource(name, 1, path, None), ModelConfig.model_validate(config), Metrics()
    )


def alone(path: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The reference: ai-edge-litert's signature runner, one row per invoke."""
    runner = Interpreter(model_path=str(path)).get_signature_runner("serving_default")
    rows = len(next(iter(inputs.values())))
    parts = [runner(**{k: v[i : i + 1] for k, v in inputs.items()}) for i in range(rows)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def stacked(path: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    runner = Interpreter(model_path=str(path)).get_signature_runner("serving_default")
    return {k: np.array(v) for k, v in runner(**inputs).items()}


def mixed_requests(count: int, width: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.random((int(rng.integers(1, 6)), width), dtype=np.float32) for _ in range(count)]


def executions(served: ServedModel) -> float:
    value = served.metrics.registry.get_sample_value(
        "servekit_executions_total", {"model": served.name, "version": "1"}
    )
    return value or 0.0


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
@pytest.mark.parametrize("name", UNSAFE_MODELS)
async def test_unsafe_model_is_detected_and_served_one_row_per_invoke(
    name: str, config: dict[str, object], caplog: pytest.LogCaptureFixture
) -> None:
    path = UNSAFE / name / "1" / "model.tflite"
    requests = mixed_requests(60, 8, seed=len(name))
    # The model really is unsafe: stacked, these rows get other answers than alone.
    together = np.concatenate(requests)
    assert not np.allclose(stacked(path, {"x": together})["y"], alone(path, {"x": together})["y"])

    served = served_model(path, **config)
    with caplog.at_level(logging.INFO, logger="servekit"):
        await served.load()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert f"model {name} v1 not batch-safe" in warnings[0]
    assert "output 'y' row" in warnings[0] and "off by" in warnings[0]
    assert served.batching is not None and served.batching.check == "unsafe"
    assert not served.batchable
    batching = served.metadata()["batching"]
    assert batching["batch_safety"]["check"] == "unsafe"
    assert batching["batch_safety"]["batched"] is False
    assert "not batch-safe" in served.reason and served.ready

    outs = await asyncio.gather(*(served.infer({"x": r}) for r in requests))
    for request, out in zip(requests, outs, strict=True):
        np.testing.assert_allclose(out["y"], alone(path, {"x": request})["y"], rtol=1e-5, atol=1e-6)
    assert executions(served) == len(requests)  # no request shared an execution
    gauge = served.metrics.registry.get_sample_value(
        "servekit_model_batching", {"model": name, "version": "1", "check": "unsafe"}
    )
    assert gauge == 1
    await served.unload(5)


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
async def test_safe_model_is_verified_and_still_batches(config: dict[str, object]) -> None:
    path = REPO / "digits" / "1" / "model.tflite"
    served = served_model(path, max_batch_size=32, **config)
    await served.load()
    assert served.batching is not None and served.batching.check == "verified"
    assert served.batchable and served.reason == ""
    requests = [digits_rows(int(n), offset=i) for i, n in enumerate(np.arange(60) % 5 + 1)]
    outs = await asyncio.gather(*(served.infer({"pixels": r}) for r in requests))
    for request, out in zip(requests, outs, strict=True):
        want = alone(path, {"pixels": request})["probabilities"]
        np.testing.assert_allclose(out["probabilities"], want, rtol=1e-4, atol=1e-6)
    assert executions(served) < len(requests)
    await served.unload(5)


async def test_batching_on_trusts_and_off_never_stacks(caplog: pytest.LogCaptureFixture) -> None:
    path = UNSAFE / "row0" / "1" / "model.tflite"
    trusted = served_model(path, batching="on")
    with caplog.at_level(logging.INFO, logger="servekit"):
        await trusted.load()
    assert trusted.batching is not None and trusted.batching.check == "trusted"
    assert trusted.batchable  # as the user asked, wrong answers included
    assert any("batch safety not verified" in r.getMessage() for r in caplog.records)
    await trusted.unload(5)

    digits = REPO / "digits" / "1" / "model.tflite"
    off = served_model(digits, batching="off")
    await off.load()
    assert off.batching is not None and off.batching.check == "off"
    assert not off.batchable and off.buckets == []
    requests = [digits_rows(3, offset=i) for i in range(20)]
    outs = await asyncio.gather(*(off.infer({"pixels": r}) for r in requests))
    for request, out in zip(requests, outs, strict=True):
        want = alone(digits, {"pixels": request})["probabilities"]
        np.testing.assert_allclose(out["probabilities"], want, rtol=1e-4, atol=1e-6)
    assert executions(off) == len(requests)
    await off.unload(5)


def test_batching_setting_is_checked() -> None:
    with pytest.raises(ValueError, match="batching"):
        ModelConfig.model_validate({"batching": "maybe"})


# -- one bad request fails only itself --------------------------------------------------------

TABLE = np.arange(40, dtype=np.float32).reshape(10, 4)


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
async def test_a_poison_request_fails_alone(config: dict[str, object]) -> None:
    """Every 8th request asks GATHER for an index outside the table: invoke() raises for
    the whole batch, and only that request may get an error."""
    served = served_model(REPO / "lookup" / "1" / "model.tflite", **config)
    await served.load()
    rng = np.random.default_rng(0)
    requests = [
        rng.integers(0, 10, (int(rng.integers(1, 4)), 1)).astype(np.int32) for _ in range(240)
    ]
    for i in range(0, len(requests), 8):
        requests[i][-1, 0] = 99
    results = await asyncio.gather(
        *(served.infer({"index": r}) for r in requests), return_exceptions=True
    )
    good = bad = 0
    for i, (request, result) in enumerate(zip(requests, results, strict=True)):
        if i % 8 == 0:
            assert isinstance(result, InputFailed), result
            assert str(result).startswith("model 'lookup' failed on this request's input")
            assert "gather index out of bounds (GATHER failed to invoke)" in str(result)
            assert ".cc" not in str(result)
            bad += 1
        else:
            assert not isinstance(result, BaseException), result
            np.testing.assert_array_equal(result["row"], TABLE[request[:, 0]])
            good += 1
    assert (good, bad) == (210, 30)
    # Batches formed (so the isolation was exercised), and the instances are intact.
    assert executions(served) > 0 and served.ready
    ok = await served.infer({"index": np.array([[3]], np.int32)})
    np.testing.assert_array_equal(ok["row"], TABLE[[3]])
    invalid = served.metrics.registry.get_sample_value(
        "servekit_requests_total",
        {"model": "lookup", "version": "1", "outcome": "failure", "reason": "invalid"},
    )
    assert invalid == 30
    await served.unload(5)


# -- what HTTP clients see ---------------------------------------------------------------------


ADMIN = {"Authorization": "Bearer t"}


@asynccontextmanager
async def app_client(repo: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(ServerSettings(model_path=repo, admin_token="t"))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sk") as c,
    ):
        yield c


async def test_http_shows_the_check_and_answers_a_poison_request_with_400(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(UNSAFE / "fold", repo / "fold")
    shutil.copytree(REPO / "lookup", repo / "lookup")
    shutil.copytree(REPO / "digits", repo / "digits")
    async with app_client(repo) as c:
        v2 = (await c.get("/v2/models/fold")).json()
        assert v2["parameters"]["batching"]["batch_safety"]["check"] == "unsafe"
        v1 = (await c.get("/v1/models/fold/metadata")).json()
        assert v1["servekit"]["batching"]["batch_safety"]["check"] == "unsafe"
        digits = (await c.get("/v2/models/digits")).json()
        assert digits["parameters"]["batching"]["batch_safety"]["check"] == "verified"
        index = {
            row["name"]: row for row in (await c.post("/v2/repository/index", headers=ADMIN)).json()
        }
        assert index["fold"]["state"] == "READY"
        assert "not batch-safe" in index["fold"]["reason"]
        assert index["digits"]["reason"] == ""
        metrics = (await c.get("/metrics")).text
        assert 'servekit_model_batching{check="unsafe",model="fold",version="1"} 1.0' in metrics

        rows = np.random.default_rng(3).random((4, 8), dtype=np.float32)
        r = await c.post("/v1/models/fold:predict", json={"instances": rows.tolist()})
        assert r.status_code == 200, r.text
        want = alone(UNSAFE / "fold" / "1" / "model.tflite", {"x": rows})["y"]
        np.testing.assert_allclose(np.array(r.json()["predictions"]), want, rtol=1e-5, atol=1e-6)

        bad = c.post("/v1/models/lookup:predict", json={"instances": [[99]]})
        goods = [c.post("/v1/models/lookup:predict", json={"instances": [[i]]}) for i in range(10)]
        first, *rest = await asyncio.gather(bad, *goods)
        assert first.status_code == 400
        assert first.json() == {
            "error": "model 'lookup' failed on this request's input "
            "(TFLite: gather index out of bounds (GATHER failed to invoke))"
        }
        for i, r in enumerate(rest):
            assert r.status_code == 200 and r.json()["predictions"] == [TABLE[i].tolist()]
