"""deploy/monitoring checked by the real tools: promtool for the Prometheus config and
rules (with the alert unit tests), TypeScript with Grafana's published schema for the
dashboard."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import ARTIFACTS
from monitoring_support import (
    ALERT_RULES,
    ALERT_TESTS,
    DASHBOARD,
    MONITORING,
    PROMETHEUS_YML,
    RECORDING_RULES,
    TRITON_RULES,
    TRITON_TESTS,
    dashboard,
    dashboard_queries,
    ensure_prometheus,
    rules,
)

# Pinned so that a cached install and a fresh one check against the same schema.
NPM_PACKAGES = {"@grafana/schema": "13.2.3", "typescript": "7.0.2"}
SCHEMA_DIR = ARTIFACTS / "grafana-schema"


@pytest.fixture(scope="module")
def promtool() -> str:
    return ensure_prometheus()[1]


def run(cmd: list[str], cwd: Path | None = None, timeout: float = 120) -> str:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    out = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(cmd)} failed ({done.returncode}):\n{out}"
    return out


def test_promtool_check_config(promtool: str) -> None:
    out = run([promtool, "check", "config", str(PROMETHEUS_YML)])
    assert "SUCCESS" in out
    assert "2 rule files found" in out


def test_promtool_check_rules(promtool: str) -> None:
    files = [RECORDING_RULES, ALERT_RULES, TRITON_RULES]
    out = run([promtool, "check", "rules", *map(str, files)])
    assert out.count("SUCCESS") == 3


def test_promtool_alert_unit_tests(promtool: str) -> None:
    out = run([promtool, "test", "rules", ALERT_TESTS.name], cwd=MONITORING)
    assert "SUCCESS" in out


def test_promtool_triton_compat_unit_tests(promtool: str) -> None:
    out = run([promtool, "test", "rules", TRITON_TESTS.name], cwd=MONITORING)
    assert "SUCCESS" in out


# Triton's per-model metrics (docs/user_guide/metrics.md of triton-inference-server/server):
# counters, durations in microseconds summed over requests, the pending count a gauge.
TRITON_METRICS = {
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_request_duration_us",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_input_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us",
    "nv_inference_pending_request_count",
}


def test_triton_compat_rules_record_every_triton_model_metric() -> None:
    recorded = {r["record"] for r in rules(TRITON_RULES)}
    assert recorded == TRITON_METRICS
    tested = {
        t["expr"].split("{")[0]
        for case in yaml.safe_load(TRITON_TESTS.read_text())["tests"]
        for t in case.get("promql_expr_test", [])
    }
    assert tested >= TRITON_METRICS, TRITON_METRICS - tested
    # Triton's failure reasons, one rule each (lowercase servekit reasons never leak).
    reasons = {
        r["labels"]["reason"] for r in rules(TRITON_RULES) if r["record"].endswith("_failure")
    }
    assert reasons == {"REJECTED", "CANCELED", "BACKEND", "OTHER"}


def test_alert_unit_tests_hold_a_load_failure_born_at_one() -> None:
    """The usual incident: a bad new version whose failure counter is first scraped at 1
    (no 0 before it). Its test must exist in exactly that shape."""
    shapes = [
        series["values"]
        for case in yaml.safe_load(ALERT_TESTS.read_text())["tests"]
        for series in case["input_series"]
        if series["series"].startswith("servekit_model_load_failures_total")
    ]
    assert any(re.fullmatch(r"(_ )+1x\d+", v) for v in shapes), shapes


def test_every_alert_has_a_unit_test() -> None:
    tested = {
        t["alertname"]
        for case in yaml.safe_load(ALERT_TESTS.read_text())["tests"]
        for t in case.get("alert_rule_test", [])
        if t.get("exp_alerts")
    }
    alerts = {r["alert"] for r in rules(ALERT_RULES)}
    assert alerts >= {
        "ServekitDown",
        "ServekitHighErrorRatio",
        "ServekitQueueSaturated",
        "ServekitHighLatencyP99",
        "ServekitModelNotReady",
        "ServekitModelLoadFailed",
        "ServekitModelLoadFailing",
        "ServekitAbsent",
    }
    assert alerts == tested, f"alerts never seen firing in a unit test: {alerts - tested}"


def _schema_tools() -> Path:
    """@grafana/schema and typescript from npm, cached in test-artifacts/grafana-schema."""
    tsc = SCHEMA_DIR / "node_modules" / ".bin" / "tsc"
    package_json = {
        "name": "servekit-dashboard-check",
        "private": True,
        "dependencies": NPM_PACKAGES,
    }
    wanted = json.dumps(package_json, indent=2, sort_keys=True)
    manifest = SCHEMA_DIR / "package.json"
    if tsc.exists() and manifest.exists() and manifest.read_text() == wanted:
        return tsc
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm is needed to fetch @grafana/schema (apt-get install npm)")
    SCHEMA_DIR.mkdir(parents=True, exist_ok=True)
    manifest.write_text(wanted)
    run([npm, "install", "--no-audit", "--no-fund", "--loglevel=error"], SCHEMA_DIR, 600)
    assert tsc.exists()
    return tsc


# The dashboard JSON typed as Grafana's `Dashboard`. JSON holds enum members by value
# ("absolute", not ThresholdsMode.Absolute): `Json<T>` is T with each enum read as the
# union of its values; every other field, required or not, is checked as declared, and
# an object literal may not carry fields the schema does not know.
CHECK_TS = """\
import type { Dashboard } from '@grafana/schema';

