"""Model repository and registry: which models exist, which are loaded, and their state.

A repository is a folder of models in any of these layouts, side by side:

- ``<repo>/<model>/<version>/<model file>`` (``model.tflite``, ``model.onnx``: one per
  runtime in ``servekit.runtime.BACKENDS``), version folders being positive integers;
- ``<repo>/<model>/<model file>``, no version folder: version 1;
- ``<repo>/<name>.tflite`` (or ``.onnx``): model ``<name>``, version 1.

A model folder may hold a ``config.yaml``. A single model file is served as model
``<file stem>``, version 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import os
import re
import time
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from servekit.batching import Batcher
from servekit.config import ModelConfig
from servekit.errors import BadInput, Forbidden, NotFound, NotReady, ServekitError
from servekit.metrics import Metrics
from servekit.pool import InstancePool, Outputs
from servekit.runtime import BACKENDS, Backend, ModelRunner, backend_for_file, backend_named
from servekit.runtime.batchsafety import BatchingDecision, BatchingVerdict
from servekit.runtime.runner import SharedBuckets
from servekit.tensors import Array, TensorSpec, check_inputs

log = logging.getLogger(__name__)


def model_files() -> tuple[str, ...]:
    """The file names a version folder may hold: one per runtime in ``BACKENDS``."""
    return tuple(b.model_file for b in BACKENDS.values())


CONFIG_FILE = "config.yaml"
SAMPLE_FILE = "sample_request.json"
WARMUP_DIR = "warmup"
# Model names: what can safely be a folder name and a URL segment.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True, slots=True)
class ModelSource:
    name: str
    version: int
    path: Path  # the model file (with several in a version folder: the first of model_files())
    config_path: Path | None
    # An example request body (TF Serving row format) shown in /docs, if the model has one.
    sample_request_path: Path | None = None
    # Where warm-up samples may be (``warmup/<input>.npy``), first found wins.
    warmup_dirs: tuple[Path, ...] = ()


def check_name(name: str) -> str:
    if not NAME_RE.match(name) or ".." in name:
        raise BadInput(
            f"invalid model name {name[:64]!r}: use letters, digits, '_', '-', '.' "
            f"(at most 128, not starting with a dot)"
        )
    return name


def scan_model_dir(model_dir: Path) -> list[ModelSource]:
    """The versions found under one model folder, oldest first: its version folders, or
    else a model file directly in the folder, as version 1."""
    name = model_dir.name
    config = model_dir / CONFIG_FILE
    config_path = config if config.exists() else None
    sample = model_dir / SAMPLE_FILE
    sample_path = sample if sample.is_file() else None
    out = [
        ModelSource(
            name,
            int(v.name),
            model_file,
            config_path,
            sample_path,
            (v / WARMUP_DIR, model_dir / WARMUP_DIR),
        )
        for v in model_dir.iterdir()
        if v.is_dir()
        and v.name.isdigit()
        and int(v.name) > 0
        and (model_file := _model_file(v)) is not None
    ]
    if not out and (direct := _model_file(model_dir)) is not None:
        return [ModelSource(name, 1, direct, config_path, sample_path, (model_dir / WARMUP_DIR,))]
    return sorted(out, key=lambda s: s.version)


def _model_file(version_dir: Path) -> Path | None:
    return next((f for name in model_files() if (f := version_dir / name).is_file()), None)


def _model_suffixes() -> tuple[str, ...]:
    return tuple(Path(name).suffix for name in model_files())


def file_source(path: Path) -> ModelSource:
    """A model file served on its own, or lying directly in a repository folder: model
    ``<file stem>``, version 1, with ``<stem>.sample_request.json`` beside it."""
    sample = path.with_name(f"{path.stem}.{SAMPLE_FILE}")
    return ModelSource(check_name(path.stem), 1, path, None, sample if sample.is_file() else None)


def repository_entries(root: Path) -> dict[str, Path]:
    """Every model a repository folder offers, by name: its folder, or its file for a
    model file lying directly in the repository (a folder of the same name wins)."""
    entries: dict[str, Path] = {}
    files: list[Path] = []
    for p in sorted(root.iterdir()):
        if p.is_dir():
            if NAME_RE.match(p.name):
                entries[p.name] = p
        elif p.suffix in _model_suffixes() and NAME_RE.match(p.stem) and ".." not in p.stem:
            files.append(p)
    order = _model_suffixes()
    for p in sorted(files, key=lambda f: order.index(f.suffix)):  # .tflite before .onnx
        entries.setdefault(p.stem, p)
    return entries


def scan(path: Path) -> list[ModelSource]:
    """Every model version a path offers: one file, or a repository folder."""
    if path.is_file():
        try:
            backend_for_file(path)
        except BadInput as e:
            raise BadInput(f"{e}, or a model repository folder") from None
        source = file_source(path)
        sample = source.sample_request_path or (
            path.parent / SAMPLE_FILE if (path.parent / SAMPLE_FILE).is_file() else None
        )
        # Served on its own, a file may be a repository's <model>/<version>/ file.
        warmup = (path.parent / WARMUP_DIR, path.parent.parent / WARMUP_DIR)
        return [ModelSource(source.name, 1, path, None, sample, warmup)]
    if not path.is_dir():
        raise BadInput(f"model path {path} does not exist")
    sources: list[ModelSource] = []
    for entry in repository_entries(path).values():
        sources.extend(scan_model_dir(entry) if entry.is_dir() else [file_source(entry)])
    if not sources:
        raise BadInput(
            f"no models in {path}: expected <repo>/<model>/<version>/<one of "
            f"{list(model_files())}>, <repo>/<model>/<model file>, <repo>/<name>"
            f"{' or <repo>/<name>'.join(_model_suffixes())}, or a model file"
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
    batching: BatchingDecision | None = None  # known once loaded
    signature_key: str | None = None
    _pool: InstancePool | None = None
    _batcher: Batcher | None = None
    _closing: asyncio.Task[None] | None = None
    # Public reasons name files relative to this folder (the repository), not absolutely.
    root: Path | None = None
    fingerprint: Fingerprint = ()

    def __post_init__(self) -> None:
        self.fingerprint = fingerprint(self.source)

    @property
    def name(self) -> str:
        return self.source.name

    @property
    def version(self) -> int:
        return self.source.version

    def backend_and_file(self) -> tuple[Backend, Path]:
        """The runtime that serves this version, and its file: the config's ``backend``
        if set (its file in the version folder), else the one the found file names."""
        if self.config.backend is None:
            return backend_for_file(self.source.path), self.source.path
        backend = backend_named(self.config.backend)
        if self.source.path.name not in model_files():  # <repo>/<name>.onnx: this file only
            if backend is not backend_for_file(self.source.path):
                raise BadInput(
                    f"backend '{self.config.backend}' cannot serve {self.source.path.name}"
                )
            return backend, self.source.path
        return backend, self.source.path.with_name(backend.model_file)

    @property
    def backend(self) -> Backend:
        return self.backend_and_file()[0]

    async def load(self) -> None:
        """Load every instance, warm every bucket, then start batching."""
        mm = self.metrics.for_model(self.name, str(self.version))
        self._set_state("LOADING")
        start = time.perf_counter()
        try:
            backend, path = self.backend_and_file()
            content = await asyncio.to_thread(backend.read, path)
            samples = await asyncio.to_thread(read_warmup_samples, self.source)
            buckets = self.config.buckets()

            verdict = BatchingVerdict(self.config.batching)
            # The first instance picks the buckets (leaving out those that do not pay,
            # unless the config lists them); the others warm up the same ones.
            warm = SharedBuckets(
                [1] if self.config.batching == "off" else buckets,
                trim=self.config.batch_buckets is None,
            )

            def make_instance(threads: int) -> ModelRunner:
                config = self.config.model_copy(update={"threads_per_instance": threads})
                m = ModelRunner(backend.load(content, config))
                warm.prepare(m, samples)
                # The first instance verifies; the others, and rebuilds, reuse its answer.
                if not verdict.decide(m, samples).batched:
                    m.unbatch()
                return m

            pool = InstancePool(
                make_instance,
                self.config.instances,
                mm,
                self.name,
                self.config.execution,
                max_rows=self.config.max_batch_size,
                threads=self.config.threads_per_instance,
            )
            first = await pool.start()
            # What 'auto' chose, as numbers (logs, metadata, Triton's instance_group).
            self.config = self.config.model_copy(
                update={"instances": pool.size, "threads_per_instance": pool.threads}
            )
        except Exception as e:
            mm.load_failed()
            self._set_state("UNAVAILABLE", f"failed to load: {e}")
            log.error("model %s v%s failed to load: %s", self.name, self.version, e)
            raise
        self.signature_key = first.signature.signature_key
        self.batchable = first.batchable
        self.buckets = first.buckets
        assert verdict.decision is not None, "every instance decides before it is ready"
        self.batching = verdict.decision
        mm.batching(self.batching.check)
        # Every model takes any number of rows: batchable ones are padded to a bucket,
        # fixed-batch ones run one chunk per invoke. So the batch dimension is -1.
        self.inputs = tuple(_batch_dim(s) for s in first.signature.inputs)
        self.outputs = tuple(_batch_dim(s) for s in first.signature.outputs)
        if self.batching.check in ("unsafe", "unverifiable"):
            log.warning("model %s v%s %s", self.name, self.version, self.batching.reason)
        elif self.batching.check == "trusted":
            log.info("model %s v%s: %s", self.name, self.version, self.batching.reason)
        elif not self.batchable and self.batching.check != "off":
            log.warning(
                "model %s v%s cannot be resized to other batch sizes: serving it unbatched "
                "(%d row(s) per invoke, %d instance(s))",
                self.name,
                self.version,
                first.chunk,
                self.config.instances,
            )
        elif self.batching.check == "verified":
            log.info(
                "model %s v%s %s in %.0f ms",
                self.name,
                self.version,
                self.batching.reason,
                self.batching.seconds * 1000,
            )
        self._pool = pool
        pool.on_all_dead = self._instances_lost
        self._batcher = Batcher(
            pool,
            mm,
            max_batch_size=first.buckets[-1] if self.batchable else first.chunk,
            max_queue_delay_s=self.config.max_queue_delay_ms / 1000,
            max_queue_size=self.config.max_queue_size,
            timeout_s=self.config.timeout_ms / 1000,
        )
        self._batcher.start()
        mm.loaded(time.perf_counter() - start)
        # Served, but not as configured: the index says why.
        self._set_state("READY", "" if self.batching.batched else self.batching.reason)
        log.info(
            "model %s v%s ready: execution %s, buckets %s, runtime %s; %s",
            self.name,
            self.version,
            self.execution,
            self.buckets or "none",
            self.backend.runtime_name(),
            pool.describe(),
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

    def _instances_lost(self, reason: str) -> None:
        """Every instance failed beyond repair: stop taking requests, fail what is queued."""
        self._set_state("UNAVAILABLE", reason)
        if self._batcher is not None:
            self._closing = asyncio.get_running_loop().create_task(self._batcher.close())

    def _set_state(self, state: str, reason: str = "") -> None:
        self.state, self.reason = state, relative_message(reason, self.root)
        self.metrics.for_model(self.name, str(self.version)).state(state)

    def refresh_metrics(self) -> None:
        """Re-assert state and instance gauges (after a same-version swap reset them)."""
        mm = self.metrics.for_model(self.name, str(self.version))
        mm.state(self.state)
        mm.set_instances(self._pool.size if self._pool else 0)

    @property
    def execution(self) -> str:
        """Where batches run: 'inline' (the event loop) or 'thread'; '' until loaded."""
        if self._pool is None:
            return ""
        return "inline" if self._pool.inline else "thread"

    @property
    def ready(self) -> bool:
        return self.state == "READY"

    def submit(
        self,
        inputs: Mapping[str, Array],
        *,
        timeout_s: float | None = None,
        priority: int = 0,
        counted: bool = True,
    ) -> Coroutine[Any, Any, Outputs]:
        """Validate one request and queue it now; await the result for its outputs.
        ``counted`` off: a part of a request, counted once by ``count_outcome``."""
        if self._batcher is None or not self.ready:
            raise NotReady(f"model '{self.name}' version {self.version} is {self.state}")
        try:
            checked, rows = check_inputs(
                inputs,
                self.inputs,
                batched=True,
                max_batch_size=self.config.max_batch_size,
                allow_nonfinite=self.config.allow_nonfinite,
            )
        except BadInput:
            self.count_invalid()
            raise
        return self._batcher.submit(
            checked, rows, timeout_s=timeout_s, priority=priority, counted=counted
        )

    def count_outcome(self, start: float, error: BaseException | None = None) -> None:
        """Count the outcome of a request submitted in parts (``counted`` off)."""
        if self._batcher is not None:
            self._batcher.count_outcome(start, error)

    def count_invalid(self) -> None:
        """A request for this model that was refused as invalid (400)."""
        self.metrics.for_model(self.name, str(self.version)).failure("invalid")

    async def infer(
        self,
        inputs: Mapping[str, Array],
        *,
        timeout_s: float | None = None,
        priority: int = 0,
    ) -> Outputs:
        """Validate one request, queue it, and return its outputs."""
        return await self.submit(inputs, timeout_s=timeout_s, priority=priority)

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
            "platform": self.backend.platform,
            "runtime": self.backend.runtime_name(),
            "signature": self.signature_key,
            "inputs": [s.to_dict() for s in self.inputs],
            "outputs": [s.to_dict() for s in self.outputs],
            "batching": {
                "dynamic": self.batchable,
                "batch_safety": (
                    {
                        "check": self.batching.check,
                        "batched": self.batching.batched,
                        "reason": self.batching.reason,
                    }
                    if self.batching is not None
                    else None
                ),
                "max_batch_size": self.config.max_batch_size,
                "max_request_rows": self.config.max_request_rows,
                "buckets": self.buckets,
                "max_queue_delay_ms": self.config.max_queue_delay_ms,
                "instances": self.config.instances,
                "threads_per_instance": self.config.threads_per_instance,
                "sizing": self._pool.describe() if self._pool else "",
                "execution": self.execution,
            },
        }


def read_warmup_samples(source: ModelSource) -> dict[str, Array] | None:
    """Sample inputs for warm-up: ``warmup/<input>.npy`` in the version or model folder."""
    for folder in source.warmup_dirs:
        if folder.is_dir():
            samples = {}
            for f in sorted(folder.glob("*.npy")):
                try:
                    samples[f.stem] = np.load(f, allow_pickle=False)
                except (OSError, ValueError) as e:
                    raise BadInput(f"cannot read warm-up sample {f.name}: {e}") from None
            return samples or None
    return None


def _batch_dim(spec: TensorSpec) -> TensorSpec:
    if not spec.shape:
        return spec
    return TensorSpec(spec.name, spec.dtype, (-1, *spec.shape[1:]), spec.quantization, spec.index)


class ModelUnavailable(NotReady):
    """No version of the model can serve and none is on its way (it failed to load, or
    has nothing to load): a retry at once cannot help. ``retry_after_s``: when one may
    (the next repository poll), or None when only an operator can change it."""

    def __init__(self, message: str, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ModelRegistry:
    """Name → version → ServedModel, kept in line with the repository.

    Requests without a version get the newest ready one. A new version is loaded and
    warmed before it takes traffic; a version leaving is drained before its
    interpreters are freed. Load, unload and poll run one at a time (``_lock``).

    A failure is logged once, and tried again only once the files change: a model that
    has nothing to load keeps its reason in ``_errors``, a changed file that failed while
    the copy before it serves on keeps its reason in ``_failed``; both show in the index,
    in ``model_list()`` and in ``servekit_model_load_failing``.
    """

    def __init__(
        self,
        metrics: Metrics,
        default_config: ModelConfig | None = None,
        *,
        drain_timeout_s: float = 30.0,
        strict_readiness: bool = False,
        exit_on_error: bool = False,
    ) -> None:
        self.metrics = metrics
        self.default_config = default_config or ModelConfig()
        self.drain_timeout_s = drain_timeout_s
        self.strict_readiness = strict_readiness
        self.exit_on_error = exit_on_error
        self.root: Path | None = None  # the repository folder; None when serving one file
        self.poll_interval_s: float | None = None  # set while polling
        self._public_root: Path | None = None  # public messages name files relative to it
        self._started = False
        self._models: dict[str, dict[int, ServedModel]] = {}
        self._due: set[str] = set()  # models that must be ready for the server to be ready
        self._pinned_unloaded: set[str] = set()  # unloaded through the API: poll leaves them
        self._errors: dict[str, str] = {}  # model → why it has nothing to load
        # (model, version) → the files that failed to load while an older copy serves
        self._failed: dict[tuple[str, int], tuple[Fingerprint, str]] = {}
        self._lock = asyncio.Lock()

    def config_for(
        self, source: ModelSource, override: dict[str, Any] | None = None
    ) -> ModelConfig:
        """The server's default model config, then the model's config.yaml, then ``override``."""
        base = self.default_config.model_dump(exclude_unset=True)
        if source.config_path is None and not override:
            return self.default_config
        if source.config_path is not None:
            base = ModelConfig.from_yaml(source.config_path, base=base).model_dump(
                exclude_unset=True
            )
        base.update(override or {})
        try:
            return ModelConfig.model_validate(base)
        except ValidationError as e:
            raise BadInput(
                f"invalid config for model '{source.name}': {e.errors()[0]['msg']}"
            ) from None

    # -- start -----------------------------------------------------------------------

    async def start(self, path: Path, load_models: Sequence[str] = (), mode: str = "none") -> None:
        """Load what is due at start: every model (none/poll) or ``load_models``
        (explicit; ``*`` for every model). A model that fails is logged and shown in the
        index; with ``exit_on_error`` start-up fails instead, naming every failure."""
        if path.is_file():  # noqa: ASYNC240 - one stat at start-up
            (source,) = scan(path)
            self._public_root = path.parent
            self._due.add(source.name)
            await self._load_versions([source], self.config_for(source))
            self._started = True
            return
        self.root = self._public_root = path
        # In explicit mode, '*' loads every model of the repository, as Triton's
        # --load-model=* does.
        every = mode != "explicit" or "*" in load_models
        names = self.repository_names() if every else list(load_models)
        if every and not names:
            scan(path)  # raises the "no models" error
        failures = []
        for name in names:
            self._due.add(check_name(name))
            try:
                await self.sync_model(name)
            except ServekitError as e:  # logged once by sync_model; the others go on
                failures.append(str(e))
        if failures and self.exit_on_error:
            await self.close(0)
            raise BadInput(
                f"{len(failures)} model(s) failed to load, and exit_on_error is set: "
                + "; ".join(failures)
            )
        self._started = True

    # -- repository ------------------------------------------------------------------

    def repository_names(self) -> list[str]:
        if self.root is None:
            return sorted(self._models)
        return sorted(repository_entries(self.root))

    def model_entry(self, name: str) -> Path:
        """The folder of a model (or its file, lying in the repository), refusing names
        and symlinks that lead out of the repository."""
        if self.root is None:
            raise Forbidden("serving a single model file: there is no repository to load from")
        check_name(name)
        root = self.root.resolve()
        entry = root / name
        if not entry.is_dir():
            found = repository_entries(root).get(name)
            if found is not None:
                entry = found
        resolved = entry.resolve()
        if not resolved.is_relative_to(root) or resolved == root:
            raise BadInput(f"model '{name}' resolves outside the model repository")
        if not resolved.exists():
            raise NotFound(
                f"no model '{name}' in the repository; models: {self.repository_names()}"
            )
        return resolved

    def _sources(self, name: str) -> list[ModelSource]:
        entry = self.model_entry(name)
        root = self.root.resolve() if self.root else entry
        sources = scan_model_dir(entry) if entry.is_dir() else [file_source(entry)]
        for src in sources:
            if not src.path.resolve().is_relative_to(root):
                raise BadInput(f"model '{name}' version {src.version} links outside the repository")
        return sources

    def _public(self, message: str) -> str:
        return relative_message(message, self._public_root)

    # -- load / unload ---------------------------------------------------------------

    async def sync_model(
        self, name: str, override: dict[str, Any] | None = None, *, poll: bool = False
    ) -> None:
        """Bring one model's loaded versions in line with its folder and version policy.

        New or changed versions are loaded and warmed first; only then are versions no
        longer wanted drained and unloaded, so traffic always has a ready version.
        Versions whose files are gone from the repository are unloaded in any case (as
        TF Serving does), even the last one: ``poll`` (the repository poll) unloads a
        model whose folder has no version left.
        """
        async with self._lock:
            self._pinned_unloaded.discard(name)
            try:
                sources = self._sources(name)
                if not sources:
                    gone = bool(poll and self._models.get(name))
                    if gone:
                        await self._unload_versions(name)
                    raise NotFound(
                        f"model '{name}' has no versions: expected {name}/<version>/<one of "
                        f"{list(model_files())}> or {name}/<one of {list(model_files())}>"
                        + (
                            "; the versions removed from the repository were unloaded"
                            if gone
                            else ""
                        )
                    )
                config = self.config_for(sources[0], override)
            except ServekitError as e:
                e.args = (self._public(str(e)),)
                if name in self.repository_names():
                    self._model_error(name, str(e))
                elif not poll:
                    log.error("model %s: %s", name, e)
                raise
            self._model_error(name, None)
            await self._load_versions(
                select_versions(sources, config),
                config,
                override is not None,
                on_disk={s.version for s in sources},
                retry=not poll,  # asked for (start, the API): failed files are tried again
            )

    def _model_error(self, name: str, reason: str | None) -> None:
        """Record (or clear, None) why a model has nothing to load; logged when it changes."""
        if reason is None:
            if self._errors.pop(name, None) is not None:
                self.metrics.for_model(name, "").load_failing(False)
            return
        if self._errors.get(name) != reason:
            log.error("model %s cannot be loaded: %s", name, reason)
            self._errors[name] = reason
            self.metrics.for_model(name, "").load_failing(True)

    async def _load_versions(
        self,
        wanted: list[ModelSource],
        config: ModelConfig,
        force: bool = False,
        on_disk: set[int] | None = None,
        retry: bool = False,
    ) -> None:
        name = wanted[0].name if wanted else ""
        current = self._models.setdefault(name, {})
        failures = []
        for source in wanted:
            key = (name, source.version)
            mm = self.metrics.for_model(name, str(source.version))
            old = current.get(source.version)
            files = fingerprint(source)
            unchanged = old is not None and not force and old.fingerprint == files
            if unchanged and old is not None and (old.ready or not retry):
                continue  # unchanged: loaded, or failed and not asked to try again
            failed = self._failed.get(key)
            if failed is not None and not force and not retry and failed[0] == files:
                continue  # this copy failed already (logged, in the index): wait for a change
            served = ServedModel(source, config, self.metrics, root=self._public_root)
            if old is None or not old.ready:
                current[source.version] = served  # shows as LOADING in the index
            try:
                await served.load()  # logs its failure
            except Exception as e:
                failures.append(f"version {source.version}: {e}")
                mm.load_failing(True)
                if old is not None and old.ready:
                    # The version already serving stays in place; the index says why the
                    # new copy is not. Its state series were overwritten by the candidate's.
                    self._failed[key] = (served.fingerprint, served.reason)
                    old.refresh_metrics()
                    continue
                current[source.version] = served  # UNAVAILABLE, with the reason
                continue
            self._failed.pop(key, None)
            mm.load_failing(False)
            current[source.version] = served  # swap in: the old one is no longer reachable
            if old is not None and old is not served and old.state != "UNAVAILABLE":
                await old.unload(self.drain_timeout_s)
                served.refresh_metrics()  # same labels: the old one's unload reset them
        keep = {s.version for s in wanted}
        gone = {v for v in current if v not in keep and on_disk is not None and v not in on_disk}
        # Versions leave only once every wanted version is ready (a failed new version
        # leaves the one serving now in place), or when their files are gone.
        if all(current[v].ready for v in keep if v in current):
            gone |= {v for v in current if v not in keep}
        for version in sorted(gone):
            await self._remove_version(name, version)
        if failures:
            raise BadInput(self._public(f"model '{name}' failed to load: {'; '.join(failures)}"))

    async def _remove_version(self, name: str, version: int) -> None:
        leaving = self._models.get(name, {}).pop(version, None)
        if self._failed.pop((name, version), None) is not None or (
            leaving is not None and not leaving.ready
        ):
            self.metrics.for_model(name, str(version)).load_failing(False)
        if leaving is not None and leaving.state != "UNAVAILABLE":
            await leaving.unload(self.drain_timeout_s)

    async def _unload_versions(self, name: str) -> None:
        for version in sorted(self._models.get(name, {})):
            await self._remove_version(name, version)
        self._models.pop(name, None)

    async def unload_model(self, name: str) -> None:
        """Drain and unload every version of a model."""
        async with self._lock:
            if name not in self._models:
                raise NotFound(f"model '{name}' is not loaded; loaded: {self.names()}")
            self._pinned_unloaded.add(name)
            self._due.discard(name)
            await self._unload_versions(name)

    async def load_model(self, name: str, override: dict[str, Any] | None = None) -> None:
        await self.sync_model(name, override)
        self._due.add(name)

    async def poll_once(self) -> None:
        """One rescan: new and changed versions in, removed models and versions out."""
        on_disk = set(self.repository_names())
        for name in sorted(on_disk - self._pinned_unloaded):
            self._due.add(name)  # the server serves what the repository holds
            with contextlib.suppress(ServekitError):  # logged once; the index says why
                await self.sync_model(name, poll=True)
        for name in sorted(set(self._models) - on_disk):
            with contextlib.suppress(NotFound):
                await self.unload_model(name)
            self._pinned_unloaded.discard(name)
        for name in (set(self._errors) | self._due) - on_disk:
            self._model_error(name, None)
            self._due.discard(name)

    async def poll_forever(self, interval_s: float) -> None:
        self.poll_interval_s = interval_s
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.poll_once()
            except Exception:  # keep polling whatever one scan hit
                log.exception("repository poll failed")

    # -- queries ---------------------------------------------------------------------

    def failed_retry_after_s(self) -> int | None:
        """When a failed model may serve again: after the next poll (if polling)."""
        return math.ceil(self.poll_interval_s) if self.poll_interval_s else None

    def get(self, name: str, version: int | str | None = None) -> ServedModel:
        versions = self._models.get(name)
        if not versions:
            if name in self._errors:
                raise ModelUnavailable(
                    f"model '{name}' cannot be served: {self._errors[name]}",
                    self.failed_retry_after_s(),
                )
            raise NotFound(f"unknown model '{name[:128]}'; served models: {self.names()}")
        if version is None or version == "":
            ready = [m for v, m in sorted(versions.items()) if m.ready]
            if not ready:
                newest = versions[max(versions)]
                message = (
                    f"model '{name}' has no ready version ({newest.state}"
                    f"{': ' + newest.reason if newest.reason else ''})"
                )
                if newest.state == "UNAVAILABLE":
                    raise ModelUnavailable(message, self.failed_retry_after_s())
                raise NotReady(message)
            return ready[-1]
        try:
            v = int(version)
        except ValueError:  # versions are folder numbers: anything else names none
            raise NotFound(
                f"model '{name}' has no version {str(version)[:32]!r}; versions: {sorted(versions)}"
            ) from None
        if v not in versions:
            raise NotFound(f"model '{name}' has no version {v}; versions: {sorted(versions)}")
        return versions[v]

    def names(self) -> list[str]:
        return sorted(n for n, vs in self._models.items() if vs)

    def all(self) -> list[ServedModel]:
        return [m for _, vs in sorted(self._models.items()) for _, m in sorted(vs.items())]

    def _row(self, m: ServedModel) -> dict[str, str]:
        reason = m.reason
        failed = self._failed.get((m.name, m.version))
        if failed is not None and m.ready:
            reason = f"serving the copy loaded before; the changed files {failed[1]}"
        elif m.name in self._errors and m.ready:
            reason = f"serving the copy loaded before: {self._errors[m.name]}"
        return {"name": m.name, "version": str(m.version), "state": m.state, "reason": reason}

    def model_list(self) -> list[dict[str, str]]:
        """Every loaded model version with its state and reason, and every model of the
        repository that has nothing to load, with why (version '')."""
        rows = {(m.name, m.version): self._row(m) for m in self.all()}
        for name, reason in self._errors.items():
            if not self._models.get(name):
                rows[(name, 0)] = _error_row(name, reason)
        return [rows[k] for k in sorted(rows)]

    def index(self) -> list[dict[str, str]]:
        """Every model version in the repository or loaded, with its state and reason."""
        rows: dict[tuple[str, int], dict[str, str]] = {}
        for name in self.repository_names():
            try:
                for src in self._sources(name):
                    rows[(name, src.version)] = {
                        "name": name,
                        "version": str(src.version),
                        "state": "UNAVAILABLE",
                        "reason": self._errors.get(name, "not loaded"),
                    }
            except ServekitError as e:
                rows[(name, 0)] = _error_row(name, self._public(str(e)))
            if name in self._errors and not any(k[0] == name for k in rows):
                rows[(name, 0)] = _error_row(name, self._errors[name])
        for m in self.all():
            rows[(m.name, m.version)] = self._row(m)
        return [rows[k] for k in sorted(rows)]

    def ready(self) -> bool:
        """Strict readiness: every model due has a ready version. Otherwise: start-up
        loading is over and some model serves (one that failed does not hold back the
        others; the index, /v1/models and the metrics show it)."""
        if not self._started:
            return False
        if self.strict_readiness:
            return bool(self._due) and all(
                any(m.ready for m in self._models.get(name, {}).values()) for name in self._due
            )
        return any(m.ready for m in self.all())

    async def close(self, drain_timeout_s: float) -> None:
        await asyncio.gather(*(m.unload(drain_timeout_s) for m in self.all() if m.ready))


def _error_row(name: str, reason: str) -> dict[str, str]:
    return {"name": name, "version": "", "state": "UNAVAILABLE", "reason": reason}


# What tells one copy of a model's files from another: (mtime ns, size, inode) of each.
Fingerprint = tuple[tuple[int, int, int], ...]


def fingerprint(source: ModelSource) -> Fingerprint:
    """The model file's and its config's stat: a load is tried again only once it changes."""
    out = []
    for path in (source.path, source.config_path):
        try:
            st = path.stat() if path is not None else None
        except OSError:
            st = None
        out.append((st.st_mtime_ns, st.st_size, st.st_ino) if st is not None else (-1, -1, -1))
    return tuple(out)


def relative_message(message: str, root: Path | None) -> str:
    """``message`` with paths inside ``root`` written relative to it: public answers (the
    index, /v1/models, 503s) do not show where the server keeps its files."""
    if root is None or not message:
        return message
    absolute = {str(root.absolute()), str(root.resolve())}
    for prefix in sorted(absolute | {str(root)}, key=len, reverse=True):
        if prefix in ("", ".", os.sep):
            continue
        # A whole path only; the bare folder (".") only when absolute: a relative root
        # such as "models" is also a word.
        end = rf"(?:{re.escape(os.sep)}|(?![\w.-]))" if prefix in absolute else re.escape(os.sep)
        message = re.sub(
            rf"(?<![\w.-]){re.escape(prefix)}{end}",
            lambda m: "" if m.group(0).endswith(os.sep) else ".",
            message,
        )
    return message
