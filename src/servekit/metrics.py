"""Every Prometheus metric servekit defines, in one place.

One ``Metrics`` object per app, with its own registry, is handed to the layers that
know each fact: the batcher (queue time, batch size, outcomes), the pool (compute
time, busy instances), the registry (model state, load time). HTTP metrics come from
prometheus-fastapi-instrumentator in the server.

Average batch size is a PromQL division:
``rate(servekit_inferences_total[5m]) / rate(servekit_executions_total[5m])``.

Several server processes (``servekit serve --workers N``) run in prometheus_client's
multiprocess mode: each process writes its values to files in
``PROMETHEUS_MULTIPROC_DIR`` and ``/metrics`` adds them up (counters and histograms
summed over every process that ever ran; gauges as said by their ``multiprocess_mode``:
``livesum`` is the sum over the processes alive now). So ``servekit_instances``,
``servekit_queue_capacity`` and ``servekit_model_state`` count over processes: with two
workers a ready model has ``servekit_model_state{state="READY"} == 2``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

# Model states, as numbers for the state gauge (one series per model and version).
STATES = ("UNAVAILABLE", "LOADING", "READY", "UNLOADING")

# How a version's batching was decided (``servekit.runtime.batchsafety.Check``).
BATCHING_CHECKS = ("verified", "trusted", "unsafe", "unverifiable", "off", "fixed")

# Phases of a batch's compute (label "phase" of servekit_request_compute_seconds_total).
COMPUTE_PHASES = ("input", "infer", "output")

# Outcome reasons of failed requests (label "reason" of servekit_requests_total).
REASONS = ("rejected", "timeout", "cancelled", "invalid", "error")


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        mv = ("model", "version")
        self.requests = Counter(
            "servekit_requests",
            "Inference requests by outcome (success, or failure with a reason).",
            (*mv, "outcome", "reason"),
            registry=r,
        )
        self.inferences = Counter("servekit_inferences", "Samples (rows) computed.", mv, registry=r)
        self.executions = Counter(
            "servekit_executions", "Batches executed (interpreter runs).", mv, registry=r
        )
        self.request_seconds = Histogram(
            "servekit_request_duration_seconds",
            "Time from queueing a request to its result (queue, compute, slicing), "
            "for successful requests.",
            mv,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_seconds = Histogram(
            "servekit_queue_duration_seconds",
            "Time a request waited in the queue before its batch started.",
            mv,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.compute_seconds = Histogram(
            "servekit_compute_duration_seconds",
            "Time one batch spent in the interpreter (with padding and copies).",
            mv,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "servekit_batch_size",
            "Rows per executed batch.",
            mv,
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.pending = Gauge(
            "servekit_pending_requests",
            "Requests queued and not yet picked into a batch.",
            mv,
            registry=r,
            multiprocess_mode="livesum",
        )
        self.queue_capacity = Gauge(
            "servekit_queue_capacity",
            "Requests the queue holds (max_queue_size) before refusing more with 503.",
            mv,
            registry=r,
            multiprocess_mode="livesum",
        )
        self.computed_requests = Counter(
            "servekit_computed_requests",
            "Requests whose batch computed successfully (the count of each compute phase).",
            mv,
            registry=r,
        )
        self.request_compute_seconds = Counter(
            "servekit_request_compute_seconds",
            "Per request, the compute time of its batch by phase: 'input' (stacking the "
            "requests' rows), 'infer' (the runtime), 'output' (splitting the results). Each "
            "request counts its whole batch's time, as Triton's statistics do.",
            (*mv, "phase"),
            registry=r,
        )
        self.failed_request_seconds = Counter(
            "servekit_failed_request_seconds",
            "Time from queueing to the error, summed over failed requests.",
            mv,
            registry=r,
        )
        self.last_inference = Gauge(
            "servekit_last_inference_timestamp_seconds",
            "When a batch of this version last computed (Unix time).",
            mv,
            registry=r,
            multiprocess_mode="max",
        )
        self.busy_instances = Gauge(
            "servekit_busy_instances",
            "Interpreter instances running a batch now.",
            mv,
            registry=r,
            multiprocess_mode="livesum",
        )
        self.instances = Gauge(
            "servekit_instances",
            "Interpreter instances loaded.",
            mv,
            registry=r,
            multiprocess_mode="livesum",
        )
        self.batching = Gauge(
            "servekit_model_batching",
            "1 for how a version's batching was decided at load: 'verified' or 'trusted' "
            "(requests' rows share invokes); 'unsafe', 'unverifiable', 'off' or 'fixed' "
            "(one row per invoke). 0 for the others.",
            (*mv, "check"),
            registry=r,
            multiprocess_mode="livemax",
        )
        self.model_state = Gauge(
            "servekit_model_state",
            "1 for the state each model version is in (with several server processes: "
            "how many processes have it in that state).",
            (*mv, "state"),
            registry=r,
            multiprocess_mode="livesum",
        )
        self.grpc_requests = Counter(
            "servekit_grpc_requests",
            "gRPC calls by method (service/method) and status code.",
            ("method", "code"),
            registry=r,
        )
        self.grpc_seconds = Histogram(
            "servekit_grpc_request_duration_seconds",
            "Time to answer a gRPC call, by method.",
            ("method",),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.load_seconds = Histogram(
            "servekit_model_load_duration_seconds",
            "Time to load and warm up a model version.",
            mv,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.load_failures = Counter(
            "servekit_model_load_failures", "Model versions that failed to load.", mv, registry=r
        )
        self.load_failing = Gauge(
            "servekit_model_load_failing",
            "1 while the newest copy of a model version's files failed to load (set back "
            "to 0 once they change and load), whether or not an older copy still serves; "
            "version '' for a model that has nothing to load (invalid config.yaml, a file "
            "linking out of the repository, no version). The reason is in the repository "
            "index and /v1/models.",
            mv,
            registry=r,
            multiprocess_mode="livemax",
        )

    def for_model(self, model: str, version: str) -> ModelMetrics:
        return ModelMetrics(self, model, version)


@dataclass(slots=True)
class ModelMetrics:
    """The metrics of one model version, labels bound once."""

    m: Metrics
    model: str
    version: str
    # Children written on every request, looked up once (labels() costs ~1 us a call).
    _hot: dict[tuple[Any, ...], Any] = field(default_factory=dict, repr=False)

    def _child(self, metric: Any, *extra: str) -> Any:
        key = (metric, *extra)
        child = self._hot.get(key)
        if child is None:
            child = self._hot[key] = metric.labels(self.model, self.version, *extra)
        return child

    def declare(self) -> None:
        """Create every series of a model version that serves, at zero.

        A series born at its first increment hides that increment from ``rate()``, and
        dashboards would show no line for a reason that has not happened yet.
        """
        labels = (self.model, self.version)
        self.m.requests.labels(*labels, "success", "")
        for reason in REASONS:
            self.m.requests.labels(*labels, "failure", reason)
        for phase in COMPUTE_PHASES:
            self.m.request_compute_seconds.labels(*labels, phase)
        for metric in (
            self.m.computed_requests,
            self.m.failed_request_seconds,
            self.m.last_inference,
            self.m.inferences,
            self.m.executions,
            self.m.request_seconds,
            self.m.queue_seconds,
            self.m.compute_seconds,
            self.m.batch_size,
            self.m.pending,
            self.m.busy_instances,
        ):
            metric.labels(*labels)

    def success(self, seconds: float | None = None) -> None:
        """One request answered; ``seconds`` since it was queued, if known."""
        self._child(self.m.requests, "success", "").inc()
        if seconds is not None:
            self._child(self.m.request_seconds).observe(seconds)

    def failure(self, reason: str, seconds: float | None = None) -> None:
        """One request failed; ``seconds`` since it was queued, if it was."""
        self._child(self.m.requests, "failure", reason).inc()
        if seconds is not None:
            self._child(self.m.failed_request_seconds).inc(seconds)

    def computed(self, requests: int, input_s: float, infer_s: float, output_s: float) -> None:
        """A batch of ``requests`` computed, in these phases."""
        self._child(self.m.computed_requests).inc(requests)
        for phase, seconds in (("input", input_s), ("infer", infer_s), ("output", output_s)):
            self._child(self.m.request_compute_seconds, phase).inc(seconds * requests)
        self._child(self.m.last_inference).set(time.time())

    def queued(self, delta: int) -> None:
        self._child(self.m.pending).inc(delta)

    def batch(self, rows: int, queue_waits: list[float]) -> None:
        self._child(self.m.executions).inc()
        self._child(self.m.inferences).inc(rows)
        self._child(self.m.batch_size).observe(rows)
        hist = self._child(self.m.queue_seconds)
        for w in queue_waits:
            hist.observe(w)

    def compute(self, seconds: float) -> None:
        self._child(self.m.compute_seconds).observe(seconds)

    def busy(self, delta: int) -> None:
        self._child(self.m.busy_instances).inc(delta)

    def set_queue_capacity(self, n: int) -> None:
        self.m.queue_capacity.labels(self.model, self.version).set(n)

    def set_instances(self, n: int) -> None:
        self.m.instances.labels(self.model, self.version).set(n)

    def state(self, state: str) -> None:
        # Load failures and times exist at zero from the first state on, so that
        # increase() sees a version's first failure.
        self.m.load_failures.labels(self.model, self.version)
        self.m.load_seconds.labels(self.model, self.version)
        for s in STATES:
            self.m.model_state.labels(self.model, self.version, s).set(1 if s == state else 0)

    def batching(self, check: str) -> None:
        for c in BATCHING_CHECKS:
            self.m.batching.labels(self.model, self.version, c).set(1 if c == check else 0)

    def loaded(self, seconds: float) -> None:
        self.m.load_seconds.labels(self.model, self.version).observe(seconds)

    def load_failed(self) -> None:
        self.m.load_failures.labels(self.model, self.version).inc()

    def load_failing(self, failing: bool) -> None:
        self.m.load_failing.labels(self.model, self.version).set(1 if failing else 0)


def model_statistics(
    registry: CollectorRegistry, versions: Iterable[tuple[str, str]]
) -> list[dict[str, Any]]:
    """Triton's per-model statistics (the ``model_stats`` entries of its statistics
    extension) for each (model, version), read from the metrics above: counts, and
    durations in nanoseconds summed over requests."""
    values: dict[tuple[str, str, str, tuple[tuple[str, str], ...]], float] = {}
    for family in registry.collect():
        for sample in family.samples:
            labels = dict(sample.labels)
            model, version = labels.pop("model", None), labels.pop("version", None)
            if model is not None and version is not None:
                values[(sample.name, model, version, tuple(sorted(labels.items())))] = sample.value

    def stats_of(model: str, version: str) -> dict[str, Any]:
        def get(name: str, **labels: str) -> float:
            return values.get((name, model, version, tuple(sorted(labels.items()))), 0.0)

        def duration(count: float, seconds: float) -> dict[str, int]:
            return {"count": int(count), "ns": round(seconds * 1e9)}

        computed = get("servekit_computed_requests_total")
        phase = "servekit_request_compute_seconds_total"
        failures = sum(get("servekit_requests_total", outcome="failure", reason=r) for r in REASONS)
        return {
            "name": model,
            "version": version,
            "last_inference": int(get("servekit_last_inference_timestamp_seconds") * 1000),
            "inference_count": int(get("servekit_inferences_total")),
            "execution_count": int(get("servekit_executions_total")),
            "inference_stats": {
                "success": duration(
                    get("servekit_requests_total", outcome="success", reason=""),
                    get("servekit_request_duration_seconds_sum"),
                ),
                "fail": duration(failures, get("servekit_failed_request_seconds_total")),
                "queue": duration(
                    get("servekit_queue_duration_seconds_count"),
                    get("servekit_queue_duration_seconds_sum"),
                ),
                "compute_input": duration(computed, get(phase, phase="input")),
                "compute_infer": duration(computed, get(phase, phase="infer")),
                "compute_output": duration(computed, get(phase, phase="output")),
                "cache_hit": duration(0, 0.0),
                "cache_miss": duration(0, 0.0),
            },
            "batch_stats": [],
            "memory_usage": [],
        }

    return [stats_of(model, version) for model, version in versions]
