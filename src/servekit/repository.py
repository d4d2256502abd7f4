"""Model repository and registry: which models exist, which are loaded, and their state.

A repository is a folder ``<repo>/<model>/<version>/model.tflite`` with an optional
``<repo>/<model>/config.yaml``; version folders are positive integers. A single
``.tflite`` file is served as model ``<file stem>``, version 1.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from servekit.batching import Batcher
from servekit.config import ModelConfig
from servekit.errors import BadInput, NotFound, NotReady
from servekit.metrics import Metrics
from servekit.pool import InstancePool, Outputs
from servekit.runtime import TFLiteModel, read_model_bytes, runtime_name
from servekit.tensors import Array, TensorSpec, check_inputs

log = logging.getLogger(__name__)

MODEL_FILE = "model.tflite"
CONFIG_FILE = "config.yaml"
SAMPLE_FILE = "sample_request.json"
# Model names: what can safely be a folder name and a URL segment.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True, slots=True)
class ModelSource:
    name: str
    version: int
    path: Path  # the .tflite file
    config_path: Path | None
    # An example request body (TF Serving row format) shown in /docs, if the model has one.
    sample_request_path: Path | None = None


def check_name(name: str) -> str:
    if not NAME_RE.match(name) or ".." in name:
        raise BadInput(
            f"invalid model name {name[:64]!r}: use letters, digits, '_', '-', '.' "
            f"(at most 128, not starting with a dot)"
        )
    return name


def scan_model_dir(model_dir: Path) -> list[ModelSource]:
    """The versions found under one model folder, oldest first."""
    name = model_dir.name
    config = model_dir / CONFIG_FILE
    sample = model_dir / SAMPLE_FILE
    out = [
        ModelSource(
            name,
            int(v.name),
            v / MODEL_FILE,
            config if config.exists() else None,
            sample if sample.is_file() else None,
        )
        for v in model_dir.iterdir()
        if v.is_dir() and v.name.isdigit() and int(v.name) > 0 and (v / MODEL_FILE).is_file()
    ]
    return sorted(out, key=lambda s: s.version)


def scan(path: Path) -> list[ModelSource]:
    """Every model version a path offers: one file, or a repository folder."""
    if path.is_file():
        if path.suffix != ".tflite":
            raise BadInput(f"{path} is not a .tflite file or a model repository folder")
        sample = next(
            (
                p
                for p in (path.with_name(f"{path.stem}.{SAMPLE_FILE}"), path.parent / SAMPLE_FILE)
                if p.is_file()
            ),
            None,
        )
        return [ModelSource(check_name(path.stem), 1, path, None, sample)]
    if not path.is_dir():
        raise BadInput(f"model path {path} does not exist")
    sources: list[ModelSource] = []
    for model_dir in sorted(p for p in path.iterdir() if p.is_dir()):
        if NAME_RE.match(model_dir.name):
            sources.extend(scan_model_dir(model_dir))
    if not sources:
        raise BadInput(
            f"no models in {path}: expected <repo>/<model>/<version>/{MODEL_FILE} or a .tflite file"
        )
    return sources


def select_versions(sources: list[ModelSource], config: ModelConfig) -> list[ModelSource]:
    """Apply the model's version policy to the versions found (oldest first)."""
    if config.version_policy == "all":
        return sources
    if config.version_policy == "specific":
        return [s for s in sources if s.version in config.specific_versions]
    return sources[-config.latest_versions :]