type Json<T> = T extends string
  ? `${T}`
  : T extends number | boolean | null | undefined
    ? T
    : T extends Array<infer U>
      ? Array<Json<U>>
      : T extends object
        ? { [K in keyof T]: Json<T[K]> }
        : T;

export const dashboard: Json<Dashboard> = %s;
"""

TSCONFIG = {
    "compilerOptions": {
        "strict": True,
        "noEmit": True,
        "target": "ES2022",
        "module": "ESNext",
        "moduleResolution": "bundler",
        "skipLibCheck": True,
    },
    "files": ["check.ts"],
}


def tsc_check(tsc: Path, dashboard_json: str, workdir: Path) -> subprocess.CompletedProcess[str]:
    (workdir / "check.ts").write_text(CHECK_TS % dashboard_json)
    (workdir / "tsconfig.json").write_text(json.dumps(TSCONFIG))
    # node_modules is found by walking up from check.ts: link the cached one in.
    link = workdir / "node_modules"
    if not link.exists():
        link.symlink_to(SCHEMA_DIR / "node_modules", target_is_directory=True)
    return subprocess.run(
        [str(tsc), "-p", str(workdir / "tsconfig.json")],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_dashboard_is_a_valid_grafana_dashboard(tmp_path: Path) -> None:
    tsc = _schema_tools()
    done = tsc_check(tsc, DASHBOARD.read_text(), tmp_path)
    assert done.returncode == 0, f"dashboard does not type-check:\n{done.stdout}{done.stderr}"

    # The check is real: a misspelt field and a wrong enum value are both refused.
    broken = dashboard()
    broken["panels"][1]["gridPos"]["hh"] = 4
    broken["panels"][2]["fieldConfig"]["defaults"]["thresholds"]["mode"] = "absolut"
    bad = tsc_check(tsc, json.dumps(broken), tmp_path)
    assert bad.returncode != 0
    assert "'\"hh\"' does not exist" in bad.stdout, bad.stdout
    assert '"absolut"' in bad.stdout, bad.stdout


def test_dashboard_shape() -> None:
    d = dashboard()
    names = {v["name"] for v in d["templating"]["list"]}
    assert {"datasource", "job", "model", "version"} <= names
    for v in d["templating"]["list"]:
        if v["type"] == "query":
            assert v["query"]["query"].startswith("label_values(")
    titles = [p["title"] for p in d["panels"]]
    assert len(titles) == len(set(titles)), "panel titles must be unique"
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    exprs = " ".join(q.expr for q in dashboard_queries())
    for needed in (
        "servekit_requests_total",
        "servekit_inferences_total",
        "servekit_executions_total",
        "servekit_batch_size_bucket",
        "servekit_pending_requests",
        "servekit_busy_instances",
        "servekit_model_state",
        "quantile_rate1m",
        "http_requests_total",
    ):
        assert needed in exprs, needed
    # Per-model panels filter on the model and version variables.
    for q in dashboard_queries():
        if "servekit_" in q.expr:
            assert 'model=~"$model"' in q.expr and 'version=~"$version"' in q.expr, q
