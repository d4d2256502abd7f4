"""Example requests for every loaded model, in the OpenAPI document and on their own.

A model whose example request is small gets it whole in the document, so Swagger UI's
"Try it out → Execute" succeeds without editing. An image model's is not: a 224x224x3
float input is 150,528 numbers, about 600 kB of JSON per example, and a document that
carries several of them takes Swagger UI many seconds to render. Such a model gets an
abridged example instead (the true shape, a few values; sending it answers 400 naming
the count it needs), and its whole example is served on its own, fetched on demand
(``full_example``, at ``/docs/examples/{model_name}/{api}``).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import orjson

from servekit.repository import ModelRegistry, ServedModel
from servekit.tensors import TensorSpec

Api = Literal["v1", "v2"]
APIS: tuple[Api, ...] = ("v1", "v2")

# An example larger than this (as JSON) is abridged in the document (each example is
# there twice, with and without a version in the path).
INLINE_MAX_BYTES = 8 * 1024
# Values of an abridged input (the innermost dimension's first few).
ABRIDGED_VALUES = 3
EXAMPLES_URL = "/docs/examples"


def example_url(name: str, api: Api) -> str:
    return f"{EXAMPLES_URL}/{name}/{api}"


def _shape(spec: TensorSpec) -> list[int]:
    """One row's shape, variable dimensions taken as 1."""
    return [d if d > 0 else 1 for d in spec.shape[1:]]


def _zeros(shape: list[int], spec: TensorSpec) -> Any:
    if spec.dtype.kind == "b":
        return np.zeros(shape, dtype=bool).tolist()
    return np.zeros(shape, dtype=np.float64 if spec.dtype.kind == "f" else np.int64).tolist()


def _row(spec: TensorSpec, abridged: bool) -> Any:
    shape = _shape(spec)
    if abridged and shape:
        shape = [1] * (len(shape) - 1) + [min(shape[-1], ABRIDGED_VALUES)]
    return _zeros(shape, spec)


def _values(model: ServedModel) -> int:
    """Numbers in one row of all the model's inputs."""
    return sum(math.prod(_shape(s)) for s in model.inputs)


def v1_example(model: ServedModel, abridged: bool = False) -> dict[str, Any]:
    """A TF Serving predict request of one all-zero row (or the model's sample request)."""
    if model.sample_request is not None and not abridged:
        return model.sample_request
    if len(model.inputs) == 1:
        return {"instances": [_row(model.inputs[0], abridged)]}
    return {"instances": [{s.name: _row(s, abridged) for s in model.inputs}]}


def v2_example(model: ServedModel, abridged: bool = False) -> dict[str, Any]:
    """An Open Inference Protocol v2 infer request of one all-zero row; abridged, the
    shapes are the true ones and the data only the first few values."""
    inputs = []
    for s in model.inputs:
        shape = [1, *_shape(s)]
        data = np.reshape(_row(s, abridged), -1).tolist()
        inputs.append({"name": s.name, "shape": shape, "datatype": s.datatype, "data": data})
    return {"inputs": inputs}


def full_example(model: ServedModel, api: Api) -> dict[str, Any]:
    return v1_example(model) if api == "v1" else v2_example(model)


def _small(model: ServedModel, api: Api) -> dict[str, Any] | None:
    """The whole example if it fits in the document, else None; judged before building
    it from the number of values (an image's would be built only to be dropped)."""
    if api == "v1" and model.sample_request is not None:
        example = model.sample_request
    elif _values(model) * 4 > INLINE_MAX_BYTES:  # at least "0.0," per value
        return None
    else:
        example = full_example(model, api)
    return example if len(orjson.dumps(example)) <= INLINE_MAX_BYTES else None


def document_example(model: ServedModel, api: Api) -> dict[str, Any]:
    """The OpenAPI Example Object of ``model`` for ``api``."""
    inputs = ", ".join(f"{s.name} {s.datatype}{list(s.shape)}" for s in model.inputs)
    value = _small(model, api)
    if value is not None:
        return {"summary": f"{model.name}: {len(model.inputs)} input(s)", "value": value}
    url = example_url(model.name, api)
    return {
        "summary": f"{model.name}: abridged, {_values(model):,} values per row (see description)",
        "description": (
            f"Inputs: {inputs}. One row is {_values(model):,} values, too many to show "
            "here: this example has the true shape but only the first few values, and "
            "sending it answers 400 naming the count needed. The whole request (zeros) is "
            f"at `GET {url}`, e.g. `curl -s {url} | curl -H 'Content-Type: "
            "application/json' -d @- <server>/...`; binary V2 requests suit images best."
        ),
        "value": v1_example(model, abridged=True)
        if api == "v1"
        else v2_example(model, abridged=True),
    }


def _ready(registry: ModelRegistry) -> dict[str, ServedModel]:
    return {m.name: m for m in registry.all() if m.ready}  # newest version wins


def find_model(registry: ModelRegistry, name: str) -> ServedModel | None:
    return _ready(registry).get(name)


def inject(schema: dict[str, Any], registry: ModelRegistry) -> dict[str, Any]:
    models = _ready(registry)
    if not models:
        return schema
    first = next(iter(models))
    by_api = {api: {name: document_example(m, api) for name, m in models.items()} for api in APIS}
    for path, ops in schema.get("paths", {}).items():
        for op in ops.values():
            for param in op.get("parameters", []):
                if param.get("name") == "model_name":
                    param["example"] = first
                elif param.get("name") == "version":
                    param["example"] = str(models[first].version)
            api: Api | None = None
            if path.startswith("/v1/") and path.endswith(":predict"):
                api = "v1"
            elif path.startswith("/v2/models/") and path.endswith("/infer"):
                api = "v2"
            if api is not None:
                op["requestBody"]["content"]["application/json"]["examples"] = by_api[api]
    return schema
