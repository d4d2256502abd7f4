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


# -- Open Inference Protocol v2 ----------------------------------------------------------


class V2ServerMetadataResponse(BaseModel):
    name: str = Field(description="Always 'servekit'.")
    version: str
    extensions: list[str] = Field(
        description="Protocol extensions served: binary_tensor_data, schedule_policy."
    )


class V2TensorMetadata(BaseModel):
    name: str
    datatype: str = Field(description="BOOL, UINT8..UINT64, INT8..INT64, FP16/32/64 or BYTES.")
    shape: list[int] = Field(description="-1 marks a variable dimension (the batch first).")


class V2ModelMetadataResponse(BaseModel):
    name: str
    versions: list[str] = Field(description="The versions of this model that are ready.")
    platform: str = Field(description="'tensorflow_lite'.")
    inputs: list[V2TensorMetadata]
    outputs: list[V2TensorMetadata]
    parameters: dict[str, Any] = Field(
        default_factory=dict,
        description="servekit's own: 'batching' (buckets, instances, and batch_safety: "
        "how it was decided at load whether requests' rows may share an invoke).",
    )


class V2ModelReadyResponse(BaseModel):
    name: str
    ready: bool


class V2InferInput(BaseModel):
    name: str
    shape: list[int] = Field(description="Non-negative sizes; their product is the count.")
    datatype: str = Field(description="Must equal the model input's datatype.")
    parameters: dict[str, Any] | None = Field(
        None,
        description="binary_data_size: the input's bytes follow the JSON header "
        "(binary tensor data extension); then 'data' is left out.",
    )
    data: list[Any] | None = Field(
        None, description="Row-major values, flat or nested; strings for BYTES."
    )


class V2RequestedOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = Field(
        None, description="binary_data: true returns this output as binary data."
    )


class V2InferRequest(BaseModel):
    """An Open Inference Protocol v2 infer request (the JSON part)."""

    id: str | None = Field(None, description="Echoed in the response.")
    parameters: dict[str, Any] | None = Field(
        None,
        description="timeout (microseconds, can only shorten the model's), priority "
        "(0 default, 1 highest, 2.. lower), binary_data_output (all outputs binary).",
    )
    inputs: list[V2InferInput]
    outputs: list[V2RequestedOutput] | None = Field(
        None, description="Only these outputs, in this order; default: every output."
    )


class V2InferOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = Field(
        None, description="binary_data_size when the output's bytes follow the JSON header."
    )
    data: list[Any] | None = Field(None, description="Flat row-major values.")


class V2InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[V2InferOutput]