@dataclass
class ServedModel:
    """One loaded model version: its specs, its pool of instances and its batcher."""

    source: ModelSource
    config: ModelConfig
    metrics: Metrics
    state: str = "UNAVAILABLE"
    reason: str = ""
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    batchable: bool = False
    buckets: list[int] = field(default_factory=list)
    signature_key: str | None = None
    _pool: InstancePool | None = None
    _batcher: Batcher | None = None

    @property
    def name(self) -> str:
        return self.source.name

    @property
    def version(self) -> int:
        return self.source.version

    async def load(self) -> None:
        """Load every instance, warm every bucket, then start batching."""
        mm = self.metrics.for_model(self.name, str(self.version))
        self._set_state("LOADING")
        start = time.perf_counter()
        try:
            content = await asyncio.to_thread(read_model_bytes, self.source.path)
            buckets = self.config.buckets()

            def make_instance() -> TFLiteModel:
                m = TFLiteModel(content, num_threads=self.config.threads_per_instance)
                m.prepare(buckets)
                return m

            pool = InstancePool(make_instance, self.config.instances, mm, f"{self.name}")
            first = await pool.start()
        except Exception as e:
            mm.load_failed()
            self._set_state("UNAVAILABLE", f"failed to load: {e}")
            log.error("model %s v%s failed to load: %s", self.name, self.version, e)
            raise
        self.signature_key = first.signature.signature_key
        self.batchable = first.batchable
        self.buckets = first.buckets
        # Every model takes any number of rows: batchable ones are padded to a bucket,
        # fixed-batch ones run one chunk per invoke. So the batch dimension is -1.
        self.inputs = tuple(_batch_dim(s) for s in first.signature.inputs)
        self.outputs = tuple(_batch_dim(s) for s in first.signature.outputs)
        if not self.batchable:
            log.warning(
                "model %s v%s cannot be resized to other batch sizes: serving it unbatched "
                "(%d row(s) per invoke, %d instance(s))",
                self.name,
                self.version,
                first.chunk,
                self.config.instances,
            )
        self._pool = pool
        self._batcher = Batcher(
            pool,
            mm,
            max_batch_size=self.config.max_batch_size if self.batchable else first.chunk,
            max_queue_delay_s=self.config.max_queue_delay_ms / 1000,
            max_queue_size=self.config.max_queue_size,
            timeout_s=self.config.timeout_ms / 1000,
        )
        self._batcher.start()
        mm.loaded(time.perf_counter() - start)
        self._set_state("READY")
        log.info(
            "model %s v%s ready: %d instance(s), buckets %s, runtime %s",
            self.name,
            self.version,
            self.config.instances,
            self.buckets or "none",
            runtime_name(),
        )

    async def unload(self, drain_timeout_s: float) -> None:
        """Finish what is queued (up to the timeout), then free the interpreters."""
        self._set_state("UNLOADING")
        if self._batcher is not None:
            await self._batcher.drain(drain_timeout_s)
            await self._batcher.close()
        if self._pool is not None:
            await self._pool.close()
        self._batcher = self._pool = None
        self._set_state("UNAVAILABLE", "unloaded")

    def _set_state(self, state: str, reason: str = "") -> None:
        self.state, self.reason = state, reason
        self.metrics.for_model(self.name, str(self.version)).state(state)

    @property
    def ready(self) -> bool:
        return self.state == "READY"

    async def infer(
        self,
        inputs: Mapping[str, Array],
        *,
        timeout_s: float | None = None,
        priority: int = 0,
    ) -> Outputs:
        """Validate one request, queue it, and return its outputs."""
        if self._batcher is None or not self.ready:
            raise NotReady(f"model '{self.name}' version {self.version} is {self.state}")
        try:
            checked, rows = check_inputs(
                inputs, self.inputs, batched=True, max_batch_size=self.config.max_batch_size
            )
        except BadInput:
            self.metrics.for_model(self.name, str(self.version)).failure("invalid")
            raise
        return await self._batcher.infer(checked, rows, timeout_s=timeout_s, priority=priority)

    @functools.cached_property
    def sample_request(self) -> dict[str, Any] | None:
        path = self.source.sample_request_path
        if path is None:
            return None
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            log.warning("ignoring sample request %s: %s", path, e)
            return None
        return data if isinstance(data, dict) else None

    def metadata(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": str(self.version),
            "platform": "tensorflow_lite",
            "runtime": runtime_name(),
            "signature": self.signature_key,
            "inputs": [s.to_dict() for s in self.inputs],
            "outputs": [s.to_dict() for s in self.outputs],
            "batching": {
                "dynamic": self.batchable,
                "max_batch_size": self.config.max_batch_size,
                "buckets": self.buckets,
                "max_queue_delay_ms": self.config.max_queue_delay_ms,
                "instances": self.config.instances,
            },
        }


def _batch_dim(spec: TensorSpec) -> TensorSpec:
    if not spec.shape:
        return spec
    return TensorSpec(spec.name, spec.dtype, (-1, *spec.shape[1:]), spec.quantization, spec.index)


class ModelRegistry:
    """Name → version → ServedModel. Requests without a version get the newest ready one."""

    def __init__(self, metrics: Metrics, default_config: ModelConfig | None = None) -> None:
        self.metrics = metrics
        self.default_config = default_config or ModelConfig()
        self._models: dict[str, dict[int, ServedModel]] = {}

    def config_for(self, source: ModelSource) -> ModelConfig:
        """The server's default model config, overridden by the model's config.yaml."""
        if source.config_path is None:
            return self.default_config
        base = self.default_config.model_dump(exclude_unset=True)
        return ModelConfig.from_yaml(source.config_path, base=base)

    async def load_path(self, path: Path) -> None:
        """Load what a file or repository offers, by each model's version policy."""
        by_model: dict[str, list[ModelSource]] = {}
        for s in scan(path):
            by_model.setdefault(s.name, []).append(s)
        for versions in by_model.values():
            config = self.config_for(versions[0])
            for source in select_versions(versions, config):
                served = ServedModel(source, config, self.metrics)
                self._models.setdefault(source.name, {})[source.version] = served
                try:
                    await served.load()
                except Exception:
                    continue

    def get(self, name: str, version: int | str | None = None) -> ServedModel:
        versions = self._models.get(name)
        if not versions:
            raise NotFound(f"unknown model '{name[:128]}'; served models: {self.names()}")
        if version is None or version == "":
            ready = [m for v, m in sorted(versions.items()) if m.ready]
            if not ready:
                newest = versions[max(versions)]
                raise NotReady(
                    f"model '{name}' has no ready version ({newest.state}"
                    f"{': ' + newest.reason if newest.reason else ''})"
                )
            return ready[-1]
        try:
            v = int(version)
        except ValueError:
            raise BadInput(
                f"version must be a positive integer, got {str(version)[:32]!r}"
            ) from None
        if v not in versions:
            raise NotFound(f"model '{name}' has no version {v}; versions: {sorted(versions)}")
        return versions[v]

    def names(self) -> list[str]:
        return sorted(self._models)

    def all(self) -> list[ServedModel]:
        return [m for _, vs in sorted(self._models.items()) for _, m in sorted(vs.items())]

    def ready(self) -> bool:
        """True when every model due to load has at least one ready version."""
        return bool(self._models) and all(
            any(m.ready for m in vs.values()) for vs in self._models.values()
        )

    async def close(self, drain_timeout_s: float) -> None:
        await asyncio.gather(*(m.unload(drain_timeout_s) for m in self.all() if m.ready))
