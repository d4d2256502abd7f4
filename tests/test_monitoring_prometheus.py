"""A real Prometheus scraping a real servekit every second, with the repo's own
recording and alert rules and the Triton-name rules: every dashboard query, recording
rule and alert expression is run through Prometheus' HTTP API against the metrics of
real traffic (successes, queue-full rejections, deadlines passed, invalid inputs,
unknown URLs). The alert rules are loaded as a copy whose `for` is 1 s, so that the
alerts this traffic deserves are seen firing, not only pending."""

from __future__ import annotations

import asyncio
import collections
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from conftest import ServerProcess, digits_rows
from monitoring_support import (
    ALERT_RULES,
    LABEL_VALUES,
    RECORDING_RULES,
    TRITON_RULES,
    PrometheusServer,
    dashboard_queries,
    ensure_prometheus,
    has_number,
    make_model_repo,
    rules,
    substitute,
    values,
    variable_queries,
    with_short_for,
)

pytestmark = pytest.mark.timeout(120)

MODELS = {
    "digits": "max_batch_size: 32\n",
    # Both run in a thread, so that their instance is busy while the loop reads a flood
    # (inline, each batch of a model this small is done before the next request is
    # read: the queue may never fill, and few requests wait past 1 ms).
    # One request queued at most: a flood gets 503s.
    "tiny_queue": "max_batch_size: 32\nmax_queue_size: 1\ninstances: 1\nexecution: thread\n",
    # A 1 ms deadline: under a flood many requests pass it while queued (504).
    "short_deadline": "max_batch_size: 32\ninstances: 1\ntimeout_ms: 1\nexecution: thread\n",
}
RATE_INTERVAL = "30s"


@dataclass
class Stack:
    server: ServerProcess
    prometheus: PrometheusServer
    # (model, HTTP status) -> answers the test saw
    seen: collections.Counter[tuple[str, int]] = field(default_factory=collections.Counter)
    random_tokens: list[str] = field(default_factory=list)
    started: float = 0.0


async def drive_traffic(stack: Stack, rounds: int = 3, pause_s: float = 2.5) -> None:
    """Every kind of answer, in rounds a few scrapes apart: an HTTP series is born at
    its first request, and rate() needs it scraped before it grows."""
    rows = digits_rows(32).tolist()
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(base_url=stack.server.url, timeout=30, limits=limits) as c:

        async def predict(model: str, body: dict[str, Any]) -> None:
            r = await c.post(f"/v1/models/{model}:predict", json=body)
            stack.seen[model, r.status_code] += 1

        for n in range(rounds):
            if n:
                await asyncio.sleep(pause_s)
            for model in MODELS:  # successes, one at a time
                for i in range(3):
                    await predict(model, {"instances": rows[i : i + 1 + i]})
            for _ in range(2):  # wrong shape: 400, counted as invalid by the model
                await predict("digits", {"instances": [[0.5] * 63]})
            rejected, timed_out = stack.seen["tiny_queue", 503], stack.seen["short_deadline", 504]
            for _ in range(10):  # floods until both rejections and deadlines happened
                await asyncio.gather(
                    *(predict("tiny_queue", {"instances": rows}) for _ in range(16)),
                    *(predict("short_deadline", {"instances": rows}) for _ in range(16)),
                )
                if (
                    stack.seen["tiny_queue", 503] > rejected
                    and stack.seen["short_deadline", 504] > timed_out
                ):
                    break
            # URLs no route knows, and ones the router would redirect (trailing slash):
            for _ in range(4):
                token = uuid.uuid4().hex
                stack.random_tokens.append(token)
                for url in (f"/{token}", f"/v1/models/{token}/", f"/v2/{token}/infer"):
                    r = await c.get(url, follow_redirects=False)
                    assert r.status_code in (307, 404, 405), (url, r.status_code)
    assert stack.seen["tiny_queue", 503] > 0, stack.seen
    assert stack.seen["short_deadline", 504] > 0, stack.seen
    assert stack.seen["digits", 400] == 2 * rounds, stack.seen


