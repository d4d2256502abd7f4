"""Server settings and per-model configuration.

Precedence of server settings, highest first: CLI flags, ``SERVEKIT_*`` environment
variables, the YAML file given with ``--config``, then the defaults below.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from servekit.errors import BadInput

DEFAULT_BUCKETS = (1, 2, 4, 8, 16, 32)

# Whether requests' rows may share an invoke (see ``servekit.runtime.batchsafety``).
BatchingMode = Literal["auto", "on", "off"]

# Where a model's batches run (see ``ModelConfig.execution`` and ``servekit.pool``).
Execution = Literal["auto", "thread", "inline"]

# ONNX Runtime's graph optimization levels (see ``ModelConfig.onnx_graph_optimization``).
GraphOptimization = Literal["disable", "basic", "extended", "all"]


class ModelConfig(BaseModel):
    """How one model is served. Read from ``<repo>/<model>/config.yaml``."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(32, ge=1, le=4096, description="Rows per execution, at most.")
    max_request_rows: int = Field(
        4096,
        ge=1,
        description="Rows per request, at most (400 past it). A request over max_batch_size "
        "is split into batches of max_batch_size rows, queued together, its answer joined "
        "in order.",
    )
    max_queue_delay_ms: float = Field(
        0.0, ge=0, description="Wait this long for a fuller batch; 0 runs at once when idle."
    )
    backend: str | None = Field(
        None,
        description="The runtime: 'tflite' or 'onnx' (its file in each version folder: "
        "model.tflite, model.onnx); unset: the model file found picks it.",
    )
    batching: BatchingMode = Field(
        "auto",
        description=(
            "Whether different requests' rows may share an invoke: 'auto' verifies at "
            "load that the model answers each row the same alone and stacked (distinct "
            "rows, every bucket, padded and split) and serves it one row per invoke if "
            "not; 'on' trusts the model without the check; 'off' never stacks rows."
        ),
    )
    batch_buckets: list[int] | None = Field(
        None, description="Batch sizes allocated at warm-up; batches are padded up to one."
    )
    instances: Annotated[int, Field(ge=1, le=64)] | Literal["auto"] = Field(
        "auto",
        description="Runtime instances, each in its own thread; 'auto': sized at load from "
        "the usable CPUs and the model's warm-up timings (docs/performance.md).",
    )
    threads_per_instance: Annotated[int, Field(ge=1, le=64)] | Literal["auto"] = Field(
        "auto",
        description="Runtime threads of each instance (TFLite num_threads, ONNX Runtime "
        "intra-op threads); 'auto': sized with instances.",
    )
    onnx_graph_optimization: GraphOptimization = Field(
        "all",
        description="ONNX Runtime's graph optimizations at load (backend onnx): 'basic' "
        "folds constants and removes redundant nodes, 'extended' also fuses operators, "
        "'all' also changes data layouts for the CPU.",
    )
    execution: Execution = Field(
        "auto",
        description=(
            "Where invokes run: 'thread' (each instance in its own thread; invoke "
            "releases the GIL, so instances use several cores), 'inline' (on the event "
            "loop: one instance, no thread hand-off, for models that compute in less time "
            "than a hand-off costs; the loop does nothing else while a batch computes), "
            "or 'auto' (inline when there is one instance, no input has a variable inner "
            "dimension and the largest batch computed in under 0.2 ms at warm-up; else "
            "thread)."
        ),
    )
    max_queue_size: int = Field(
        1024, ge=1, description="Queued requests at most; past it requests get 503."
    )
    timeout_ms: float = Field(
        30_000, gt=0, description="Deadline of a request, counted from its arrival."
    )
    allow_nonfinite: bool = Field(
        False, description="Accept NaN and ±Inf in float inputs (refused with 400 by default)."
    )
    version_policy: Literal["latest", "all", "specific"] = "latest"
    latest_versions: int = Field(1, ge=1)
    specific_versions: list[int] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.batch_buckets is not None:
            b = self.batch_buckets
            if not b or any(x < 1 for x in b) or sorted(set(b)) != b:
                raise ValueError(f"batch_buckets must be increasing positive integers, got {b}")
            if b[-1] > self.max_batch_size:
                raise ValueError(
                    f"largest batch bucket {b[-1]} exceeds max_batch_size {self.max_batch_size}"
                )
        if self.max_request_rows < self.max_batch_size:
            raise ValueError(
                f"max_request_rows ({self.max_request_rows}) must be at least max_batch_size "
                f"({self.max_batch_size})"
            )
        if self.max_queue_delay_ms >= self.timeout_ms:
            raise ValueError(
                f"max_queue_delay_ms ({self.max_queue_delay_ms}) must be below timeout_ms "
                f"({self.timeout_ms})"
            )
        if self.execution == "inline" and self.instances != "auto" and self.instances > 1:
            raise ValueError(
                f"execution 'inline' runs on the event loop, one instance at a time: "
                f"instances must be 1 (got {self.instances})"
            )
        if self.version_policy == "specific" and not self.specific_versions:
            raise ValueError("version_policy 'specific' needs specific_versions")
        return self

    def buckets(self) -> list[int]:
        """Batch sizes to allocate: the configured list, or powers of two up to the max."""
        if self.batch_buckets is not None:
            chosen = list(self.batch_buckets)
        else:
            chosen = [b for b in DEFAULT_BUCKETS if b < self.max_batch_size]
        if not chosen or chosen[-1] != self.max_batch_size:
            chosen.append(self.max_batch_size)
        return chosen

    @classmethod
    def from_yaml(cls, path: Path, base: dict[str, Any] | None = None) -> ModelConfig:
        """Read ``path`` over ``base`` (values the file does not set)."""
        data = dict(base or {})
        data.update(load_yaml(path) if path.exists() else {})
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise BadInput(f"invalid model config {path}: {_one_line(e)}") from None


