"""Working example requests for every loaded model, injected into the OpenAPI document.

So Swagger UI's "Try it out → Execute" succeeds without editing.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from servekit.repository import ModelRegistry, ServedModel
from servekit.tensors import TensorSpec


def _example_row(spec: TensorSpec) -> Any:
    shape = [d if d > 0 else 1 for d in spec.shape[1:]]
    if spec.dtype.kind == "b":
        return np.zeros(shape, dtype=bool).tolist()
    return np.zeros(shape, dtype=np.float64 if spec.dtype.kind == "f" else np.int64).tolist()


def v1_example(model: ServedModel) -> dict[str, Any]:
    if model.sample_request is not None:
        return model.sample_request
    if len(model.inputs) == 1:
        return {"instances": [_example_row(model.inputs[0])]}
    return {"instances": [{s.name: _example_row(s) for s in model.inputs}]}


def v2_example(model: ServedModel) -> dict[str, Any]:
    """An Open Inference Protocol v2 infer request of one all-zero row."""
    inputs = []
    for s in model.inputs:
        row = _example_row(s)
        shape = [1, *np.shape(row)]
        inputs.append(
            {
                "name": s.name,
                "shape": shape,
                "datatype": s.datatype,
                "data": np.reshape(row, -1).tolist(),
            }
        )
    return {"inputs": inputs}


def inject(schema: dict[str, Any], registry: ModelRegistry) -> dict[str, Any]:
    models = {m.name: m for m in registry.all() if m.ready}  # newest version wins
    if not models:
        return schema
    first = next(iter(models))
    for path, ops in schema.get("paths", {}).items():
        for op in ops.values():
            for param in op.get("parameters", []):
                if param.get("name") == "model_name":
                    param["example"] = first
                elif param.get("name") == "version":
                    param["example"] = str(models[first].version)
            if path.startswith("/v1/") and path.endswith(":predict"):
                content = op["requestBody"]["content"]["application/json"]
                content["examples"] = {
                    name: {"summary": f"{name}: {len(m.inputs)} input(s)", "value": v1_example(m)}
                    for name, m in models.items()
                }
            elif path.startswith("/v2/models/") and path.endswith("/infer"):
                content = op["requestBody"]["content"]["application/json"]
                content["examples"] = {
                    name: {"summary": f"{name}: {len(m.inputs)} input(s)", "value": v2_example(m)}
                    for name, m in models.items()
                }
    return schema