def wait_for(
    check: Callable[[], object], what: str, timeout: float = 20.0, interval: float = 0.25
) -> None:
    """Poll until `check` returns something truthy without failing an assertion."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            last = check()
            if last:
                return
        except AssertionError as e:
            last = e
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {last}")
        time.sleep(interval)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prometheus_bin, _ = ensure_prometheus()
    started = time.monotonic()
    repo = make_model_repo(tmp_path_factory.mktemp("repo"), MODELS)
    server = ServerProcess(str(repo), name="monitoring").wait_ready()
    prometheus = None
    try:
        workdir = tmp_path_factory.mktemp("prometheus")
        alerts = with_short_for(ALERT_RULES, workdir / "alert_rules_short_for.yml")
        prometheus = PrometheusServer(
            prometheus_bin,
            workdir,
            [f"127.0.0.1:{server.port}"],
            rule_files=[RECORDING_RULES, alerts, TRITON_RULES],
        ).wait_ready()
        s = Stack(server, prometheus, started=started)
        # Prometheus hands new targets to its scrapers up to 5 s after it starts.
        wait_for(lambda: prometheus.query('up{job="servekit"} == 1'), "the first scrape")
        asyncio.run(drive_traffic(s))
        yield s
    finally:
        if prometheus is not None:
            prometheus.stop()
        assert server.stop() == 0, server.log()


def sum_of(p: PrometheusServer, expr: str) -> float:
    return sum(values(p.query(expr)))


def test_prometheus_counts_what_clients_saw(stack: Stack) -> None:
    """The scraped counters equal the answers the test got, reason by reason."""
    p, seen = stack.prometheus, stack.seen

    def counts_match() -> bool:
        for model in MODELS:
            sel = f'job="servekit", model="{model}", version="1"'
            got = {
                "success": sum_of(p, f'servekit_requests_total{{{sel}, outcome="success"}}'),
                "rejected": sum_of(p, f'servekit_requests_total{{{sel}, reason="rejected"}}'),
                "timeout": sum_of(p, f'servekit_requests_total{{{sel}, reason="timeout"}}'),
                "invalid": sum_of(p, f'servekit_requests_total{{{sel}, reason="invalid"}}'),
            }
            want = {
                "success": seen[model, 200],
                "rejected": seen[model, 503],
                "timeout": seen[model, 504],
                "invalid": seen[model, 400],
            }
            assert got == want, (model, got, want)
        return True

    wait_for(counts_match, "servekit counters to reach the answers seen")
    target = p.api("targets")["activeTargets"]
    assert [t["health"] for t in target] == ["up"], target


def test_http_metrics_have_bounded_handlers(stack: Stack) -> None:
    """404s and redirects of random URLs are all handler="none": no series per URL."""
    text = httpx.get(f"{stack.server.url}/metrics", timeout=10).text
    for token in stack.random_tokens:
        assert token not in text
    handlers = set(re.findall(r'handler="([^"]*)"', text))
    assert "none" in handlers
    openapi = httpx.get(f"{stack.server.url}/openapi.json", timeout=10).json()
    templates = set(openapi["paths"]) | {
        "/openapi.json",
        "/docs",
        "/docs/oauth2-redirect",
        "/redoc",
    }
    assert handlers - {"none"} <= templates, handlers - templates

    p = stack.prometheus
    wait_for(
        lambda: sum_of(p, 'http_requests_total{job="servekit", handler="none"}') >= 36,
        "the 404s and redirects of random URLs under handler none",
    )
    scraped = set(p.label_values('http_requests_total{job="servekit"}', "handler"))
    assert scraped - {"none"} <= templates, scraped


def test_every_recording_rule_returns_data(stack: Stack) -> None:
    p = stack.prometheus
    recorded = sorted({r["record"] for r in rules(RECORDING_RULES)})
    assert len(recorded) >= 8

    def all_recorded() -> bool:
        for name in recorded:
            assert has_number(p.query(f'{name}{{job="servekit"}}')), name
        return True

    wait_for(all_recorded, "every recording rule to have a value")
    # And each rule's own expression runs and has data, quantile by quantile.
    for r in rules(RECORDING_RULES):
        assert p.query(r["expr"]), r["record"]
    # Rules evaluated by Prometheus itself without errors.
    for group in p.api("rules")["groups"]:
        for r in group["rules"]:
            assert r["health"] == "ok", r


def test_every_dashboard_query_returns_data(stack: Stack) -> None:
    p = stack.prometheus
    queries = dashboard_queries()
    assert len(queries) >= 20
    # The template variables' own queries: label_values(selector, label).
    concrete = {"job": "servekit", "model": "digits", "version": "1"}
    for name, query in variable_queries().items():
        m = LABEL_VALUES.match(substitute(query, {**concrete, "model": ".*", "job": ".*"}))
        assert m, query
        got = p.label_values(m["selector"], m["label"])
        assert concrete[name] in got, (name, got)
    for model in MODELS:
        variables = {
            "job": "servekit",
            "model": model,
            "version": "1",
            "__rate_interval": RATE_INTERVAL,
            "datasource": "prometheus",
        }

        def all_answer(variables: dict[str, str] = variables) -> bool:
            empty = []
            for q in queries:
                result = p.query(substitute(q.expr, variables))
                if not has_number(result):
                    empty.append(f"{q.panel} [{q.ref_id}]: {result}")
            assert not empty, "\n".join(empty)
            return True

        wait_for(all_answer, f"every dashboard query for {model}")


def test_every_alert_expression_runs(stack: Stack) -> None:
    p = stack.prometheus
    alerts = rules(ALERT_RULES)
    assert len(alerts) >= 5
    for r in alerts:
        p.query(r["expr"])  # parses and runs; empty where the condition is false

    # The floods are real trouble: tiny_queue refused requests, and a model where more
    # than 5% of requests failed (rejected or timed out) has its error-ratio alert
    # pending (the `for` runs). Which model passes 5% depends on how fast the server is
    # against the client, so the expectation comes from what the clients saw (with a
    # margin: Prometheus' rate() extrapolates).
    def failure_share(model: str) -> float:
        answers = sum(n for (m, _), n in stack.seen.items() if m == model)
        return (stack.seen[model, 503] + stack.seen[model, 504]) / max(answers, 1)

    failing = {m for m in MODELS if failure_share(m) > 0.07}
    assert failing, stack.seen
    expected = {("ServekitRequestsRejected", "tiny_queue")} | {
        ("ServekitHighErrorRatio", m) for m in failing
    }

    def alerts_in(state: str) -> set[tuple[str, str]]:
        return {
            (a["labels"]["alertname"], a["labels"].get("model", ""))
            for a in p.api("alerts")["alerts"]
            if a["state"] == state
        }

    # Firing: the copy's `for` (1 s) has run, the expressions are the shipped ones.
    wait_for(lambda: expected <= alerts_in("firing"), f"the alerts {sorted(expected)} firing")
    every = alerts_in("firing") | alerts_in("pending")
    # Every model loads and every target is up: none of these may fire or be pending.
    healthy = {
        "ServekitDown",
        "ServekitAbsent",
        "ServekitModelNotReady",
        "ServekitModelLoadFailed",
        "ServekitModelLoadFailing",
    }
    wrong = {a for a in every if a[0] in healthy}
    assert not wrong, wrong


def test_triton_names_are_recorded_from_real_traffic(stack: Stack) -> None:
    """Every nv_* series of triton_compat_rules.yml exists for every model, and the
    counts equal servekit's own (and so the answers the clients saw)."""
    p, seen = stack.prometheus, stack.seen
    names = sorted({r["record"] for r in rules(TRITON_RULES)})

    def recorded() -> bool:
        for model in MODELS:
            sel = f'job="servekit", model="{model}", version="1"'
            for name in names:
                assert has_number(p.query(f"{name}{{{sel}}}")), (model, name)
            success = sum_of(p, f"nv_inference_request_success{{{sel}}}")
            assert success == seen[model, 200], (model, success)
            rejected = sum_of(p, f'nv_inference_request_failure{{{sel}, reason="REJECTED"}}')
            assert rejected == seen[model, 503], (model, rejected)
            other = sum_of(p, f'nv_inference_request_failure{{{sel}, reason="OTHER"}}')
            assert other == seen[model, 400] + seen[model, 504], (model, other)
            rows = sum_of(p, f"nv_inference_count{{{sel}}}")
            assert rows == sum_of(p, f"servekit_inferences_total{{{sel}}}") > 0
            # Per request, compute (infer) time is at least the batch's: each request
            # counts its whole batch's time.
            per_request = sum_of(
                p,
                f"nv_inference_compute_infer_duration_us{{{sel}}}"
                f" / on (job, instance, model, version) servekit_computed_requests_total{{{sel}}}",
            )
            assert per_request > 0, (model, per_request)
        return True

    wait_for(recorded, "the Triton-name series")
    for group in p.api("rules")["groups"]:
        for r in group["rules"]:
            assert r["health"] == "ok", r


def test_whole_module_is_quick(stack: Stack) -> None:
    elapsed = time.monotonic() - stack.started
    assert elapsed < 60, f"the Prometheus end-to-end tests took {elapsed:.1f}s"
