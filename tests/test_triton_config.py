"""Served models as Triton's model configuration."""

from __future__ import annotations

from conftest import MODELS
from servekit.config import ModelConfig
from servekit.metrics import Metrics
from servekit.repository import ModelSource, ServedModel
from servekit.triton_config import model_config


async def load(path: str, **config: object) -> ServedModel:
    file = MODELS / path / "1" / "model.tflite"
    model = ServedModel(
        ModelSource(file.parent.parent.name, 1, file, None),
        ModelConfig.model_validate(config),
        Metrics(),
    )
    await model.load()
    return model


async def test_batched_model() -> None:
    model = await load("repo/multi", max_batch_size=16, instances=2, max_queue_delay_ms=0.5)
    config = model_config(model)
    assert config["name"] == "multi"
    assert config["platform"] == "tensorflow_lite" and config["backend"] == "tflite"
    assert config["max_batch_size"] == 16
    assert config["input"] == [
        {"name": "bias", "data_type": "TYPE_INT32", "dims": [10]},
        {"name": "features", "data_type": "TYPE_FP32", "dims": [64]},
    ]
    assert config["output"] == [
        {"name": "label", "data_type": "TYPE_INT64", "dims": []},
        {"name": "logits", "data_type": "TYPE_FP32", "dims": [10]},
    ]
    assert config["instance_group"][0]["count"] == 2
    assert config["instance_group"][0]["kind"] == "KIND_CPU"
    batching = config["dynamic_batching"]
    assert batching["preferred_batch_size"] == [1, 2, 4, 8, 16]
    assert batching["max_queue_delay_microseconds"] == 500
    assert batching["default_queue_policy"]["max_queue_size"] == 1024
    assert config["version_policy"] == {"latest": {"num_versions": 1}}
    await model.unload(5)


async def test_unbatched_models_have_no_dynamic_batching() -> None:
    for path in ("unsafe/row0", "repo/fixed"):
        model = await load(path, version_policy="all")
        config = model_config(model)
        assert "dynamic_batching" not in config, path
        assert config["max_batch_size"] == 32
        assert config["version_policy"] == {"all": {}}
        await model.unload(5)
