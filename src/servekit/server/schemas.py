"""Typed shapes of requests and responses, for the OpenAPI document.

Hot paths parse bodies with orjson and validate them against the model's TensorSpecs
(faster than pydantic on big nested lists, and the errors can name the input); these
models document the same shapes for /docs and for clients.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ErrorResponse(BaseModel):
    error: str = Field(description="What was wrong, naming the input and expected vs given.")


class PredictRequest(BaseModel):
    """TF Serving REST predict request: row format (instances) or columnar (inputs)."""

    signature_name: str | None = Field(None, description="Only 'serving_default' is served.")
    instances: list[Any] | None = Field(
        None,
        description="Row format: one entry per sample; a dict of input name → value for "
        "multi-input models, or bare values for a single-input model.",
    )
    inputs: Any | None = Field(
        None,
        description="Columnar format: input name → batched value (or a bare batched value "
        "for a single-input model).",
    )


class PredictResponse(BaseModel):
    predictions: list[Any] | None = Field(
        None, description="Row format: one entry per sample (a dict for multi-output models)."
    )
    outputs: Any | None = Field(
        None, description="Columnar format: output name → batched value (bare if one output)."
    )


class VersionStatus(BaseModel):
    version: str
    state: str = Field(description="START, LOADING, AVAILABLE, UNLOADING or END.")
    status: dict[str, str] = Field(description="{error_code, error_message}")


class ModelStatusResponse(BaseModel):
    model_version_status: list[VersionStatus]


class TensorInfo(BaseModel):
    name: str
    datatype: str = Field(description="Open Inference Protocol datatype, e.g. FP32.")
    dtype: str = Field(description="numpy dtype name, e.g. float32.")
    shape: list[int] = Field(description="-1 marks the batch (or another variable) dimension.")
    quantization: dict[str, float] | None = None


class ModelMetadataResponse(BaseModel):
    model_spec: dict[str, str]
    metadata: dict[str, Any] = Field(description="signature_def, batching, runtime.")


class ModelListEntry(BaseModel):
    name: str
    version: str
    state: str
    reason: str = ""


class LiveResponse(BaseModel):
    live: bool


class ReadyResponse(BaseModel):
    ready: bool
