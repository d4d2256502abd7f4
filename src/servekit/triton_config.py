"""A served model as Triton's model configuration (its JSON form), which Triton's
clients read before anything else: ``tritonclient``'s ``get_model_config`` and
``perf_analyzer`` (which stops without it). Shared by the HTTP and gRPC adapters.

Every servekit model takes any number of rows up to ``max_batch_size`` (batched ones
stack requests, the others run row by row), so ``max_batch_size`` is always reported
and ``dims`` leave out the batch dimension, as Triton does for batching models;
``dynamic_batching`` is present only when requests' rows really share invokes.
"""

from __future__ import annotations

from typing import Any

from servekit.repository import ServedModel
from servekit.tensors import TensorSpec

# Triton's backend names for the platforms servekit reports.
TRITON_BACKENDS = {"tensorflow_lite": "tflite", "onnxruntime_onnx": "onnxruntime"}


def data_type(spec: TensorSpec) -> str:
    """Triton's config data type: TYPE_FP32, ..., TYPE_STRING for BYTES."""
    datatype = spec.datatype
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


def _tensor(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "data_type": data_type(spec), "dims": list(spec.shape[1:])}


def _version_policy(model: ServedModel) -> dict[str, Any]:
    config = model.config
    if config.version_policy == "all":
        return {"all": {}}
    if config.version_policy == "specific":
        return {"specific": {"versions": list(config.specific_versions)}}
    return {"latest": {"num_versions": config.latest_versions}}


def model_config(model: ServedModel) -> dict[str, Any]:
    config = model.config
    platform = model.backend.platform
    out: dict[str, Any] = {
        "name": model.name,
        "platform": platform,
        "backend": TRITON_BACKENDS.get(platform, model.backend.name),
        "version_policy": _version_policy(model),
        "max_batch_size": config.max_batch_size,
        "input": [_tensor(s) for s in model.inputs],
        "output": [_tensor(s) for s in model.outputs],
        "instance_group": [
            {"name": model.name, "kind": "KIND_CPU", "count": config.instances, "gpus": []}
        ],
        "parameters": {},
    }
    if model.batching is not None and model.batching.batched:
        out["dynamic_batching"] = {
            "preferred_batch_size": list(model.buckets),
            "max_queue_delay_microseconds": round(config.max_queue_delay_ms * 1000),
            "preserve_ordering": False,
            "default_queue_policy": {
                "timeout_action": "REJECT",
                "default_timeout_microseconds": round(config.timeout_ms * 1000),
                "allow_timeout_override": True,
                "max_queue_size": config.max_queue_size,
            },
        }
    return out