class ServerSettings(BaseSettings):
    """Settings of one ``servekit serve`` process."""

    model_config = SettingsConfigDict(env_prefix="SERVEKIT_", extra="forbid")

    model_path: Path | None = Field(
        None, description="A .tflite file or a model repository; none serves the demo."
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    grpc_port: int = Field(
        8001, ge=0, le=65535, description="KServe v2 gRPC (as Triton's); 0 disables it."
    )
    tfs_grpc_port: int = Field(
        8500, ge=0, le=65535, description="TF Serving's gRPC API (as TF Serving's); 0 disables it."
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="413 above this.")
    max_json_bytes: int = Field(
        16 * 1024 * 1024,
        ge=1024,
        description="413 above this for a JSON request body (V2: its JSON part): what a "
        "decoder thread parses in about 100 ms at worst; send larger tensors as binary.",
    )
    default_model_config: ModelConfig = Field(default_factory=ModelConfig)
    switch_interval_s: float = Field(
        0.001, gt=0, description="sys.setswitchinterval: how soon workers get the GIL back."
    )
    drain_timeout_s: float = Field(30.0, ge=0, description="Time to finish work at shutdown.")
    max_header_bytes: int = Field(
        64 * 1024, ge=1024, description="Request header section in bytes at most; 431 above."
    )
    max_header_count: int = Field(
        100, ge=1, description="Request header fields at most; 431 above."
    )
    max_url_bytes: int = Field(
        8 * 1024, ge=256, description="Request target (path and query) in bytes at most; 414 above."
    )
    timeout_keep_alive_s: float = Field(
        75.0,
        gt=0,
        description="Idle keep-alive connections close after this; keep it above the "
        "idle timeout of any load balancer in front (60 s on most).",
    )
    header_timeout_s: float = Field(
        30.0,
        gt=0,
        description="A request head (request line and headers) not complete this long "
        "after its first byte gets 408 and the connection closes.",
    )
    access_log: bool = Field(False, description="Log every HTTP request (uvicorn access log).")
    api_keys: list[SecretStr] = Field(
        default_factory=list,
        description="Keys accepted for inference and metadata (Authorization: Bearer <key> "
        "or X-API-Key); empty: no key needed.",
    )
    max_inflight_requests: int = Field(
        0, ge=0, description="Model requests in flight at most (503 past it); 0: no limit."
    )
    cors_origins: list[str] = Field(
        default_factory=list, description="Origins allowed by CORS; empty: CORS off."
    )
    metrics_port: int | None = Field(
        None, ge=1, le=65535, description="Serve /metrics on this port only (not the API's)."
    )
    docs_public: bool = Field(
        False,
        description="With api_keys: serve /openapi.json (model names, example requests) "
        "without a key. Off: it needs a key like the model endpoints.",
    )
    metrics_public: bool = Field(
        False,
        description="With api_keys and no metrics_port: serve /metrics without a key. Off: "
        "it needs a key (Prometheus sends one with its scrape config's 'authorization').",
    )
    http_status_label: Literal["code", "class"] = Field(
        "code",
        description="The 'status' label of the HTTP metrics: the exact code ('503') or "
        "its class ('5xx', prometheus-fastapi-instrumentator's default).",
    )
    ssl_certfile: Path | None = Field(None, description="Serve HTTPS with this certificate.")
    ssl_keyfile: Path | None = Field(None, description="The certificate's private key.")
    ssl_ca_certs: Path | None = Field(
        None, description="CA bundle to verify client certificates with (mutual TLS)."
    )
    ssl_require_client_cert: bool = Field(
        False, description="Refuse clients without a certificate signed by ssl_ca_certs."
    )
    model_control_mode: Literal["none", "poll", "explicit"] = Field(
        "none",
        description="none: load everything at start, no changes; poll: rescan the repository "
        "every poll_interval_s; explicit: only the management API loads and unloads.",
    )
    poll_interval_s: float = Field(5.0, gt=0, description="Repository rescan period (poll mode).")
    load_models: list[str] = Field(
        default_factory=list, description="Models to load at start in explicit mode."
    )
    admin_token: SecretStr | None = Field(
        None, description="Bearer token of the management API; unset disables the API."
    )
    strict_readiness: bool = Field(
        False,
        description="Ready only when every model is ready (Triton's default); off: ready "
        "once start-up loading is over and at least one model serves, so one model that "
        "fails does not take the others out of a load balancer.",
    )
    exit_on_error: bool = Field(
        False,
        description="Fail start-up if any model fails to load (Triton's default); off: "
        "serve the others and report the failure (log, index, /v1/models, metrics).",
    )

    @model_validator(mode="after")
    def _check_tls(self) -> Self:
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("ssl_certfile and ssl_keyfile go together")
        if self.ssl_require_client_cert and (self.ssl_ca_certs is None or not self.ssl_certfile):
            raise ValueError(
                "ssl_require_client_cert needs ssl_certfile, ssl_keyfile and ssl_ca_certs"
            )
        return self


def _one_line(e: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'config'}: {err['msg']}" for err in e.errors()
    )


def load_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise BadInput(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise BadInput(f"{path}: expected a mapping at the top level")
    return data


def load_settings(config_file: Path | None = None, **cli: Any) -> ServerSettings:
    """Build settings: CLI flags over environment over the YAML file over defaults."""
    merged: dict[str, Any] = load_yaml(config_file) if config_file else {}
    try:
        from_env = ServerSettings()  # reads SERVEKIT_* and defaults only
        merged.update({k: getattr(from_env, k) for k in from_env.model_fields_set})
        merged.update({k: v for k, v in cli.items() if v is not None})
        return ServerSettings(**merged)
    except ValidationError as e:
        raise BadInput(f"invalid server settings: {_one_line(e)}") from None
